"""``sutd_cnn1``, ``sutd_cnn2``, ``sutd_cnn3``: seed 004's (SUTD) three PyTorch CNNs, in Keras.

The paper's text gives the layer order, sizes, activations and dropout; its
figures with the filter counts are not in the text, so the counts below are
ours (small, as their parameter-light intent suggests) and stated in the model
card. 'same' padding keeps the sizes the text quotes (160 -> 80 after one pool).

* CNN1 (160x160 grayscale): Conv-BN-sigmoid, Conv-BN-MaxPool-sigmoid,
  Conv-BN-sigmoid, Flatten, Linear.
* CNN2 (160x160 grayscale): deeper, kernels 5x5 then 3x3, two max pools,
  dropout 0.2, sigmoid activations, Linear.
* CNN3 (150x150 grayscale, normalised to mean 0.5 / std 0.5, i.e. the contract
  scales x * 2/255 - 1): Conv-ReLU-MaxPool three times, Flatten, fully
  connected layers, Linear.

Adagrad 1e-3 (CNN3: 1e-4), batch 128, early stopping, weighted loss
N / (2 * N_class), horizontal flips and 15 degree rotations (CNN3: flips only).

Each table also has rows with the other activation (CNN1 and CNN2: ReLU, CNN3:
sigmoid); ``activation`` swaps every hidden activation, and its default is the
one of the table's chosen row. The output layer (``classifier_head``) is not
affected.
"""

from __future__ import annotations

from typing import Any, Literal

from edge_runtime.contract import PreprocessContract
from train.models.blocks import Head, classifier_head, image_input

Activation = Literal["relu", "sigmoid"]


def _conv_bn(x: Any, filters: int, kernel: int, name: str) -> Any:
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    # PyTorch's BatchNorm momentum 0.1 is Keras' momentum 0.9 (the weight of the old running value).
    return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)


def _activation(x: Any, activation: Activation, name: str) -> Any:
    import keras

    return keras.layers.Activation(activation, name=f"{name}_{activation}")(x)


def build_sutd_cnn1(
    contract: PreprocessContract, head: Head, activation: Activation = "sigmoid", **_: Any
) -> Any:
    import keras

    inputs, x = image_input(contract)
    x = _activation(_conv_bn(x, 16, 3, "b1"), activation, "b1")
    x = keras.layers.MaxPooling2D(2, name="b2_pool")(_conv_bn(x, 32, 3, "b2"))
    x = _activation(x, activation, "b2")
    x = _activation(_conv_bn(x, 32, 3, "b3"), activation, "b3")
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, classifier_head(x, head), name="sutd_cnn1")


def build_sutd_cnn2(
    contract: PreprocessContract,
    head: Head,
    dropout: float = 0.2,
    activation: Activation = "sigmoid",
    **_: Any,
) -> Any:
    import keras

    inputs, x = image_input(contract)
    x = _activation(_conv_bn(x, 16, 5, "b1"), activation, "b1")
    x = _activation(_conv_bn(x, 32, 5, "b2"), activation, "b2")
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _activation(_conv_bn(x, 32, 3, "b3"), activation, "b3")
    x = _activation(_conv_bn(x, 32, 3, "b4"), activation, "b4")
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, classifier_head(x, head), name="sutd_cnn2")


def build_sutd_cnn3(
    contract: PreprocessContract, head: Head, activation: Activation = "relu", **_: Any
) -> Any:
    import keras

    inputs, x = image_input(contract)
    for i, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation=activation, name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation=activation, name="fc1")(x)
    x = keras.layers.Dense(64, activation=activation, name="fc2")(x)
    return keras.Model(inputs, classifier_head(x, head), name="sutd_cnn3")
