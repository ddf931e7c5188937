"""``roskilde``: seed 002 (Roskilde University), its listed Keras model.

Grayscale 128x128 (their best run: 64x64, ``--image-size 64``) -> /255 ->
Conv2D 32, 64, 128, 128 (3x3 ReLU, 'valid') each with MaxPooling 2x2 -> Flatten
-> Dropout 0.5 -> Dense 512 ReLU -> Dense 1 sigmoid: 2,600,577 parameters at
128x128, as the paper's summary prints. RMSprop 1e-4, random undersampling of
PNEUMONIA, EarlyStopping restoring the best weights.

The study's adjustment table (section 3.3) changes two things the listed model
fixes: rows 4-7 raise the last convolution to 256 filters (``last_filters``),
and row 7 adds Dropout 0.25 after every pooling layer (``pool_dropout``). The
defaults build the listed model, layer for layer.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.contract import PreprocessContract
from train.models.blocks import Head, classifier_head, image_input


def build_roskilde(
    contract: PreprocessContract,
    head: Head,
    dropout: float = 0.5,
    last_filters: int = 128,
    pool_dropout: float = 0.0,
    **_: Any,
) -> Any:
    import keras

    inputs, x = image_input(contract)
    for i, filters in enumerate((32, 64, 128, last_filters), start=1):
        x = keras.layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
        if pool_dropout > 0:
            x = keras.layers.Dropout(pool_dropout, name=f"pool{i}_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(512, activation="relu", name="dense")(x)
    return keras.Model(inputs, classifier_head(x, head), name="roskilde")
