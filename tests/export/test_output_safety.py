"""What ``pneumo export`` may replace: only its own earlier outputs, never an input, never a folder that
is not a bundle, never a file that makes a bundle fail verification; and what it tells the user next.

The bundle and onnx cases run the real export on the tiny run (TensorFlow); the engine cases need no
TensorFlow and run against the TensorRT test double (tests/edge_runtime/trt_double.py) where they build.
"""

from __future__ import annotations

import importlib.machinery
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import verify_manifest
from edge_runtime.contract import PreprocessContract
from export.bundle import StepResult, make_bundle
from export.calibration import CalibrationSet, save_calibration
from export.cli import edge_precision, main
from export.config import BundleConfig, Fp16Config, GoldenConfig
from export.errors import OutputExistsError, ParityError
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle, images
from tests.export.conftest import TinyRun

FP32_ONLY = BundleConfig(precisions=("fp32",), golden=GoldenConfig(size=8), bootstrap=0)


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- export bundle


@pytest.mark.tf
def test_overwrite_replaces_a_bundle_never_a_folder_that_only_has_a_manifest(
    tiny_run: TinyRun, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "a web app", "files": {}}\n')
    (site / "index.html").write_text("keep me")
    before = _contents(site)
    assert main(["bundle", str(tiny_run.folder), "-o", str(site), "--overwrite"]) == 1
    assert "not empty and not a bundle" in capsys.readouterr().err
    assert _contents(site) == before

    # a real bundle, with someone's file put in it: the bundle would go, and the file with it
    (tiny_bundle / "notes.txt").write_text("my notes")
    (tiny_bundle / "engines" / "orin").mkdir(parents=True)
    (tiny_bundle / "engines" / "orin" / "model_fp16.engine").write_bytes(b"built on the device")
    before = _contents(tiny_bundle)
    assert main(["bundle", str(tiny_run.folder), "-o", str(tiny_bundle), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "holds files its manifest.json does not list (notes.txt)" in err and "engines" not in err
    assert _contents(tiny_bundle) == before


@pytest.mark.tf
def test_a_folder_made_during_the_build_is_never_replaced(
    tiny_run: TinyRun, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    def someone_makes_it(step: StepResult) -> None:
        if step.name == "inputs":
            out.mkdir()
            (out / "mine.txt").write_text("keep me")

    with pytest.raises(OutputExistsError, match="appeared while the bundle was being built"):
        make_bundle(tiny_run.folder, out, FP32_ONLY, on_step=someone_makes_it)
    assert _contents(out) == {"mine.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "out"], "no staging folder left"

    # --overwrite: the bundle checked at the start has someone's file by the end; checked again, kept
    def someone_adds(step: StepResult) -> None:
        if step.name == "inputs":
            (tiny_bundle / "notes.txt").write_text("my notes")

    overwrite = BundleConfig(precisions=("fp32",), golden=GoldenConfig(size=8), bootstrap=0, overwrite=True)
    with pytest.raises(OutputExistsError, match=r"does not list \(notes\.txt\)"):
        make_bundle(tiny_run.folder, tiny_bundle, overwrite, on_step=someone_adds)
    assert (tiny_bundle / "notes.txt").read_text() == "my notes" and (
        tiny_bundle / "model_card.json"
    ).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "out"]


@pytest.mark.tf
def test_a_failed_step_names_the_bundle_folder_not_the_deleted_staging_folder(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    details: list[str] = []
    # a bound no FP16 graph meets: the fp16 step fails naming its file
    config = BundleConfig(
        precisions=("fp32", "fp16"), golden=GoldenConfig(size=8), bootstrap=0, fp16=Fp16Config(1e-12)
    )
    with pytest.raises(ParityError) as caught:
        make_bundle(tiny_run.folder, out, config, on_step=lambda step: details.append(step.detail))
    message = str(caught.value)
    assert message.startswith(f"{out / 'model_fp16.onnx'}: FP16 differs from FP32"), message
    assert ".building-" not in message and f"(the bundle was not installed: {out} is as it was)" in message
    assert details[-1] == message
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.tf
def test_the_next_step_names_a_precision_the_bundle_has(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    argv = ["bundle", str(tiny_run.folder), "-o", str(out), "--precisions", "fp32", "--golden", "8"]
    assert main([*argv, "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert f"on the Jetson:  pneumo edge build {out} --precision fp32\n" in err and "fp16" not in err


@pytest.mark.parametrize(
    ("precisions", "chosen"),
    [
        (("fp32", "fp16", "int8"), "fp16"),
        (("fp32", "fp16"), "fp16"),
        (("fp32", "int8"), "int8"),
        (("fp32",), "fp32"),
    ],
)
def test_the_suggested_edge_precision_is_one_of_the_bundle(precisions: tuple[str, ...], chosen: str) -> None:
    assert edge_precision(precisions) == chosen


# --------------------------------------------------------------------------- export onnx


@pytest.mark.tf
def test_onnx_replaces_only_its_own_earlier_outputs(
    tiny_run: TinyRun, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run.folder, run)
    inputs = _contents(run)
    out = tmp_path / "out" / "model.onnx"
    assert main(["onnx", str(run), "-o", str(out)]) == 0
    capsys.readouterr()
    written = _contents(out.parent)
    assert sorted(written) == ["export_report.json", "model.onnx"]

    assert main(["onnx", str(run), "-o", str(out)]) == 1
    assert f"{out}: exists; pass --overwrite" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere" / "model.onnx"
    assert (
        main(["onnx", str(run), "-o", str(elsewhere), "--report", str(out.with_name("export_report.json"))])
        == 1
    )
    assert "export_report.json: exists; pass --overwrite" in capsys.readouterr().err

    # a run's input is no report, --overwrite or not
    argv = ["onnx", str(run), "-o", str(elsewhere), "--report", str(run / "split.json"), "--overwrite"]
    assert main(argv) == 1
    assert "split.json: exists and is not a report of 'pneumo export onnx'" in capsys.readouterr().err
    # a bundle's files neither: the bundle would no longer verify
    bundle_before = _contents(tiny_bundle)
    assert main(["onnx", str(run), "-o", str(tiny_bundle / "model.onnx"), "--overwrite"]) == 2
    assert f"inside the bundle {tiny_bundle}" in capsys.readouterr().err
    assert _contents(tiny_bundle) == bundle_before and _contents(run) == inputs
    assert _contents(out.parent) == written and not elsewhere.parent.exists()

    assert main(["onnx", str(run), "-o", str(out), "--overwrite"]) == 0
    assert _contents(run) == inputs


# --------------------------------------------------------------------------- export engine


def _tensorrt_double(monkeypatch: pytest.MonkeyPatch) -> trt_double.TrtDouble:
    """The TensorRT double, findable by importlib.util.find_spec as an installed module is."""
    double = trt_double.install(monkeypatch)
    monkeypatch.setattr(sys.modules["tensorrt"], "__spec__", importlib.machinery.ModuleSpec("tensorrt", None))
    return double


def _engine(onnx: Path, output: Path, *flags: str) -> int:
    return main(["engine", str(onnx), "--precision", "fp16", "-o", str(output), *flags])


def test_engine_output_never_replaces_an_input_nor_lands_in_a_bundle_outside_engines(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = complete_bundle(tiny_bundle)
    before = _contents(bundle)
    for output, text in (
        (bundle / "model.onnx", "an input of this build"),
        (bundle / "model_fp16.onnx", "an input of this build"),
        (bundle / "golden" / "golden.json", "an input of this build"),
        (bundle / "model.engine", "outside its engines/ folder"),
        (bundle / "golden" / "x.engine", "outside its engines/ folder"),
    ):
        assert _engine(bundle / "model.onnx", output) == 2, output
        assert text in capsys.readouterr().err, output
    old = tmp_path / "old.engine"
    old.write_bytes(b"an engine from yesterday")
    assert _engine(bundle / "model.onnx", old) == 1
    assert f"{old}: exists; pass --overwrite" in capsys.readouterr().err
    assert _contents(bundle) == before and old.read_bytes() == b"an engine from yesterday"
    verify_manifest(bundle)


def test_an_engine_in_a_bundle_goes_under_engines_and_the_hint_names_a_working_bundle(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = complete_bundle(tiny_bundle)
    double = _tensorrt_double(monkeypatch)
    out = bundle / "engines" / "mine" / "model_fp16.engine"
    assert _engine(bundle / "model.onnx", out) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"next: pneumo edge build {bundle} --precision fp16 " in err and f"pneumo bench {bundle}" in err
    verify_manifest(bundle)  # engines/ is outside the manifest
    assert _engine(bundle / "model.onnx", out) == 1 and "pass --overwrite" in capsys.readouterr().err
    assert _engine(bundle / "model.onnx", out, "--overwrite") == 0
    assert len(double.builds) == 2

    # an ONNX file outside any bundle: nothing to bench, and the hint says so
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(bundle / "model.onnx", loose / "model.onnx")
    assert _engine(loose / "model.onnx", loose / "model_fp16.engine") == 0
    err = capsys.readouterr().err
    assert "pneumo bench" in err and f"pneumo bench {loose}" not in err and "take a bundle" in err


def _calibration_set(folder: Path, contract: PreprocessContract, checked: Any) -> Path:
    """A calibration set as calib.json describes it; ``checked``: its test_split_checked (None: absent)."""
    meta: dict[str, Any] = {"n": 24, "split": "train", "contract": contract.to_dict(), "images_sha256": ""}
    if checked is not None:
        meta["test_split_checked"] = checked
    save_calibration(CalibrationSet(images=images(24, seed=5), meta=meta), folder)
    return folder


def test_engine_calib_is_checked_against_the_models_contract_and_the_test_split(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    double = _tensorrt_double(monkeypatch)
    contract = PreprocessContract.load(tiny_bundle)
    onnx_path, out = tiny_bundle / "model.onnx", tmp_path / "model_int8.engine"

    def engine(model: Path, calib: Path, *flags: str) -> int:
        return main(
            ["engine", str(model), "--precision", "int8", "--calib", str(calib), "-o", str(out), *flags]
        )

    linear = PreprocessContract(height=32, width=32, interpolation="linear")
    assert engine(onnx_path, _calibration_set(tmp_path / "linear", linear, True)) == 1
    assert "made with another preprocessing contract" in capsys.readouterr().err
    for checked in (False, None):
        unchecked = _calibration_set(tmp_path / f"unchecked-{checked}", contract, checked)
        assert engine(onnx_path, unchecked) == 1
        err = capsys.readouterr().err
        assert f"test_split_checked is {checked if checked is not None else 'missing'}" in err
        assert "--allow-unchecked-calib" in err
    assert double.builds == [] and not out.exists()
    assert engine(onnx_path, unchecked, "--allow-unchecked-calib") == 0, capsys.readouterr().err
    assert double.builds[-1].calibrator_used  # no Q/DQ model in this bundle: calibrated on the set

    # an ONNX file alone: the contract comes from its pneumo.contract metadata
    loose = tmp_path / "loose"
    loose.mkdir()
    model = onnx.load(str(onnx_path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "pneumo.contract", '{"height": 32, "width": 32}'
    onnx.save(model, str(loose / "model.onnx"))
    checked_linear = _calibration_set(tmp_path / "linear-checked", linear, True)
    assert engine(loose / "model.onnx", checked_linear, "--overwrite") == 1
    assert "made with another preprocessing contract" in capsys.readouterr().err
    shutil.copy(onnx_path, loose / "bare.onnx")
    assert engine(loose / "bare.onnx", checked_linear, "--overwrite") == 1
    assert "no contract.json beside it and no pneumo.contract in its metadata" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(checked_linear / "calib.npy"), images(24, seed=5))


def test_engine_sidecar_never_replaces_a_file_that_is_not_an_engine_sidecar(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    double = _tensorrt_double(monkeypatch)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(tiny_bundle / "model.onnx", loose / "model.onnx")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"auc": 0.97}\n')
    # -o run/metrics is new, but its sidecar run/metrics.json is the run's
    assert _engine(loose / "model.onnx", run / "metrics") == 1
    assert f"{run / 'metrics.json'} (the engine sidecar -o writes): exists; pass --overwrite" in (
        capsys.readouterr().err
    )
    assert _engine(loose / "model.onnx", run / "metrics", "--overwrite") == 1
    assert "is not an engine sidecar" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == '{"auc": 0.97}\n' and sorted(run.iterdir()) == [
        run / "metrics.json"
    ]
    assert double.builds == []

    # an earlier build's sidecar, its engine gone: replaced with --overwrite only
    out = loose / "model_fp16.engine"
    assert _engine(loose / "model.onnx", out) == 0, capsys.readouterr().err
    out.unlink()
    assert _engine(loose / "model.onnx", out) == 1
    assert "model_fp16.engine.json (the engine sidecar -o writes): exists" in capsys.readouterr().err
    assert _engine(loose / "model.onnx", out, "--overwrite") == 0, capsys.readouterr().err
    assert out.is_file() and len(double.builds) == 2


def test_unchecked_bundle_calibration_advice_never_writes_into_the_bundle(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.bundle import write_manifest

    contract = PreprocessContract.load(tiny_bundle)
    _calibration_set(tiny_bundle / "calibration", contract, False)
    write_manifest(tiny_bundle)
    argv = [
        "engine",
        str(tiny_bundle / "model.onnx"),
        "--precision",
        "int8",
        "-o",
        str(tmp_path / "m.engine"),
    ]
    assert main([*argv, "--calib", str(tiny_bundle / "calibration")]) == 1
    err = capsys.readouterr().err
    assert "test_split_checked is False" in err and f"-o {tiny_bundle / 'calibration'}" not in err
    assert f"'pneumo export bundle RUN -o {tiny_bundle} --overwrite'" in err
    assert "'pneumo export calib RUN -o calibration/' and pass --calib calibration/" in err
    verify_manifest(tiny_bundle)

    # outside a bundle the set is rebuilt in place, which needs --overwrite
    loose = _calibration_set(tmp_path / "calibration", contract, False)
    assert main([*argv, "--calib", str(loose)]) == 1
    assert f"'pneumo export calib RUN -o {loose} --overwrite'" in capsys.readouterr().err


@pytest.mark.tf
def test_calib_refuses_an_output_inside_a_bundle(
    tiny_run: TinyRun, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _contents(tiny_bundle)
    for output, flags in ((tiny_bundle / "calibration", ()), (tiny_bundle, ("--overwrite",))):
        argv = ["calib", str(tiny_run.folder), "-o", str(output), "--calib-size", "100", *flags]
        assert main(argv) == 2, output
        err = capsys.readouterr().err
        assert f"{output}: inside the bundle {tiny_bundle}" in err, err
        assert f"'pneumo export bundle RUN -o {tiny_bundle} --overwrite'" in err
    assert _contents(tiny_bundle) == before
    verify_manifest(tiny_bundle)
