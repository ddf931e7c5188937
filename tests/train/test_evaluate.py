"""``pneumo evaluate`` on ONNX models and bundles (lean path, no TensorFlow), and its data selection.

The tiny bundle's real ONNX model scores bright images as abnormal, so the
expected metrics are known exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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


def test_a_folder_split_needs_data_and_one_decodable_image(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--split test needs --data: the labelled folder to score"):
        evaluate_model(tiny_bundle, None, split="test", progress=False, cache_dir=tmp_path / "cache")
    broken = tmp_path / "broken"
    for name in ("NORMAL/a.png", "PNEUMONIA/b.png"):
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{broken}: none of the 2 images could be decoded"):
        evaluate_model(tiny_bundle, broken, progress=False, cache_dir=tmp_path / "cache")


def test_open_model_needs_its_sidecars(tiny_bundle: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.onnx"
    shutil.copy(tiny_bundle / "model.onnx", lone)
    from train.errors import TrainError

    with pytest.raises(TrainError, match="contract.json and model_info.json"):
        open_model(lone)


def _split_data(root: Path) -> Path:
    """train/, val/ and test/ of dark normals and bright pneumonias, one image per patient."""
    rng = np.random.default_rng(1)
    for split, first in (("train", 0), ("val", 40), ("test", 80)):
        for i in range(first, first + 4):
            write_image(
                root / split / "NORMAL" / f"IM-{i:04d}-0001.png", rng.integers(10, 60, (48, 48), np.uint8)
            )
            write_image(
                root / split / "PNEUMONIA" / f"person{i}_bacteria_{i}.png",
                rng.integers(200, 250, (48, 48), np.uint8),
            )
    return root


def _run(
    tiny_bundle: Path, data: Path, folder: Path, split_mode: str = "patient", **data_options: Any
) -> Path:
    """A run folder (the tiny ONNX model + a split.json made by train.data, as 'pneumo train' writes it)."""
    from train.data import DataConfig, make_splits

    folder.mkdir()
    for name in ("model.onnx", "contract.json", "model_info.json"):
        shutil.copy(tiny_bundle / name, folder / name)
    config = DataConfig(data, split_mode=split_mode, val_fraction=0.25, **data_options)  # type: ignore[arg-type]
    make_splits(config).save(folder / "split.json")
    return folder


def test_official_val_is_refused_where_the_run_trained_on_it(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patient-wise mode folds val/ into the training pool: scoring it is not a validation result."""
    data = _split_data(tmp_path / "data")
    run = _run(tiny_bundle, data, tmp_path / "run")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="--split run-val") as refused:
        evaluate_model(run, data, split="val", progress=False, cache_dir=cache)
    assert "training list" in str(refused.value) and "--allow-train-overlap" in str(refused.value)
    argv = [str(run / "model.onnx"), "--data", str(data), "--quiet", "--cache-dir", str(cache)]
    assert evaluate_main([*argv, "--split", "val"]) == 1
    assert "--split run-val" in capsys.readouterr().err
    # A copy of the data set elsewhere is recognised too (paths relative to the data root).
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    with pytest.raises(DataError, match="training list"):
        evaluate_model(run, moved, split="all", progress=False, cache_dir=cache)
    # Allowed explicitly: scored, and the report says the figures include training images.
    assert evaluate_main([*argv, "--split", "val", "--allow-train-overlap", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    trained_on = [e for e in json.loads((run / "split.json").read_text())["train"] if "/val/" in e["path"]]
    assert report["images"] == 8 and report["train_overlap"] == len(trained_on) > 0
    assert "training images" in report["train_overlap_warning"]
    assert evaluate_main([*argv, "--split", "val", "--allow-train-overlap"]) == 0
    assert "*** TRAINING IMAGES:" in capsys.readouterr().out
    # The test split shares no image with training: scored as before, and says it was checked.
    test = evaluate_model(run, data, split="test", progress=False, cache_dir=cache, bootstrap=0)
    assert test["train_overlap"] == 0 and "train_overlap_warning" not in test


def test_random_split_runs_may_not_score_the_test_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    data = _split_data(tmp_path / "data")
    run = _run(tiny_bundle, data, tmp_path / "run", split_mode="random", random_pool="all")
    with pytest.raises(DataError, match="training list"):
        evaluate_model(run, data, split="test", progress=False, cache_dir=tmp_path / "cache")
    # seed 000's pool (the train folder alone) never saw the test folder: scoring it is allowed
    seed000 = _run(
        tiny_bundle, data, tmp_path / "run-train-pool", "random", random_fractions=(0.5, 0.25, 0.25)
    )
    result = evaluate_model(seed000, data, split="test", progress=False, cache_dir=tmp_path / "cache")
    assert result["train_overlap"] == 0


def test_a_model_without_split_json_says_overlap_was_not_checked(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labelled(tmp_path / "data")
    argv = [str(tiny_bundle), "--data", str(data), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert evaluate_main([*argv, "--json", "--bootstrap", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["train_overlap"] is None
    assert evaluate_main([*argv, "--bootstrap", "0"]) == 0
    assert "overlap with training images not checked" in capsys.readouterr().out


def test_run_val_follows_a_data_set_that_moved(tiny_bundle: Path, tmp_path: Path) -> None:
    """--data re-roots the run's split.json: the validation images are read where the data set is now."""
    data = _split_data(tmp_path / "data")
    run = _run(tiny_bundle, data, tmp_path / "run")
    moved = tmp_path / "moved"
    data.rename(moved)
    report = evaluate_model(
        run, moved, split="run-val", progress=False, cache_dir=tmp_path / "c", bootstrap=0
    )
    assert report["images"] == len(json.loads((run / "split.json").read_text())["val"])
    assert report["data"] == str(moved) and report["train_overlap"] == 0
    with pytest.raises(DataError, match="not under --data"):
        evaluate_model(run, tmp_path / "run", split="run-val", progress=False, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="data folder not found"):
        evaluate_model(run, tmp_path / "nowhere", split="run-val", progress=False, cache_dir=tmp_path / "c")
