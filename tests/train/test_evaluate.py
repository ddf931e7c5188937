"""``pneumo evaluate`` on ONNX models and bundles (lean path, no TensorFlow), and its data selection.

The tiny bundle's real ONNX model scores bright images as abnormal, so the
expected metrics are known exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_image
from train.cli import evaluate_main
from train.errors import DataError
from train.evaluate import evaluate_model, open_model


def _labelled(root: Path, miss: int = 0) -> Path:
    """test/{NORMAL,PNEUMONIA}: dark normals, bright pneumonias; ``miss`` pneumonias are dark (false negatives)."""
    rng = np.random.default_rng(0)
    for i in range(6):
        write_image(
            root / "test" / "NORMAL" / f"IM-{i:04d}-0001.png", rng.integers(10, 60, (48, 48), dtype=np.uint8)
        )
        level = (10, 60) if i < miss else (200, 250)
        write_image(
            root / "test" / "PNEUMONIA" / f"person{i}_bacteria_{i}.png",
            rng.integers(*level, (48, 48), dtype=np.uint8),
        )
    write_image(root / "train" / "NORMAL" / "IM-0100-0001.png", np.zeros((48, 48), np.uint8))
    write_image(root / "train" / "PNEUMONIA" / "person100_virus_1.png", np.zeros((48, 48), np.uint8))
    return root


def test_bundle_evaluation_matches_the_known_answer(tiny_bundle: Path, tmp_path: Path) -> None:
    data = _labelled(tmp_path / "data", miss=2)
    report = evaluate_model(
        tiny_bundle, data, split="test", bootstrap=100, cache_dir=tmp_path / "cache", progress=False
    )
    m = report["metrics"]
    assert report["runner"] == "ort-cpu fp32" and report["images"] == 12
    assert m["confusion"] == {"tp": 4, "fn": 2, "tn": 6, "fp": 0}
    assert m["sensitivity"] == pytest.approx(4 / 6) and m["specificity"] == 1.0
    assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]
    assert report["synthetic_model"] is True  # the tiny bundle is marked synthetic


def test_onnx_file_and_cli_json(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "contract.json", "model_info.json"):
        shutil.copy(tiny_bundle / name, folder / name)
    data = _labelled(tmp_path / "data")
    report_file = tmp_path / "report.json"
    argv = [str(folder / "model.onnx"), "--data", str(data), "--json", "--quiet", "--bootstrap", "50"]
    assert evaluate_main([*argv, "--cache-dir", str(tmp_path / "cache"), "-o", str(report_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["accuracy"] == 1.0 and printed["metrics"]["roc_auc"] == 1.0
    assert json.loads(report_file.read_text()) == printed
    # the same through the table
    assert (
        evaluate_main(
            [
                str(folder / "model.onnx"),
                "--data",
                str(data),
                "--quiet",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "SYNTHETIC" in table and "ROC AUC" in table and "not a diagnosis" in table


def test_split_and_label_checks(tiny_bundle: Path, tmp_path: Path) -> None:
    data = _labelled(tmp_path / "data")
    with pytest.raises(DataError, match="no images in split 'val'"):
        evaluate_model(tiny_bundle, data, split="val", progress=False, cache_dir=tmp_path / "cache")
    other = tmp_path / "other"
    write_image(other / "NORMAL" / "a.png", np.zeros((40, 40), np.uint8))
    write_image(other / "COVID" / "b.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(DataError, match="COVID"):
        evaluate_model(tiny_bundle, other, progress=False, cache_dir=tmp_path / "cache")


def test_open_model_needs_its_sidecars(tiny_bundle: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.onnx"
    shutil.copy(tiny_bundle / "model.onnx", lone)
    from train.errors import TrainError

    with pytest.raises(TrainError, match="contract.json and model_info.json"):
        open_model(lone)
