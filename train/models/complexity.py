"""Parameter and FLOP counts of a Keras model, computed analytically from layer shapes.

FLOPs here are 2 x multiply-accumulates (MACs) of one image (batch 1) in the
layers that dominate inference: Conv2D (grouped too), DepthwiseConv2D,
SeparableConv2D and Dense. BatchNorm (folded into the convolution by TensorRT),
activations, pooling, additions and bias adds are not counted. The count
descends into nested models (keras.applications bases). This is what
the model card calls ``flops`` and how it says so; it needs no profiler and
gives the same figure on every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FLOPS_METHOD = (
    "analytic: 2 x multiply-accumulates per image of Conv2D, DepthwiseConv2D, SeparableConv2D and Dense "
    "layers from their shapes; BatchNorm, activations, pooling and bias adds not counted"
)


@dataclass(frozen=True)
class Complexity:
    params: int
    trainable_params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "flops": self.flops,
            "gflops": round(self.flops / 1e9, 4),
            "flops_method": FLOPS_METHOD,
        }


def _spatial(shape: Any) -> int:
    """Product of the dimensions between batch and channels."""
    dims = [int(d) for d in tuple(shape)[1:-1]]
    return math.prod(dims) if dims else 1


def layer_macs(layer: Any) -> int:
    """MACs of one layer for one image; 0 for layers that are not counted."""
    import keras

    name = type(layer).__name__
    if isinstance(layer, keras.Model):
        return sum(layer_macs(inner) for inner in layer.layers)
    if name not in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
        return 0
    out_shape = layer.output.shape
    in_channels = int(layer.input.shape[-1])
    positions = _spatial(out_shape)
    if name == "Dense":
        return positions * in_channels * int(layer.units)
    kh, kw = (int(k) for k in layer.kernel_size)
    if name == "Conv2D":
        groups = int(getattr(layer, "groups", 1) or 1)
        return positions * int(layer.filters) * kh * kw * in_channels // groups
    multiplier = int(layer.depth_multiplier)
    depthwise = positions * in_channels * multiplier * kh * kw
    if name == "DepthwiseConv2D":
        return depthwise
    return depthwise + positions * in_channels * multiplier * int(layer.filters)


def model_complexity(model: Any) -> Complexity:
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    return Complexity(
        params=int(model.count_params()),
        trainable_params=trainable,
        macs=sum(layer_macs(layer) for layer in model.layers),
    )
