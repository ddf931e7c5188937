"""The two ends every model shares: the uint8-pixel input with in-graph scaling, and the head.

Scaling lives inside the model (a ``Rescaling`` layer right after the input),
so the ``.h5``, every ONNX file and every engine carry it and no runtime can
forget it (keras-io practice; see :mod:`edge_runtime.contract`). The input is
float32 pixel values 0..255; the exporter puts the uint8 -> float cast in
front. Only built-in Keras layers are used, so the ``.h5`` loads in Keras
safe mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edge_runtime.contract import PreprocessContract

INPUT_NAME = "image"
HEAD_NAME = "head"


@dataclass(frozen=True)
class Head:
    """The output layer: one sigmoid unit for two classes, or a softmax over ``n_classes``."""

    kind: Literal["sigmoid", "softmax"]
    n_classes: int

    @property
    def units(self) -> int:
        return 1 if self.kind == "sigmoid" else self.n_classes


def image_input(contract: PreprocessContract) -> tuple[Any, Any]:
    """(Input tensor, scaled tensor): float32 pixels 0..255 -> ``x * scale + offset``."""
    import keras

    inputs = keras.Input(shape=contract.input_shape, name=INPUT_NAME, dtype="float32")
    scaled = keras.layers.Rescaling(contract.scale, contract.offset, name="rescale")(inputs)
    return inputs, scaled


def classifier_head(x: Any, head: Head) -> Any:
    """The last Dense layer; float32 even under mixed precision so probabilities are not fp16-rounded."""
    import keras

    return keras.layers.Dense(head.units, activation=head.kind, dtype="float32", name=HEAD_NAME)(x)
