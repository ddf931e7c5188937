"""``dsconv``: our depthwise-separable CNN for the Jetson (what seed 001 planned and could not train).

MobileNet-style: a strided 3x3 stem, then blocks of DepthwiseConv2D 3x3 ->
BatchNorm -> ReLU -> Conv2D 1x1 -> BatchNorm -> ReLU, with a residual Add where
a block keeps its size, GlobalAveragePooling, Dropout and the head. Seed 001's
attempt split the *input* channels and failed to train; here the separable
blocks sit after a normal stem convolution, BatchNorm keeps them trainable, and
the global pooling replaces the huge Flatten -> Dense of the seed models (most
of their parameters).

Default contract 160x160 grayscale (see the model card): 260 k parameters
and 0.064 GFLOPs per image (0.125 at 224x224), about a quarter of ``lhu`` at
its 256x256 (0.24 GFLOPs, 3.7 M parameters) and 1/480 of VGG16 at 224x224
(30.7 GFLOPs); ``--width-multiplier`` scales the channels. Every layer maps to a
plain TensorRT kernel (no Lambda, no custom op), and ReLU (not ReLU6 or
swish) keeps INT8 calibration simple.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.contract import PreprocessContract
from train.models.blocks import Head, classifier_head, image_input

STEM_FILTERS = 24
# Keras' default 0.99 needs hundreds of steps before the moving statistics used at inference match
# the batch statistics; 0.9 (PyTorch's default) settles within an epoch of a small data set.
BN_MOMENTUM = 0.9
# (output channels, stride) per separable block
BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 1),
    (48, 2),
    (48, 1),
    (96, 2),
    (96, 1),
    (160, 2),
    (160, 1),
    (160, 1),
    (320, 2),
    (320, 1),
)


def _separable_block(x: Any, filters: int, stride: int, name: str) -> Any:
    import keras

    shortcut = x
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = keras.layers.ReLU(name=f"{name}_dw_relu")(y)
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(y)
    if stride == 1 and shortcut.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def build_dsconv(
    contract: PreprocessContract, head: Head, dropout: float = 0.2, width: float = 1.0, **_: Any
) -> Any:
    import keras

    def scaled(channels: int) -> int:
        return max(8, round(channels * width / 8.0) * 8)

    inputs, x = image_input(contract)
    x = keras.layers.Conv2D(
        scaled(STEM_FILTERS), 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _separable_block(x, scaled(filters), stride, f"block{i}")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, classifier_head(x, head), name="dsconv")
