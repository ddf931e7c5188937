"""Training-time augmentation with Keras preprocessing layers, applied in the input pipeline.

The layers run on float32 pixel batches (0..255) *before* the model, never
inside it: the saved ``.h5`` and everything exported from it contain no
random layers. Presets:

* ``none``;
* ``flip``: horizontal flips (seed 004's CNN3);
* ``seed004``: horizontal flips and rotations up to 15 degrees (seed 004's CNN1/CNN2);
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
  each image (width x0.75..x1.25, height kept). The contract squashes every
  image to a square, and in the training set the two classes were acquired
  at different aspect ratios: original NORMAL images have a median
  width/height of 1.21, PNEUMONIA images 1.50 (MANIFEST.csv, 1,631 originals),
  so after squashing a pneumonia chest looks about 0.81x as wide as a normal
  one. The default model learned that: on validation NORMAL images, squeezing
  the width to 0.85x raised the mean P(pneumonia) from 0.10 to 0.24, while
  squeezing the height to 0.85x lowered it to 0.06. Random anisotropic
  scaling of about that size makes chest shape a weak cue.
* ``xray-shape`` (ours): ``xray``, then width and height rescaled
  independently (each x0.8..x1.2). With ``xray-aspect`` the probe found the
  model invariant to width but moving with height (black bands above and
  below, which width-only training never showed it); this covers both axes.

Empty borders are filled black (``constant``), like the collimated edge of a
radiograph, rather than mirrored anatomy.
"""

from __future__ import annotations

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


# xray-aspect: +-25% width at fixed height spans the 1.21 vs 1.50 aspect-ratio gap between classes.
ASPECT_WIDTH_RANGE = (-0.25, 0.25)
# xray-shape: each axis on its own, so neither the width nor the height of the chest is a class cue.
SHAPE_RANGE = (-0.2, 0.2)


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
