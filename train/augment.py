"""Training-time augmentation with Keras preprocessing layers, applied in the input pipeline.

The layers run on float32 pixel batches (0..255) *before* the model, never
inside it: the saved ``.h5`` and everything exported from it contain no
random layers. Presets:

* ``none``;
* ``flip``: horizontal flips (seed 004's CNN3);
* ``seed004``: horizontal flips and rotations up to 15 degrees (seed 004's CNN1/CNN2);
* ``seed004-resnet``: seed 004's ResNet-50 augmentation (its section 2.1):
  shear up to 10 degrees, zoom 30% (each axis), horizontal and vertical flips,
  brightness x0.5..x2.0, horizontal shifts up to 20%, rotations up to 20
  degrees, borders filled with the nearest pixel;
* ``seed001``: rotations up to 90 degrees, 20% zoom, 10% width and height
  shifts, horizontal and vertical flips (seed 001's augmented model);
* ``light`` (ours): rotations up to 7 degrees, 10% zoom, 5% shifts and
  +-10% contrast, no flips: a chest X-ray is not left-right symmetric (the
  heart), and positioning in a clinic varies by a few degrees and centimetres;
* ``xray`` (ours): ``light`` plus random Gaussian blur (about half the images
  of a batch; sigma 0.1..1.5 px, one sigma per batch, as Keras draws it),
  +-20% contrast and +-10% brightness. In the Kermany set, sharpness differs
  with the label *and* between train and test: at 224x224 the mean absolute
  horizontal gradient of train NORMAL images is 4.1-4.2 grey levels, of test
  NORMAL images 3.6, of PNEUMONIA images 2.7-2.8 in both, so a model that
  learns "sharp means normal" calls smooth test normals pneumonia. Random blur
  makes sharpness a weaker cue; for ``lhu`` it moved the official-test ROC AUC
  from 0.907 to 0.914, within the 95% intervals (README, "Training").

* ``xray-balanced`` (ours): ``xray``, then one more Gaussian blur (sigma
  0.4..1.0 px, a new sigma per batch) on every **normal** training image only.
  Sharpness is a class cue in the training set itself: at 160x160 the mean
  absolute horizontal gradient of training NORMAL images is 6.4-6.7 grey
  levels, of PNEUMONIA images 5.2-5.3 (1,200 training images, originals and
  copies alike); the extra blur brings normals to about 5.5. Blurring both
  classes alike (``xray``) keeps the gap; blurring only normals makes
  sharpness nearly useless as a shortcut while the lung findings stay.
  Measured (``dsconv`` at 160 px, reports/best_model.md):
  validation ROC AUC fell from 0.9982 to 0.9871, so sharpness is also a real
  cue within the training distribution; not a default.
* ``xray-aspect`` (ours): ``xray``, then a random horizontal-only rescale of
  each image (content width x0.80..x1.33, height kept: ``RandomZoom`` width
  factor +-0.25, see :func:`content_scale_range`). The contract squashes every
  image to a square, and in the training set the two classes were acquired
  at different aspect ratios: original NORMAL images have a median
  width/height of 1.21, PNEUMONIA images 1.50 (MANIFEST.csv, 1,631 originals),
  so after squashing a pneumonia chest looks about 0.81x as wide as a normal
  one. The default model learned that: on validation NORMAL images, squeezing
  the width to 0.85x raised the mean P(pneumonia) from 0.10 to 0.24, while
  squeezing the height to 0.85x lowered it to 0.06. Random anisotropic
  scaling of about that size makes chest shape a weak cue.
* ``xray-shape`` (ours): ``xray``, then width and height rescaled
  independently (content x0.83..x1.25 on each axis: factor +-0.2). With ``xray-aspect`` the probe found the
  model invariant to width but moving with height (black bands above and
  below, which width-only training never showed it); this covers both axes.

Empty borders are filled black (``constant``), like the collimated edge of a
radiograph, rather than mirrored anatomy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from train.config import AUGMENTATIONS
from train.errors import TrainError

_FILL = {"fill_mode": "constant", "fill_value": 0.0}
# xray-balanced: extra blur for the negative (normal) class only; see the module docstring.
NEGATIVE_BLUR_SIGMA = (0.4, 1.0)


@dataclass(frozen=True)
class Augmenter:
    """Random layers for every training image, and optionally more for the negative class only.

    Called on a float32 pixel batch (0..255) and the batch's class indices.
    """

    name: str
    common: Any
    negative_only: Any | None = None
    negative_index: int = 0

    def __call__(self, batch: Any, classes: Any) -> Any:
        import keras

        batch = self.common(batch, training=True)
        if self.negative_only is None:
            return batch
        is_negative = keras.ops.reshape(keras.ops.equal(classes, self.negative_index), (-1, 1, 1, 1))
        return keras.ops.where(is_negative, self.negative_only(batch, training=True), batch)


@dataclass(frozen=True)
class Mixup:
    """Blend each image of a batch with another of the same batch (Zhang et al. 2018, "mixup").

    One lambda ~ Beta(alpha, alpha) per batch, folded to max(lambda, 1 - lambda) so each row keeps
    its own image dominant; targets and loss weights are blended with the same lambda, so class
    weights still balance the classes.
    """

    alpha: float
    seed: int = 0

    def make(self) -> Any:
        """A callable ``(images, targets, weights | None) -> same``; holds its own random state."""
        import keras

        generator = keras.random.SeedGenerator(self.seed + 101)
        alpha = self.alpha

        def blend(images: Any, targets: Any, weights: Any | None) -> tuple[Any, Any, Any | None]:
            ops = keras.ops
            lam = keras.random.beta((), alpha, alpha, seed=generator)
            lam = ops.maximum(lam, 1.0 - lam)
            partner = keras.random.shuffle(ops.arange(ops.shape(images)[0]), seed=generator)

            def mix(a: Any) -> Any:
                a = ops.cast(a, "float32")
                return lam * a + (1.0 - lam) * ops.take(a, partner, axis=0)

            return mix(images), mix(targets), None if weights is None else mix(weights)

        return blend


def build_augmenter(name: str, seed: int = 0, negative_index: int = 0) -> Augmenter | None:
    """The random layers of preset ``name``, or None for ``none``.

    ``negative_index`` is the class index of the normal label (used by ``xray-balanced``).
    """
    if name not in AUGMENTATIONS:
        raise TrainError(f"--augment {name!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if name == "none":
        return None
    import keras

    if name == "xray-balanced":
        negative_blur = keras.layers.RandomGaussianBlur(
            factor=(1.0, 1.0),
            kernel_size=5,
            sigma=NEGATIVE_BLUR_SIGMA,
            value_range=(0.0, 255.0),
            seed=seed + 6,
        )
        return Augmenter(name, _common_layers("xray", seed), negative_blur, negative_index)
    return Augmenter(name, _common_layers(name, seed))


# RandomZoom factors. xray-aspect: content width x0.80..x1.33 at fixed height spans the 1.21 vs 1.50
# aspect-ratio gap between classes (a ratio of 0.81).
ASPECT_WIDTH_RANGE = (-0.25, 0.25)
# xray-shape: each axis on its own (content x0.83..x1.25), so neither the width nor the height of the
# chest is a class cue.
SHAPE_RANGE = (-0.2, 0.2)


def content_scale_range(factor_range: tuple[float, float]) -> tuple[float, float]:
    """The (smallest, largest) scale a ``RandomZoom`` factor range gives the image content.

    Keras shows ``1 + factor`` of the side and resizes it back, so a factor of -0.25 shows 75% of
    the width and stretches the content 1 / 0.75 = 1.33x, while +0.25 shrinks it to 0.80x: the
    range is not symmetric around 1, which is easy to misquote.
    """
    low, high = factor_range
    return 1.0 / (1.0 + high), 1.0 / (1.0 + low)


def _brightness_scale(low: float, high: float, seed: int) -> Any:
    """Every image multiplied by its own factor in [low, high], clipped to 0..255.

    ImageDataGenerator's ``brightness_range`` (PIL's brightness enhance) scales pixels; Keras'
    ``RandomBrightness`` adds to them, which is a different change of a radiograph.
    """
    import keras

    class RandomBrightnessScale(keras.layers.Layer):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(name="random_brightness_scale")
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images: Any, training: bool = True) -> Any:
            if not training:
                return images
            shape = (keras.ops.shape(images)[0], 1, 1, 1)
            factor = keras.random.uniform(shape, low, high, seed=self.generator)
            return keras.ops.clip(images * factor, 0.0, 255.0)

    return RandomBrightnessScale()


def _common_layers(name: str, seed: int) -> Any:
    import keras

    return keras.Sequential(_preset_layers(name, seed), name=f"augment_{name}")


def _preset_layers(name: str, seed: int) -> list[Any]:
    import keras

    if name == "flip":
        return [keras.layers.RandomFlip("horizontal", seed=seed)]
    if name == "seed004":
        return [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(15 / 360, seed=seed + 1, **_FILL),
        ]
    if name == "seed004-resnet":
        nearest = {"fill_mode": "nearest"}
        return [
            # ImageDataGenerator's shear_range=10 is an angle; Keras' RandomShear takes its tangent.
            keras.layers.RandomShear(
                x_factor=(0.0, math.tan(math.radians(10))), y_factor=0.0, seed=seed, **nearest
            ),
            keras.layers.RandomZoom(0.3, 0.3, seed=seed + 1, **nearest),
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 2),
            _brightness_scale(0.5, 2.0, seed + 3),
            keras.layers.RandomTranslation(0.0, 0.2, seed=seed + 4, **nearest),
            keras.layers.RandomRotation(20 / 360, seed=seed + 5, **nearest),
        ]
    if name == "seed001":
        return [
            keras.layers.RandomRotation(90 / 360, seed=seed, **_FILL),
            keras.layers.RandomZoom(0.2, seed=seed + 1, **_FILL),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 2, **_FILL),
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 3),
        ]
    if name == "xray":
        return [
            keras.layers.RandomRotation(7 / 360, seed=seed, **_FILL),
            keras.layers.RandomZoom(0.1, seed=seed + 1, **_FILL),
            keras.layers.RandomTranslation(0.05, 0.05, seed=seed + 2, **_FILL),
            keras.layers.RandomContrast(0.2, seed=seed + 3),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed + 4),
            keras.layers.RandomGaussianBlur(
                factor=1.0, kernel_size=5, sigma=(0.1, 1.5), value_range=(0.0, 255.0), seed=seed + 5
            ),
        ]
    if name == "xray-aspect":
        width_only = keras.layers.RandomZoom(
            height_factor=(0.0, 0.0), width_factor=ASPECT_WIDTH_RANGE, seed=seed + 7, **_FILL
        )
        return [*_preset_layers("xray", seed), width_only]
    if name == "xray-shape":
        both_axes = keras.layers.RandomZoom(
            height_factor=SHAPE_RANGE, width_factor=SHAPE_RANGE, seed=seed + 8, **_FILL
        )
        return [*_preset_layers("xray", seed), both_axes]
    # light
    return [
        keras.layers.RandomRotation(7 / 360, seed=seed, **_FILL),
        keras.layers.RandomZoom(0.1, seed=seed + 1, **_FILL),
        keras.layers.RandomTranslation(0.05, 0.05, seed=seed + 2, **_FILL),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ]
