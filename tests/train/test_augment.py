"""The rescale ranges the augmentation docs quote are what Keras really does to the image content."""

from __future__ import annotations

import numpy as np
import pytest

from train.augment import ASPECT_WIDTH_RANGE, SHAPE_RANGE, content_scale_range


def test_content_scale_range_of_the_shape_presets_is_what_the_docs_quote() -> None:
    assert content_scale_range(ASPECT_WIDTH_RANGE) == pytest.approx((0.80, 1.333), abs=0.001)
    assert content_scale_range(SHAPE_RANGE) == pytest.approx((0.833, 1.25), abs=0.001)


def _box_width(image: np.ndarray) -> int:
    columns = np.flatnonzero(image[image.shape[0] // 2, :, 0] > 127)
    return int(columns[-1] - columns[0] + 1)


@pytest.mark.tf
@pytest.mark.parametrize(
    "factor", [ASPECT_WIDTH_RANGE[0], ASPECT_WIDTH_RANGE[1], SHAPE_RANGE[0], SHAPE_RANGE[1]]
)
def test_a_zoom_factor_scales_the_content_as_content_scale_range_says(factor: float) -> None:
    import keras

    image = np.zeros((1, 96, 96, 1), np.float32)
    image[:, 28:68, 28:68] = 255.0  # a 40-pixel box in the middle
    zoom = keras.layers.RandomZoom(
        height_factor=(0.0, 0.0), width_factor=(factor, factor), fill_mode="constant", interpolation="nearest"
    )
    out = np.asarray(zoom(image, training=True))
    low, high = content_scale_range((factor, factor))
    assert low == pytest.approx(high)
    assert _box_width(out[0]) == pytest.approx(40 * low, abs=1.5)
    assert _box_width(np.transpose(out[0], (1, 0, 2))) == 40  # the height is untouched


@pytest.mark.tf
def test_seed004_resnet_brightness_scales_pixels_like_imagedatagenerator() -> None:
    from train.augment import _brightness_scale

    image = np.tile(np.linspace(20.0, 120.0, 24, dtype=np.float32), (8, 24, 1))[..., np.newaxis]
    out = np.asarray(_brightness_scale(0.5, 2.0, seed=3)(image, training=True))
    factors = out[:, 0, 0, 0] / image[:, 0, 0, 0]
    # one factor per image, multiplying every pixel (an additive shift would change the ratio along a row)
    np.testing.assert_allclose(out, np.clip(image * factors[:, None, None, None], 0, 255), rtol=1e-5)
    assert np.all((factors >= 0.5) & (factors <= 2.0)) and len(np.unique(factors.round(4))) > 1
    np.testing.assert_array_equal(
        np.asarray(_brightness_scale(0.5, 2.0, seed=3)(image, training=False)), image
    )
