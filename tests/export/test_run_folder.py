"""What export reads from a run and a data folder: the same file and label rules as training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.fileio import sha256_file
from export import accuracy
from export.calibration import build_calibration_set
from export.config import CalibrationConfig
from export.errors import ExportError, RunFolderError
from export.golden import write_golden
from export.run_folder import (
    LabelledImage,
    RunFolder,
    folder_images,
    image_key,
    load_images,
    read_held_out,
    read_split,
)
from tests.conftest import write_image
from tests.export.conftest import TinyRun, write_data

LABELS = ("NORMAL", "PNEUMONIA")


def test_folder_scan_skips_hidden_files_like_train(tmp_path: Path) -> None:
    from edge_runtime.labelled import image_files

    for label in LABELS:
        write_image(tmp_path / "test" / label / f"{label.lower()}-1.png", np.full((20, 20), 80, np.uint8))
        # macOS leaves AppleDouble files beside every image copied from its disks: not images
        (tmp_path / "test" / label / f"._{label.lower()}-1.png").write_bytes(
            b"\x00\x05\x16\x07 resource fork"
        )
    images = folder_images(tmp_path, LABELS, "test")
    assert [im.path.name for im in images] == ["normal-1.png", "pneumonia-1.png"]
    assert sorted(im.path for im in images) == sorted(
        p for label in LABELS for p in image_files(tmp_path / "test" / label)
    )


def test_split_labels_are_compared_exactly_as_train_does(tmp_path: Path) -> None:
    image = write_image(tmp_path / "normal" / "a.png", np.full((20, 20), 80, np.uint8))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"root": str(tmp_path), "test": [{"path": str(image), "label": "normal"}]}))
    with pytest.raises(RunFolderError, match=r"label 'normal'.*case-sensitive: rename 'normal' to 'NORMAL'"):
        read_split(split, "test", LABELS)
    split.write_text(json.dumps({"root": str(tmp_path), "test": [{"path": str(image), "label": "NORMAL"}]}))
    assert [im.label for im in read_split(split, "test", LABELS)] == ["NORMAL"]


def test_outputs_that_cannot_be_scored_are_an_export_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """edge_runtime.metrics' MetricsError becomes an ExportError, so the bundle step reports it as failed."""
    monkeypatch.setattr(
        accuracy, "onnx_outputs", lambda path, images, precision: np.zeros((3, 1), np.float32)
    )
    info = ModelInfo(model_version="m", arch="a", labels=LABELS, negative_label="NORMAL", head="sigmoid")
    with pytest.raises(ExportError, match=r"m\.onnx: cannot score its outputs .*3 outputs for 2 labels"):
        accuracy.evaluate_precisions(
            {"fp32": Path("m.onnx")}, np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), info
        )


def _golden_inputs(
    images: list[LabelledImage],
) -> tuple[np.ndarray, ModelInfo, PreprocessContract, np.ndarray]:
    contract = PreprocessContract(height=32, width=32)
    info = ModelInfo(model_version="golden-guard", arch="tiny", labels=LABELS, synthetic=True)
    return load_images(images, contract), info, contract, np.full((len(images), 1), 0.25, np.float32)


def test_the_held_out_split_is_what_split_json_says_test_is(tmp_path: Path) -> None:
    root = tmp_path / "data"
    entries = write_data(root)
    entries["test"][0]["sha256"] = "AB" * 32  # recorded (upper case as some tools write it) is used as is
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labels": list(LABELS), "root": str(root), **entries}))
    held_out = read_held_out(split, LABELS)
    test = read_split(split, "test", LABELS)
    assert held_out.files == {image_key(im.path) for im in test} and len(held_out.files) == 48
    assert held_out.patients == {f"ptest{i}" for i in range(24)}
    assert "ab" * 32 in held_out.sha256 and sha256_file(test[1].path) in held_out.sha256
    assert sha256_file(test[0].path) not in held_out.sha256
    train = read_split(split, "train", LABELS)
    assert held_out.patient(train[0].path) == "ptrain0" and not held_out.is_test_file(train[0].path)
    assert held_out.is_test_file(root / "test" / "NORMAL" / ".." / "NORMAL" / "normal-test-000.png")
    assert held_out.patient(tmp_path / "elsewhere.png") is None


def test_the_held_out_split_needs_only_the_test_images_on_disk(tmp_path: Path) -> None:
    """An FP32/FP16 export on a machine that holds the test images alone: the golden check still works."""
    root = tmp_path / "data"
    entries = write_data(root)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labels": list(LABELS), "root": str(root), **entries}))
    train_file = read_split(split, "train", LABELS)[0].path
    shutil.rmtree(root / "train")
    held_out = read_held_out(split, LABELS)
    assert len(held_out.files) == 48 and held_out.patient(train_file) == "ptrain0"


def test_golden_images_must_be_files_of_the_run_test_split(tmp_path: Path) -> None:
    """--data pointing at the training folder: every image is scanned as "test", none is in split.json's test list."""
    root = tmp_path / "data"
    entries = write_data(root)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labels": list(LABELS), "root": str(root), **entries}))
    held_out = read_held_out(split, LABELS)

    test = read_split(split, "test", LABELS)[::6]
    images, info, contract, outputs = _golden_inputs(test)
    written = write_golden(
        tmp_path / "golden", images, test, info, contract, outputs, {"fp32": 1e-4}, {}, held_out=held_out
    )
    assert [p.name for p in written] == ["images.npy", "golden.json"]
    assert json.loads(written[1].read_text())["files"] == [im.ref for im in test]

    scanned = folder_images(root / "train", LABELS, "test")[::16]
    assert all(im.split == "test" for im in scanned), "the images' own split field says test"
    images, info, contract, outputs = _golden_inputs(scanned)
    (tmp_path / "wrong").mkdir()
    # Without the run's split definition nothing can tell: the images' own split fields pass them.
    write_golden(tmp_path / "wrong", images, scanned, info, contract, outputs, {"fp32": 1e-4}, {})
    shutil.rmtree(tmp_path / "wrong")
    (tmp_path / "wrong").mkdir()
    with pytest.raises(
        ExportError,
        match=r"normal-train-000\.png: chosen for the golden set but not in the test split of .*split\.json",
    ):
        write_golden(
            tmp_path / "wrong",
            images,
            scanned,
            info,
            contract,
            outputs,
            {"fp32": 1e-4},
            {},
            held_out=held_out,
        )
    assert not any((tmp_path / "wrong").iterdir()), "nothing is written for a refused golden set"


@pytest.mark.tf
def test_a_run_folder_gives_the_test_split_its_calibration_and_golden_set_are_checked_against(
    tiny_run: TinyRun,
) -> None:
    """What export's callers pass: run.held_out() beside run.split_images(); test paths absolute, train relative."""
    run = RunFolder.resolve(tiny_run.folder)
    held_out = run.held_out()
    test = run.split_images("test")
    assert held_out.files == {image_key(im.path) for im in test} and held_out.source == run.split_path
    calib = build_calibration_set(
        run.split_images("train"), run.contract, run.info, CalibrationConfig(size=100), held_out=held_out
    )
    assert calib.meta["test_split_checked"] is True and calib.meta["excluded_test_patient_images"] == 0
