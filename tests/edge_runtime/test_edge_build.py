"""``pneumo edge build``: manifest check, engine build/reuse per device, golden self-test, pass/fail table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import Bundle, write_manifest
from edge_runtime.cli import main
from edge_runtime.edge_build import (
    EdgeBuildConfig,
    edge_build_command,
    parse_precisions,
    run_edge_build,
)
from edge_runtime.errors import BackendUnavailableError, BundleError, EdgeError
from edge_runtime.golden import GoldenSet, compare_golden
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle


@pytest.fixture
def bundle_root(tiny_bundle: Path) -> Path:
    return complete_bundle(tiny_bundle)


def test_parse_precisions() -> None:
    assert parse_precisions("all") == ("fp32", "fp16", "int8")
    assert parse_precisions("int8,fp16,int8") == ("int8", "fp16")
    with pytest.raises(EdgeError, match="--precision"):
        parse_precisions("fp8")


def test_onnxruntime_self_test_passes_every_variant_anywhere(
    bundle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["build", str(bundle_root), "--precision", "all", "--backend", "ort-cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "manifest verified" in err and "SYNTHETIC" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("fp32", "fp16", "int8"))]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("fp32", "ort-cpu", "PASS"),
        ("fp16", "ort-cpu", "PASS"),
        ("int8", "ort-cpu", "PASS"),
    ]
    assert "next: pneumo edge predict" in err


def test_report_figures_are_measured(bundle_root: Path) -> None:
    report = run_edge_build(
        bundle_root, EdgeBuildConfig(precisions=("fp32", "fp16", "int8"), backend="ort-cpu")
    )
    fp32, fp16, int8 = report.results
    assert (
        fp32.max_abs_diff == 0.0 and fp32.decision_agreement == 1.0 and fp32.accuracy == 1.0 and fp32.n == 24
    )
    assert fp16.max_abs_diff is not None and 0 < fp16.max_abs_diff <= 5e-3
    assert int8.max_abs_diff is not None and 0 < int8.max_abs_diff <= 5e-2
    assert report.to_dict()["passed"] is True


def test_golden_comparison_fails_on_real_disagreement(bundle_root: Path) -> None:
    bundle = Bundle.open(bundle_root)
    golden = GoldenSet.load(bundle.root / "golden", bundle.contract.input_shape, bundle.info.threshold)
    shifted = golden.fp32_outputs.copy()
    far = int(np.argmax(np.abs(golden.fp32_outputs.reshape(-1) - 0.5)))
    shifted[far] = 1.0 - shifted[far]
    result = compare_golden(shifted, golden, bundle.info, "int8")
    assert not result.passed and result.flipped_outside_tolerance == [golden.files[far]]
    # A flip on an image whose reference sits within the tolerance of the threshold is allowed.
    near = golden.fp32_outputs.copy()
    near[far] = 0.5  # the reference: PNEUMONIA at threshold 0.5, 0 from it
    outputs = near.copy()
    outputs[far] = 0.49  # NORMAL: a flip, 0.01 inside the int8 tolerance
    borderline = compare_golden(
        outputs,
        GoldenSet(golden.images, golden.files, golden.true_labels, near, golden.tolerance, 0.5),
        bundle.info,
        "int8",
    )
    assert borderline.flipped == [golden.files[far]] and borderline.flipped_outside_tolerance == []
    assert borderline.passed


def test_failed_self_test_exits_nonzero_with_the_reason(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    complete_bundle(tiny_bundle, tolerance={"fp32": 1e-5, "fp16": 1e-9, "int8": 5e-2})
    code = main(["build", str(tiny_bundle), "--precision", "fp16", "--backend", "ort-cpu"])
    out, err = capsys.readouterr()
    assert code == 1 and "FAIL" in out and "fp16 FAIL: max |diff|" in err


def test_tampered_bundle_is_refused_naming_the_file(
    bundle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = bundle_root / "golden" / "images.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    assert main(["build", str(bundle_root), "--backend", "ort-cpu"]) == 1
    assert "golden/images.npy: sha256 does not match" in capsys.readouterr().err


def test_golden_images_must_match_their_recorded_hash(bundle_root: Path) -> None:
    bundle = Bundle.open(bundle_root)
    folder = bundle_root / "golden"
    meta = json.loads((folder / "golden.json").read_text())
    meta["images_sha256"] = "0" * 64
    (folder / "golden.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"images\.npy: sha256 does not match the images_sha256"):
        GoldenSet.load(folder, bundle.contract.input_shape, bundle.info.threshold)


def test_bundle_without_golden_set_cannot_be_self_tested(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no golden set"):
        run_edge_build(tiny_bundle, EdgeBuildConfig(backend="ort-cpu"))


def test_without_tensorrt_it_says_so_and_how_to_verify_anyway(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="only be built on the device"):
        run_edge_build(bundle_root, EdgeBuildConfig())
    assert main(["build", str(bundle_root), "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert (
        "TensorRT is not installed" in err
        and f"pneumo edge build {bundle_root} --precision all --backend ort-cpu" in err
    )


def test_trt_builds_then_reuses_engines_per_device(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    double = trt_double.install(monkeypatch)
    assert (
        main(["build", str(bundle_root), "--precision", "all", "--batch", "1,4,16", "--workspace", "256"])
        == 0
    )
    out, err = capsys.readouterr()
    assert "device orin-sm87-trt10.3.0" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith(("fp32", "fp16", "int8"))] == [
        "built"
    ] * 3
    folder = bundle_root / "engines" / "orin-sm87-trt10.3.0"
    # no calib_int8.cache: INT8 is built from the bundle's Q/DQ model, not calibrated (see below)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model_fp16.engine",
        "model_fp16.engine.json",
        "model_fp32.engine",
        "model_fp32.engine.json",
        "model_int8.engine",
        "model_int8.engine.json",
        "timing.cache",
    ]
    sidecar = json.loads((folder / "model_int8.engine.json").read_text())
    assert sidecar["build_path"] == "trt10-strongly-typed" and sidecar["onnx_file"] == "model_int8_qdq.onnx"
    assert (
        sidecar["rebuild_command"]
        == f"pneumo edge build {bundle_root} --precision int8 --batch 1,4,16 --workspace 256"
    )
    assert sidecar["profile"]["image"]["opt"] == [4, 32, 32, 1]
    assert len(double.builds) == 3
    Bundle.open(bundle_root)  # engines live outside the manifest: the bundle still verifies

    assert (
        main(["build", str(bundle_root), "--precision", "all", "--batch", "1,4,16", "--workspace", "256"])
        == 0
    )
    out, err = capsys.readouterr()
    assert [line.split()[2] for line in out.splitlines() if line.startswith(("fp32", "fp16", "int8"))] == [
        "reused"
    ] * 3
    assert len(double.builds) == 3, "nothing rebuilt"

    assert main(["build", str(bundle_root), "--precision", "fp16", "--batch", "1,8"]) == 0
    err = capsys.readouterr().err
    assert "batch profile [1, 4, 16] != [1, 8, 8]" in err and "workspace 256 MiB != 1024 MiB" in err
    assert len(double.builds) == 4


def test_default_int8_is_the_qdq_graph_export_measured_and_replaces_a_calibrated_engine(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    double = trt_double.install(monkeypatch, version="10.3.0")
    folder = bundle_root / "engines" / "orin-sm87-trt10.3.0"
    asked = run_edge_build(bundle_root, EdgeBuildConfig(precisions=("int8",), int8_source="calibrator"))
    assert asked.passed and double.builds[-1].calibrator_used, "asked for explicitly, the calibrator runs"
    calibrated = json.loads((folder / "model_int8.engine.json").read_text())
    assert calibrated["build_path"] == "trt10-builder-flags+entropy-calibrator"
    assert calibrated["calibration"]["why"] == "--int8-source calibrator asked"
    # The default (auto) does not reuse that engine: the bundle's Q/DQ model is the INT8 graph export
    # measured, so the calibrated engine is replaced by one built from it.
    said: list[str] = []
    caplog.clear()
    report = run_edge_build(bundle_root, EdgeBuildConfig(precisions=("int8",)), said.append)
    # nobody gave a calibration set: the bundle's calib.npy is not even read, nor warned about
    assert not [r for r in caplog.records if "calibration set given is not used" in r.getMessage()]
    assert report.passed and report.results[0].engine_action == "built"
    assert any(
        "build path trt10-builder-flags+entropy-calibrator != trt10-strongly-typed" in line
        and "export measured" in line
        for line in said
    ), said
    record = double.builds[-1]
    assert not record.calibrator_used and record.onnx_path.endswith("model_int8_qdq.onnx")
    sidecar = json.loads((folder / "model_int8.engine.json").read_text())
    assert sidecar["onnx_file"] == "model_int8_qdq.onnx" and sidecar["calibration"]["source"] == "qdq-onnx"
    assert sidecar["self_test"]["status"] == "pass"


def test_a_bundle_without_a_qdq_model_calibrates_its_calibration_set(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bundle_root / "model_int8_qdq.onnx").unlink()
    write_manifest(bundle_root)
    double = trt_double.install(monkeypatch, version="10.3.0")
    report = run_edge_build(bundle_root, EdgeBuildConfig(precisions=("int8",)))
    assert report.passed and double.builds[-1].calibrator_used
    sidecar = json.loads(
        (bundle_root / "engines" / "orin-sm87-trt10.3.0" / "model_int8.engine.json").read_text()
    )
    assert sidecar["onnx_file"] == "model.onnx" and "no Q/DQ model" in sidecar["calibration"]["why"]


def test_a_new_tensorrt_gets_its_own_engines(bundle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt_double.install(monkeypatch, version="10.3.0")
    assert run_edge_build(bundle_root, EdgeBuildConfig(precisions=("fp32",))).passed
    trt_double.install(monkeypatch, version="11.0.0")
    report = run_edge_build(bundle_root, EdgeBuildConfig(precisions=("fp16", "int8")))
    assert report.passed and report.device_key == "orin-sm87-trt11.0.0"
    assert [r.engine_action for r in report.results] == ["built", "built"]
    sidecar = json.loads(
        (bundle_root / "engines" / "orin-sm87-trt11.0.0" / "model_int8.engine.json").read_text()
    )
    assert sidecar["onnx_file"] == "model_int8_qdq.onnx" and sidecar["build_path"] == "trt11-strongly-typed"


def test_build_errors_become_rows_not_crashes(bundle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt_double.install(monkeypatch, dla_cores=0)
    report = run_edge_build(bundle_root, EdgeBuildConfig(precisions=("fp16",), dla_core=0))
    assert not report.passed and report.results[0].status == "error"
    assert "no DLA" in report.results[0].message


def test_manifest_rewrite_after_golden_change_is_caught_by_the_self_test(bundle_root: Path) -> None:
    meta_path = bundle_root / "golden" / "golden.json"
    meta = json.loads(meta_path.read_text())
    meta["fp32_outputs"] = [[1.0 - row[0]] for row in meta["fp32_outputs"]]
    meta_path.write_text(json.dumps(meta))
    write_manifest(bundle_root)
    report = run_edge_build(bundle_root, EdgeBuildConfig(backend="ort-cpu"))
    assert not report.passed and "decisions flipped" in report.results[0].message


def test_edge_build_command_reproduces_non_default_flags(bundle_root: Path) -> None:
    config = EdgeBuildConfig(precisions=("int8",), batch_sizes=(4,), dla_core=1, int8_source="qdq")
    assert edge_build_command(bundle_root, config) == (
        f"pneumo edge build {bundle_root} --precision int8 --batch 4 --dla 1 --int8-source qdq"
    )
    config = EdgeBuildConfig(precisions=("fp16",), batch_sizes=(2, 4), workspace_mib=512)
    assert edge_build_command(bundle_root, config) == (
        f"pneumo edge build {bundle_root} --precision fp16 --batch 2,4 --workspace 512"
    )


def test_a_dla_build_with_a_batch_range_is_refused_before_anything_is_built(
    bundle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert EdgeBuildConfig(dla_core=0).batch_sizes == (1,)
    assert main(["build", str(bundle_root), "--dla", "0", "--batch", "1,8,32"]) != 0
    assert "one fixed batch size" in capsys.readouterr().err
    assert not (bundle_root / "engines").exists()


def test_all_means_every_precision_the_bundle_has(
    bundle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Export may leave INT8 out (its golden self-test would be meaningless); the technician's default still works.
    (bundle_root / "model_int8_qdq.onnx").unlink()
    write_manifest(bundle_root)
    code = main(["build", str(bundle_root), "--backend", "ort-cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "int8: not in this bundle" in err
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("fp32", "fp16", "int8"))] == [
        "fp32",
        "fp16",
    ]
    # Asked for by name, a missing precision is still an error that says what to do.
    assert main(["build", str(bundle_root), "--precision", "int8", "--backend", "ort-cpu"]) == 1
    assert "no int8 model" in capsys.readouterr().err


def test_an_unwritable_engines_folder_is_named_before_building(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    double = trt_double.install(monkeypatch)
    # A file where engines/ should be: mkdir fails as it does on a read-only copy, even for root.
    (bundle_root / "engines").write_text("not a folder")
    assert main(["build", str(bundle_root), "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert f"{bundle_root / 'engines'}" in err and "cannot write engines here" in err
    assert "Traceback" not in err and double.builds == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "fp64"], "--precision 'fp64': expected fp32, fp16, int8"),
        (["--batch", "0,x"], "--batch '0,x': expected comma-separated integers"),
        (["--batch", "0"], "batch sizes must be within 1.."),
    ],
)
def test_bad_flag_values_are_usage_errors(
    bundle_root: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(bundle_root), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_precision_the_bundle_lacks_is_refused_before_any_build(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exported with --precisions fp32,int8: no FP16 graph, no FP16 golden tolerance. TensorRT 10 could build
    # FP16 from model.onnx with its builder flag (minutes on a Jetson), and the self-test would then fail.
    (bundle_root / "model_fp16.onnx").unlink()
    golden = bundle_root / "golden" / "golden.json"
    meta = json.loads(golden.read_text())
    del meta["tolerance"]["fp16"]
    golden.write_text(json.dumps(meta))
    write_manifest(bundle_root)
    double = trt_double.install(monkeypatch, version="10.3.0")
    assert main(["build", str(bundle_root), "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert (
        "this bundle has no fp16 model (model_fp16.onnx) and no fp16 tolerance in golden/golden.json; "
        "it carries fp32, int8" in err
    )
    assert f"pneumo edge build {bundle_root} --precision fp32,int8" in err
    assert double.builds == [] and not (bundle_root / "engines").exists()
    # 'all' builds what the bundle carries
    report = run_edge_build(
        bundle_root, EdgeBuildConfig(precisions=("fp32", "fp16", "int8"), only_in_bundle=True)
    )
    assert [r.precision for r in report.results] == ["fp32", "int8"] and report.passed


def test_a_model_without_a_golden_tolerance_is_refused_before_any_build(
    bundle_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = bundle_root / "golden" / "golden.json"
    meta = json.loads(golden.read_text())
    del meta["tolerance"]["int8"]
    golden.write_text(json.dumps(meta))
    write_manifest(bundle_root)
    double = trt_double.install(monkeypatch, version="10.3.0")
    with pytest.raises(
        BundleError,
        match=r"no int8 tolerance in golden/golden\.json to self-test it against; it carries fp32, fp16",
    ):
        run_edge_build(bundle_root, EdgeBuildConfig(precisions=("fp16", "int8")))
    assert double.builds == []
