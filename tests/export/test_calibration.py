"""Calibration set: training split only, class-balanced, at least 100 images unless forced, provenance hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
from export.run_folder import LabelledImage, balanced_sample, read_held_out, read_split
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


def _edited_split(split_file: Path, folder: Path, edit: Any) -> Path:
    """A copy of ``split_file`` (same images) with ``edit(document)`` applied, as a hand edit or a bad merge would."""
    document = json.loads(split_file.read_text())
    edit(document)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "split.json"
    path.write_text(json.dumps(document))
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
    assert calib.meta["test_split_checked"] is False and calib.meta["excluded_test_patient_images"] is None
    # The normal path with the run's test split: nothing shared with it, so the very same set.
    checked = build_calibration_set(
        train, CONTRACT, INFO, CalibrationConfig(size=100), held_out=read_held_out(split_file, LABELS)
    )
    assert checked.meta["file_list_sha256"] == calib.meta["file_list_sha256"]
    np.testing.assert_array_equal(checked.images, calib.images)
    assert checked.meta["test_split_checked"] is True and checked.meta["excluded_test_patient_images"] == 0

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


def test_images_of_test_patients_are_left_out_of_the_calibration_set(
    split_file: Path, tmp_path: Path
) -> None:
    """The official Kermany test shares patients with its train folder: their training images are not sampled."""

    def share_patients(document: dict[str, Any]) -> None:
        # Five children of each class have images in both lists, as 170 do in the real data set.
        for entry in document["train"][:5] + document["train"][-5:]:
            entry["patient_id"] = document["test"][0]["patient_id"]

    split = _edited_split(split_file, tmp_path, share_patients)
    train = read_split(split, "train", LABELS)
    shared = {im.ref for im in train[:5] + train[-5:]}
    everything = CalibrationConfig(size=len(train))
    unchecked = build_calibration_set(train, CONTRACT, INFO, everything)
    assert shared <= set(unchecked.meta["files"]), "without the test split they are sampled like any other"

    held_out = read_held_out(split, LABELS)
    calib = build_calibration_set(train, CONTRACT, INFO, everything, held_out=held_out)
    assert not shared & set(calib.meta["files"])
    assert calib.n == len(train) - 10 and calib.meta["excluded_test_patient_images"] == 10
    assert calib.meta["class_counts"] == {"NORMAL": 59, "PNEUMONIA": 59}

    # The minimum counts the images left after the exclusion: 115 listed, 105 left, enough for 100.
    assert (
        build_calibration_set(
            train[:60] + train[-55:], CONTRACT, INFO, CalibrationConfig(size=100), held_out=held_out
        ).n
        == 100
    )
    with pytest.raises(
        CalibrationError, match="has 95 images once the 10 images of test-split patients are left out"
    ):
        build_calibration_set(
            train[:55] + train[-50:], CONTRACT, INFO, CalibrationConfig(size=100), held_out=held_out
        )


def test_a_training_list_that_names_a_test_file_is_refused(split_file: Path, tmp_path: Path) -> None:
    """A bad merge of split.json lists one test image for training too; its ``split`` field then says "train"."""
    split = _edited_split(
        split_file, tmp_path, lambda d: d["train"].append(dict(d["test"][3], split="train"))
    )
    train = read_split(split, "train", LABELS)
    assert all(im.split == "train" for im in train), "so the lists' own split fields cannot see it"
    size = CalibrationConfig(size=len(train))
    with pytest.raises(
        CalibrationError, match=r"normal-test-003\.png: listed for training but also in the test split"
    ):
        build_calibration_set(train, CONTRACT, INFO, size, held_out=read_held_out(split, LABELS))


def test_a_copy_of_a_test_image_among_the_training_images_is_left_out(
    split_file: Path, tmp_path: Path
) -> None:
    """The same X-ray under another name in the training folder: caught by its bytes, whatever the seed."""
    data = tmp_path / "data"
    shutil.copytree(split_file.parent / "data", data)
    shutil.copyfile(
        data / "test" / "PNEUMONIA" / "pneumonia-test-007.png", data / "train" / "PNEUMONIA" / "copy.png"
    )

    def add_copy(document: dict[str, Any]) -> None:
        document["root"] = str(data)
        document["test"] = [
            dict(e, path=e["path"].replace(str(split_file.parent / "data"), str(data)))
            for e in document["test"]
        ]
        document["train"].append(
            {"path": "train/PNEUMONIA/copy.png", "label": "PNEUMONIA", "patient_id": "new"}
        )

    split = _edited_split(split_file, tmp_path, add_copy)
    train = read_split(split, "train", LABELS)
    size = CalibrationConfig(size=len(train))
    assert build_calibration_set(train, CONTRACT, INFO, size).n == len(train), "unchecked, the copy is used"
    checked = build_calibration_set(train, CONTRACT, INFO, size, held_out=read_held_out(split, LABELS))
    assert "train/PNEUMONIA/copy.png" not in checked.meta["files"]
    assert (
        checked.meta["excluded_test_image_copies"] == 1 and checked.meta["excluded_test_patient_images"] == 0
    )
    assert checked.n == len(train) - 1


def test_a_training_list_from_another_split_file_is_refused(split_file: Path, tmp_path: Path) -> None:
    """Images and test split from different data sets: the test split could not be kept out, so no set is made."""
    other = tmp_path / "other"
    entries = write_data(other / "data", seed=1)
    (other / "split.json").write_text(
        json.dumps({"labels": list(LABELS), "root": str(other / "data"), **entries})
    )
    train = read_split(other / "split.json", "train", LABELS)
    with pytest.raises(
        CalibrationError, match=r"-train-\d+\.png: not listed in .*split\.json; the training images"
    ):
        build_calibration_set(
            train, CONTRACT, INFO, CalibrationConfig(), held_out=read_held_out(split_file, LABELS)
        )


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
