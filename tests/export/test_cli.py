"""``pneumo export`` command line: exit codes and the messages a user sees."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from edge_runtime.pneumo_cli import main as pneumo
from export.cli import main
from tests.export.conftest import TinyRun


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "pneumo export bundle runs/demo -o bundles/demo" in capsys.readouterr().out
    assert main(["bundle", "--help"]) == 0
    assert "pneumo edge build" in capsys.readouterr().out
    assert main(["bundle"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_says_build_on_target(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = pneumo(
        ["export", "engine", str(tiny_bundle / "model.onnx"), "--precision", "fp16", "-o", "x.engine"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "TensorRT is not installed" in err and "pneumo edge build bundle/" in err
    assert not Path("x.engine").exists()


def test_missing_run_and_small_calibration_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "b")]) == 1
    assert "nope: not found" in capsys.readouterr().err
    assert main(["calib", str(tmp_path), "-o", str(tmp_path / "c"), "--calib-size", "50"]) == 1
    assert "below 100 images" in capsys.readouterr().err
    assert main(["bundle", str(tmp_path), "-o", str(tmp_path / "b"), "--precisions", "fp16"]) == 1
    assert "must include fp32" in capsys.readouterr().err


@pytest.mark.tf
def test_onnx_from_a_bare_h5_needs_data(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.h5", "contract.json", "model_info.json"):
        shutil.copy(tiny_run.folder / name, bare / name)
    out = tmp_path / "out" / "model.onnx"
    assert main(["onnx", str(bare / "model.h5"), "-o", str(out)]) == 1
    assert "pass --data ROOT" in capsys.readouterr().err

    assert main(["onnx", str(bare / "model.h5"), "-o", str(out), "--data", str(tiny_run.data), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["onnx"]["parity"]["passed"] and report["onnx"]["parity"]["n_images"] == 48
    assert report["synthetic"] is True and report["warning"].startswith("SYNTHETIC")
    assert (out.parent / "export_report.json").is_file() and out.is_file()
    assert "onnx: ok" in captured.err and "next: pneumo export bundle" in captured.err

    assert main(["onnx", str(bare / "model.h5"), "-o", str(bare / "model.h5")]) == 1
    assert "never the model.h5" in capsys.readouterr().err
    assert (bare / "model.h5").read_bytes() == (tiny_run.folder / "model.h5").read_bytes()


@pytest.mark.tf
def test_calib_command_writes_a_set_and_refuses_to_overwrite(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calibration"
    assert main(["calib", str(tiny_run.folder), "-o", str(out), "--calib-size", "100", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["n"] == 100 and meta["split"] == "train" and (out / "calib.npy").is_file()
    assert main(["calib", str(tiny_run.folder), "-o", str(out), "--calib-size", "100"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
