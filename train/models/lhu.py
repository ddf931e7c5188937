"""``lhu``: seed 000 (Liverpool Hope University), exactly as the paper describes it.

Input (256x256 RGB) -> /255 -> BatchNormalization on the input -> Conv2D 16, 32,
16 (3x3, stride 1, ReLU, Keras' default 'valid' padding) each followed by
MaxPooling2D (2x2) -> Flatten -> Dense 256 ReLU -> Dense 1 sigmoid. Adagrad,
binary cross-entropy, 20 epochs, batch 32. At 256x256x3 that is 3,696,637
parameters (12 of them the input BatchNorm's); the single Dense 256 on the
flattened 30x30x16 map holds 3,686,656 of them.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.contract import PreprocessContract
from train.models.blocks import Head, classifier_head, image_input


def build_lhu(contract: PreprocessContract, head: Head, **_: Any) -> Any:
    import keras

    inputs, x = image_input(contract)
    x = keras.layers.BatchNormalization(name="input_batchnorm")(x)
    for i, filters in enumerate((16, 32, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=1, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, activation="relu", name="dense")(x)
    return keras.Model(inputs, classifier_head(x, head), name="lhu")
