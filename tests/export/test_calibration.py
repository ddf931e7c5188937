"""Calibration set: training split only, class-balanced, at least 100 images unless forced, provenance hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo, PreprocessContract
from export.calibration import (
    build_calibration_set,
    file_list_sha256,
    iter_batches,
    load_calibration,
    save_calibration,
)
from export.config import CalibrationConfig
from export.errors import CalibrationError, ExportError
from export.run_folder import LabelledImage, balanced_sample, read_split
from tests.export.conftest import LABELS, write_data

CONTRACT = PreprocessContract(height=32, width=32)
INFO = ModelInfo(model_version="calib-test", arch="tiny", synthetic=True)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calib-data")
    entries = write_data(root / "data")
    path = root / "split.json"
    path.write_text(json.dumps({"labels": list(LABELS), "root": str(root / "data"), **entries}))
    return path


def test_refuses_fewer_than_100_without_force() -> None:
    with pytest.raises(ExportError, match="below 100 images"):
        CalibrationConfig(size=50)
    assert CalibrationConfig(size=50, force=True).size == 50


def test_refuses_a_small_training_split_without_force(split_file: Path) -> None:
    train = read_split(split_file, "train", LABELS)[:60]
    with pytest.raises(CalibrationError, match="fewer than the 100"):
        build_calibration_set(train, CONTRACT, INFO, CalibrationConfig())
    forced = build_calibration_set(train, CONTRACT, INFO, CalibrationConfig(size=40, force=True))
    assert forced.n == 40 and forced.meta["forced"] is True


def test_class_balanced_from_train_only(split_file: Path, tmp_path: Path) -> None:
    train = read_split(split_file, "train", LABELS)
    test = read_split(split_file, "test", LABELS)
    calib = build_calibration_set(train, CONTRACT, INFO, CalibrationConfig(size=100))
    assert calib.images.shape == (100, 32, 32, 1) and calib.images.dtype == np.uint8
    assert calib.meta["class_counts"] == {"NORMAL": 50, "PNEUMONIA": 50}
    assert calib.meta["split"] == "train"
    assert all(ref.startswith("train/") for ref in calib.meta["files"])
    test_refs = {im.ref for im in test} | {str(im.path) for im in test}
    assert not test_refs & set(calib.meta["files"]), "a test image leaked into the calibration set"
    assert calib.meta["file_list_sha256"] == file_list_sha256(calib.meta["files"])
    again = build_calibration_set(list(reversed(train)), CONTRACT, INFO, CalibrationConfig(size=100))
    assert again.meta["file_list_sha256"] == calib.meta["file_list_sha256"], (
        "order of split.json must not matter"
    )
    other = build_calibration_set(train, CONTRACT, INFO, CalibrationConfig(size=100, seed=1))
    assert other.meta["file_list_sha256"] != calib.meta["file_list_sha256"]

    with pytest.raises(CalibrationError, match="from the 'test' split"):
        build_calibration_set(train + test, CONTRACT, INFO, CalibrationConfig(size=100))

    npy, meta = save_calibration(calib, tmp_path / "calibration")
    loaded = load_calibration(tmp_path / "calibration", CONTRACT)
    np.testing.assert_array_equal(loaded.images, calib.images)
    assert loaded.meta["images_sha256"] and json.loads(meta.read_text())["n"] == 100
    with pytest.raises(CalibrationError, match="another preprocessing contract"):
        load_calibration(tmp_path / "calibration", PreprocessContract(height=64, width=64))
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match=r"calib\.npy: sha256 does not match"):
        load_calibration(tmp_path / "calibration")


def test_balanced_sample_fills_from_the_larger_class() -> None:
    images = [LabelledImage(Path(f"n{i}"), "NORMAL", "train") for i in range(10)] + [
        LabelledImage(Path(f"p{i}"), "PNEUMONIA", "train") for i in range(100)
    ]
    chosen = balanced_sample(images, LABELS, 50, seed=0)
    counts = {label: sum(im.label == label for im in chosen) for label in LABELS}
    assert counts == {"NORMAL": 10, "PNEUMONIA": 40}
    assert len(balanced_sample(images, LABELS, 1000, seed=0)) == 110


def test_iter_batches() -> None:
    images = np.zeros((10, 4, 4, 1), np.uint8)
    assert [len(b) for b in iter_batches(images, 4)] == [4, 4, 2]
    with pytest.raises(ValueError):
        list(iter_batches(images, 0))
