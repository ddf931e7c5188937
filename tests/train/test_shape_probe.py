"""The one-axis rescale probe (train/shape_probe.py) and ``pneumo evaluate --split run-val --shape-probe``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo
from edge_runtime.metrics import roc_auc
from tests.conftest import write_image
from train.cli import evaluate_main
from train.errors import TrainError
from train.shape_probe import PROBES, Probe, rescale, shape_pooled, shape_probe


def _box(n: int, width: int, height: int, size: int = 40) -> np.ndarray:
    x = np.zeros((n, size, size, 1), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    x[:, top : top + height, left : left + width] = 200
    return x


def _extent(image: np.ndarray, axis: int) -> int:
    return int((image[..., 0] > 100).any(axis=axis).sum())


def test_rescale_changes_one_axis_and_keeps_the_array_shape() -> None:
    x = _box(2, width=20, height=20)
    narrow = rescale(x, 0.5, 1.0)
    assert narrow.shape == x.shape and narrow.dtype == np.uint8
    assert _extent(narrow[0], 0) == 10 and _extent(narrow[0], 1) == 20  # width halved, height kept
    tall = rescale(x, 1.0, 1.5)
    assert _extent(tall[1], 0) == 20 and _extent(tall[1], 1) == 30  # grown, centre-cropped to 40
    np.testing.assert_array_equal(rescale(x, 1.0, 1.0), x)
    assert rescale(x, 1.0, 1.0) is not x  # never the caller's array
    with pytest.raises(ValueError, match="> 0"):
        rescale(x, 0.0, 1.0)


def _width_reader(batch: np.ndarray) -> np.ndarray:
    """A 'model' that reads only shape: the narrower the bright box, the more abnormal."""
    widths = np.array([_extent(image, 0) for image in batch], np.float32)
    return (1.0 - widths / batch.shape[2]).reshape(-1, 1)


def test_shape_probe_exposes_a_model_that_reads_width() -> None:
    info = ModelInfo(model_version="v", arch="width-reader", threshold=0.5)
    # Normals are wide boxes (28 px: P 0.30), abnormals narrow ones (12 px: P 0.70).
    x = np.concatenate([_box(3, 28, 28), _box(3, 12, 28)])
    y = np.array([0, 0, 0, 1, 1, 1])
    report = shape_probe(_width_reader, x, y, info)
    rows = {row["probe"]: row for row in report["probes"]}
    assert [row["probe"] for row in report["probes"]] == [p.name for p in PROBES]
    assert report["n_normal"] == 3 and report["n_abnormal"] == 3
    base = rows["unchanged"]
    assert base["mean_p_normal_images"] == pytest.approx(0.3) and base["roc_auc"] == 1.0
    assert base["decisions_changed"] == 0 and base["normals_called_abnormal"] == 0
    # Squeezing the width pushes normals up; squeezing the height changes nothing for this model.
    assert rows["width x0.85"]["mean_p_normal_images"] > base["mean_p_normal_images"] + 0.04
    assert rows["height x0.85"]["mean_p_normal_images"] == pytest.approx(base["mean_p_normal_images"])
    assert rows["height x0.85"]["decisions_changed"] == 0
    # A stronger squeeze makes every normal cross the threshold.
    squeezed = shape_probe(_width_reader, x, y, info, probes=(Probe("unchanged", 1, 1), Probe("w", 0.4, 1)))
    assert squeezed["probes"][1]["normals_called_abnormal"] == 3
    assert squeezed["probes"][1]["decisions_changed"] == 3
    # Pooled: every probe's outputs scored together, as the shape-pooled selection criterion reads them.
    probs = [_width_reader(rescale(x, p.width, p.height)).reshape(-1) for p in PROBES]
    pooled = report["pooled"]
    assert pooled["n_outputs"] == len(PROBES) * len(y)
    assert pooled["roc_auc"] == pytest.approx(roc_auc(np.tile(y == 1, len(PROBES)), np.concatenate(probs)))
    assert pooled["normals_called_abnormal"] == sum(r["normals_called_abnormal"] for r in report["probes"])
    labels, outputs = shape_pooled(_width_reader, x, y)
    np.testing.assert_array_equal(labels, np.tile(y, len(PROBES)))
    np.testing.assert_allclose(outputs.reshape(-1), np.concatenate(probs))
    json.dumps(report)  # JSON-ready


def _run_folder(tiny_bundle: Path, data: Path, folder: Path) -> Path:
    from train.data import DataConfig, make_splits

    folder.mkdir()
    for name in ("model.onnx", "contract.json", "model_info.json"):
        shutil.copy(tiny_bundle / name, folder / name)
    make_splits(DataConfig(data, val_fraction=0.5)).save(folder / "split.json")
    return folder


def _data(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for i in range(6):
        write_image(
            root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png", rng.integers(10, 60, (48, 48), np.uint8)
        )
        write_image(
            root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{i}.png",
            rng.integers(200, 250, (48, 48), np.uint8),
        )
        write_image(root / "test" / "NORMAL" / f"IM-{i + 50:04d}-0001.png", np.zeros((48, 48), np.uint8))
        write_image(root / "test" / "PNEUMONIA" / f"person{i + 50}_virus_1.png", np.zeros((48, 48), np.uint8))
    return root


def test_evaluate_scores_the_runs_own_validation_split_with_the_probe(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "data")
    run = _run_folder(tiny_bundle, data, tmp_path / "run")
    val = json.loads((run / "split.json").read_text())["val"]
    argv = [str(run), "--data", str(data), "--split", "run-val", "--shape-probe", "--quiet"]
    assert evaluate_main([*argv, "--json", "--bootstrap", "20", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "run-val" and report["images"] == len(val)
    # The validation images are from train/ (bright pneumonias): the tiny model separates them,
    # whereas the all-black test images would not be.
    assert report["metrics"]["roc_auc"] == 1.0
    probe = report["shape_probe"]
    assert probe["probes"][0]["roc_auc"] == report["metrics"]["roc_auc"]
    assert probe["n_normal"] + probe["n_abnormal"] == len(val)
    assert probe["pooled"]["n_outputs"] == len(PROBES) * len(val) and 0.0 <= probe["pooled"]["roc_auc"] <= 1.0
    assert evaluate_main([*argv, "--cache-dir", str(tmp_path / "c")]) == 0
    table = capsys.readouterr().out
    assert "shape probe:" in table and "width x0.85" in table and "not a diagnosis" in table
    assert "all pooled" in table


def test_run_val_needs_a_run_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    from train.evaluate import evaluate_model

    data = _data(tmp_path / "data")
    with pytest.raises(TrainError, match=r"split\.json: not found"):
        evaluate_model(tiny_bundle, data, split="run-val", progress=False, cache_dir=tmp_path / "c")
