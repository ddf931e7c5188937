"""What export reads from a run and a data folder: the same file and label rules as training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo
from export import accuracy
from export.errors import ExportError, RunFolderError
from export.run_folder import folder_images, read_split
from tests.conftest import write_image

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
