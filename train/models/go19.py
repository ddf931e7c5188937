"""``go19``: seed 001's (Go and Bissaliyeva) "standard CNN" of 19 layers, reconstructed.

The paper gives the input (200x200), the first convolution (256 filters, output
200x200x256, so 'same' padding), ReLU, 2x2 max pooling (100x100x256) and fully
connected layers, with 19 layers in all; the rest of its Figure 5 is not in
the text. Our reconstruction keeps those facts and the CONV-RELU-POOL pattern
it describes, counting Keras layers after the scaling layer:

  4 x [Conv2D 3x3 'same' (256, 128, 64, 32 filters), ReLU, MaxPool 2x2]  12 layers
  Flatten, Dense 128, ReLU, Dropout 0.5, Dense 64, ReLU, Dense head      7 layers

Adam 1e-4, batch 10, 15 epochs; seed 001's augmentation (rotation up to 90
degrees, zoom, shifts, flips) is ``--augment seed001``. Its 256-filter convolution at full
resolution makes it the most expensive from-scratch model here (6.5 GFLOPs per
image at 200x200); only the ImageNet designs cost more (ResNet-50 7.7, VGG16
30.7 GFLOPs at 224x224).
"""

from __future__ import annotations

from typing import Any

from edge_runtime.contract import PreprocessContract
from train.models.blocks import Head, classifier_head, image_input


def build_go19(contract: PreprocessContract, head: Head, dropout: float = 0.5, **_: Any) -> Any:
    import keras

    inputs, x = image_input(contract)
    for i, filters in enumerate((256, 128, 64, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, name="fc1")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(64, name="fc2")(x)
    x = keras.layers.ReLU(name="fc2_relu")(x)
    return keras.Model(inputs, classifier_head(x, head), name="go19")
