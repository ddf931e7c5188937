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
from tests.without_modules import TRAINING_STACK, run_pneumo_without


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


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None, reason="needs the train extra")
def test_missing_run_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "b")]) == 1
    assert "nope: not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["calib", "RUN", "-o", "OUT/c", "--calib-size", "50"], "below 100 images"),
        (["bundle", "RUN", "-o", "OUT/b", "--precisions", "fp16"], "must include fp32"),
        (["bundle", "RUN", "-o", "OUT/b", "--golden", "1"], "--golden 1 must be within 2..512"),
        (["bundle", "RUN", "-o", "OUT/b", "--int8-target", "5"], "--int8-target 5.0 must be in (0, 1]"),
        (["onnx", "RUN", "-o", "OUT/model.h5"], "-o must name a new .onnx file"),
        (["onnx", "RUN", "-o", "OUT/model.onnx", "--opset", "99"], "--opset 99"),
    ],
)
def test_out_of_range_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    """Exit 2 before the run folder is read or anything is written."""
    args = [a.replace("RUN", str(tmp_path / "no-run")).replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(args) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_metrics_error_is_reported_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.metrics import MetricsError
    from export import cli

    def broken(args: object) -> int:
        raise MetricsError("no images to evaluate")

    monkeypatch.setattr(cli, "_cmd_calib", broken)
    assert main(["calib", str(tmp_path), "-o", str(tmp_path / "c")]) == 1
    assert "pneumo export calib: error: no images to evaluate" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["onnx", "bundle"])
def test_without_the_training_stack_export_says_how_to_install_it(tmp_path: Path, command: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "out" / ("model.onnx" if command == "onnx" else "bundle")
    done = run_pneumo_without(TRAINING_STACK, ["export", command, str(run), "-o", str(out)])
    assert done.returncode == 1, done.stderr
    assert "needs keras, tensorflow, tf2onnx, which are not installed here" in done.stderr
    assert "pip install -e '.[train]'" in done.stderr and "Traceback" not in done.stderr
    assert not out.parent.exists(), "nothing is created before the check"


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

    assert main(["onnx", str(bare / "model.h5"), "-o", str(bare / "model.h5")]) == 2
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
