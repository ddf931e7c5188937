"""Training pixels == runtime pixels: load_arrays (decode cache) vs edge_runtime's preprocess_file.

If these ever differ, the deployed model sees other inputs than it was trained
and validated on, and every accuracy figure is void.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.preprocess import preprocess_file
from tests.conftest import write_image
from train.cache import load_arrays
from train.data import DataConfig, make_splits
from train.synth import SynthConfig, generate

CONTRACTS = [
    PreprocessContract(),  # the default: 224x224 grayscale, stretch, INTER_AREA
    PreprocessContract(color="rgb"),
    PreprocessContract(height=256, width=256, color="rgb", interpolation="linear", resize="letterbox"),
    PreprocessContract(height=64, width=64, interpolation="area", resize="center_crop"),
]


def _assert_parity(root: Path, samples: list, labels: tuple[str, ...], cache: Path) -> None:
    for contract in CONTRACTS:
        arrays = load_arrays(samples, labels, contract, cache_dir=cache, progress=False)
        cached = load_arrays(samples, labels, contract, cache_dir=cache, progress=False)
        assert cached.decoded == 0
        assert len(arrays) == len(samples) and not arrays.skipped
        for row, again, sample in zip(arrays.x, cached.x, samples):
            runtime = preprocess_file(sample.path, contract)
            assert row.dtype == runtime.dtype == np.uint8
            assert row.shape == runtime.shape == contract.input_shape
            assert np.array_equal(row, runtime), f"{sample.path} differs under {contract.describe()}"
            assert np.array_equal(again, runtime)


@pytest.mark.data
def test_real_images_train_path_equals_runtime_path(real_data: Path, tmp_path: Path) -> None:
    splits = make_splits(DataConfig(real_data))
    # one of each kind of file: an original (shorter side 256), a 224x224 copy, a test image
    picks = [
        next(s for s in splits.train if s.source == "original"),
        next(s for s in splits.train if s.source == "resized_copy_224x224"),
        splits.test[0],
    ]
    _assert_parity(real_data, picks, splits.labels, tmp_path / "cache")


def test_phantom_and_colour_images_train_path_equals_runtime_path(
    tmp_path: Path, gray_image: np.ndarray
) -> None:
    root = tmp_path / "synth"
    generate(root, SynthConfig(per_class=4, size=200, seed=5, layout="flat"))
    colour = np.dstack([gray_image, np.roll(gray_image, 3, axis=0), 255 - gray_image])
    write_image(root / "NORMAL" / "colour-IM-0900-0001.png", colour)
    splits = make_splits(DataConfig(root, flat_test_fraction=0.3, val_fraction=0.3))
    samples = (
        splits.train[:3]
        + splits.test[:2]
        + [s for s in splits.train + splits.val + splits.test if "colour" in s.path.name]
    )
    _assert_parity(root, samples, splits.labels, tmp_path / "cache")
