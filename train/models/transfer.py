"""``vgg16_transfer`` (seed 003) and ``resnet50`` (seed 004's comparison): keras.applications bases.

Nothing is downloaded: ``weights`` is a local ``*_notop.h5`` ImageNet file the
user names (``--weights PATH``), or None for random initialisation, which the
model card then states. The ImageNet bases expect 'caffe' inputs (0..255 minus
the ImageNet channel means), so a fixed ``Normalization`` layer maps the
contract's 0..1 values back to that range; with random weights it is a
harmless affine map and keeps one architecture either way. The bases are
frozen (seed 003) only when pretrained weights are loaded: freezing random
filters would leave only the head to learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.contract import PreprocessContract
from train.errors import TrainError
from train.models.blocks import Head, classifier_head, image_input

# ImageNet channel means in 0..1 units, as keras.applications' 'caffe' mode subtracts them (BGR order;
# chest X-rays are gray, so the channel order does not change the result).
_CAFFE_MEAN = (103.939 / 255.0, 116.779 / 255.0, 123.68 / 255.0)
_CAFFE_VARIANCE = (1.0 / 255.0) ** 2  # (x - mean) / sqrt(var) = 255 * x - 255 * mean


def _check_weights(weights: str | Path | None, contract: PreprocessContract, arch: str) -> str | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TrainError(
            f"--weights {path}: file not found (nothing is downloaded; name a local *_notop.h5 file)"
        )
    if contract.channels != 3:
        raise TrainError(
            f"--weights {path}: ImageNet weights for {arch} need 3 input channels; add --color rgb"
        )
    return str(path)


def _caffe_inputs(x: Any, channels: int) -> Any:
    import keras

    mean = list(_CAFFE_MEAN) if channels == 3 else [sum(_CAFFE_MEAN) / 3.0]
    return keras.layers.Normalization(
        mean=mean, variance=[_CAFFE_VARIANCE] * channels, name="imagenet_caffe"
    )(x)


def build_vgg16_transfer(
    contract: PreprocessContract,
    head: Head,
    weights: str | Path | None = None,
    freeze_base: bool | None = None,
    dropout: float = 0.5,
    **_: Any,
) -> Any:
    """VGG16 conv base -> AveragePooling over the whole map -> Flatten -> Dense 64 -> Dropout -> head."""
    import keras

    weights_file = _check_weights(weights, contract, "vgg16_transfer")
    inputs, x = image_input(contract)
    x = _caffe_inputs(x, contract.channels)
    base = keras.applications.VGG16(include_top=False, weights=weights_file, input_shape=contract.input_shape)
    # frozen by default only over ImageNet weights (seed 003): a frozen random base leaves the head alone to learn
    base.trainable = (weights_file is None) if freeze_base is None else not freeze_base
    x = base(x)
    pool = (contract.height // 32, contract.width // 32)
    x = keras.layers.AveragePooling2D(pool_size=pool, name="average_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, classifier_head(x, head), name="vgg16_transfer")


def build_resnet50(
    contract: PreprocessContract,
    head: Head,
    weights: str | Path | None = None,
    freeze_base: bool | None = None,
    dropout: float = 0.2,
    **_: Any,
) -> Any:
    """ResNet-50 base -> GlobalAveragePooling -> Dropout -> head (fine-tuned end to end by default)."""
    import keras

    weights_file = _check_weights(weights, contract, "resnet50")
    inputs, x = image_input(contract)
    x = _caffe_inputs(x, contract.channels)
    base = keras.applications.ResNet50(
        include_top=False, weights=weights_file, input_shape=contract.input_shape
    )
    base.trainable = True if freeze_base is None else not freeze_base
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, classifier_head(x, head), name="resnet50")
