"""The benchmark's test images follow training's file and label rules; unscorable outputs are a BenchError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.errors import BenchInputError
from benchmarks.labelled_images import LabelledImages, files_from_folder, files_from_split_json
from benchmarks.run import _accuracy
from edge_runtime.contract import ModelInfo
from tests.benchmarks.test_run import labelled_folder

INFO = ModelInfo(
    model_version="m", arch="a", labels=("NORMAL", "PNEUMONIA"), negative_label="NORMAL", head="sigmoid"
)


def test_hidden_files_are_skipped_as_train_skips_them(tmp_path: Path) -> None:
    folder = labelled_folder(tmp_path / "test", per_class=2)
    (folder / "NORMAL" / "._normal_0.jpeg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    names = sorted(f.path.name for f in files_from_folder(folder, INFO))
    assert names == ["normal_0.jpeg", "normal_1.jpeg", "pneumonia_0.jpeg", "pneumonia_1.jpeg"]


def test_class_folders_must_match_labels_exactly(tmp_path: Path) -> None:
    """A 'normal' folder is not the model's NORMAL (as in training), and is never silently left out:
    the accuracy of the remaining class alone would pass for the whole test set's."""
    folder = labelled_folder(tmp_path / "test", per_class=1)
    (folder / "NORMAL").rename(folder / "normal")
    with pytest.raises(
        BenchInputError, match=r"\['normal'\] hold images but are not labels.*rename 'normal' to 'NORMAL'"
    ):
        files_from_folder(folder, INFO)
    (folder / "PNEUMONIA").rename(folder / "Pneumonia")
    with pytest.raises(BenchInputError, match=r"case-sensitive: rename 'normal' to 'NORMAL'"):
        files_from_folder(folder, INFO)
    (folder / "Pneumonia").rename(folder / "PNEUMONIA")
    (folder / "normal").rename(folder / "NORMAL")
    (folder / "notes").mkdir()  # a folder without images is no class folder: fine
    (folder / "notes" / "readme.txt").write_text("scanned 2026-11")
    assert len(files_from_folder(folder, INFO)) == 2


def test_a_test_set_without_a_class_is_flagged(tiny_bundle: Path, tmp_path: Path) -> None:
    from benchmarks.run import BenchConfig, run_benchmark

    folder = labelled_folder(tmp_path / "test", per_class=2)
    shutil.rmtree(folder / "NORMAL")
    config = BenchConfig(
        bundle=tiny_bundle,
        backends=("ort-cpu",),
        batches=(1,),
        iterations=10,
        warmup_s=0.0,
        data=folder,
        cold_start_repeats=0,
        end_to_end=False,
        progress=False,
    )
    document = run_benchmark(config)
    assert any("have no NORMAL image" in w and "one class only" in w for w in document["warnings"])


def test_split_json_labels_must_match_exactly(tmp_path: Path) -> None:
    folder = labelled_folder(tmp_path / "data", per_class=1)
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps({"root": str(folder), "test": [{"path": "NORMAL/normal_0.jpeg", "label": "normal"}]})
    )
    with pytest.raises(BenchInputError, match=r"has label 'normal', .*rename 'normal' to 'NORMAL'"):
        files_from_split_json(split, INFO)


def test_unscorable_outputs_are_a_bench_error() -> None:
    """edge_runtime.metrics' MetricsError is not a BenchError; _accuracy turns it into one, the CLI prints it."""
    runner = SimpleNamespace(
        name="ort-cpu", max_batch=8, infer=lambda batch: np.zeros((len(batch), 3), np.float32)
    )
    labelled = LabelledImages(
        "--data x", (Path("a"), Path("b")), np.array([0, 1]), np.zeros((2, 4, 4, 1), np.uint8)
    )
    config = SimpleNamespace(batches=(1,), bootstrap=0, seed=0)
    bundle = SimpleNamespace(info=INFO, root=Path("bundles/m"))
    with pytest.raises(BenchInputError, match=r"ort-cpu outputs cannot be scored against bundles/m"):
        _accuracy(runner, labelled, bundle, config)  # type: ignore[arg-type]


def test_a_metrics_error_escaping_is_reported_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import cli
    from edge_runtime.metrics import MetricsError

    def broken(*args: object) -> int:
        raise MetricsError("no images to evaluate")

    monkeypatch.setattr(cli, "_bench", broken)
    assert main([str(tmp_path)]) == 1
    assert "pneumo bench: no images to evaluate" in capsys.readouterr().err


def test_an_out_of_range_setting_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--duration", "0", "-o", str(tmp_path / "out")]) == 2
    assert "--duration 0.0: must be within" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
