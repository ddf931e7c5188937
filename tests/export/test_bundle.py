"""``pneumo export bundle`` end to end on the tiny run: made, verified, readable by the edge runtime,
tampering detected naming the file; output-folder safety; the INT8 gate."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import Bundle, verify_manifest
from edge_runtime.contract import ModelInfo
from edge_runtime.errors import BundleError
from edge_runtime.golden import GoldenSet
from export.accuracy import require_int8_sensitivity
from export.bundle import make_bundle
from export.cli import main
from export.config import BundleConfig, GoldenConfig
from export.errors import AccuracyDropError, ExportError, OutputExistsError, RunFolderError
from export.golden import (
    FP16_CEILING,
    FP16_FLOOR,
    INT8_CEILING,
    INT8_FLOOR,
    golden_check,
    golden_tolerances,
)
from export.parity import ParityResult, onnx_outputs
from tests.export.conftest import TinyRun


@pytest.fixture(scope="module")
def made(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    # capsys is function-scoped; this fixture is module-scoped, so capture by hand.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            [
                "bundle",
                str(tiny_run.folder),
                "-o",
                str(out),
                "--calib-size",
                "128",
                "--golden",
                "12",
                "--bootstrap",
                "50",
                "--max-int8-drop",
                "10",
                "--tar",
                "--json",
            ],
            prog="pneumo export",
        )
    assert code == 0, stderr.getvalue()
    return out, json.loads(stdout.getvalue()), stderr.getvalue()


@pytest.mark.tf
def test_bundle_is_complete_and_verifies(made: tuple[Path, dict, str]) -> None:
    root, report, log = made
    manifest = verify_manifest(root)
    for name in (
        "model.onnx",
        "model_fp16.onnx",
        "model_int8_qdq.onnx",
        "contract.json",
        "model_info.json",
        "model_card.json",
        "export_report.json",
        "calibration/calib.npy",
        "calibration/calib.json",
        "golden/images.npy",
        "golden/golden.json",
    ):
        assert name in manifest["files"], name
    assert manifest["synthetic"] is True and manifest["warning"].startswith("SYNTHETIC")
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]
    bundle = Bundle.open(root)
    assert bundle.precisions == ["fp32", "fp16", "int8"] and bundle.info.synthetic

    assert report["onnx"]["parity"]["max_abs_diff"] < 1e-4 and report["onnx"]["parity"]["passed"]
    assert report["onnx"]["graph"]["input"]["dtype"] == "uint8" and report["onnx"]["opset"] == 17
    assert report["calibration"]["split"] == "train" and report["calibration"]["n"] == 128
    assert report["int8"]["qdq"]["zero_points_all_zero"]
    accuracy = report["accuracy"]
    assert accuracy["n_images"] == 48 and {"fp32", "fp16", "int8"} <= set(accuracy)
    assert accuracy["fp32"]["accuracy"] > 0.8, "the tiny model should have learnt the synthetic opacity"
    assert accuracy["int8_gate_passed"] is True
    assert report["synthetic"] is True and report["versions"]["tf2onnx"] == "1.17.0"
    assert all(check["passed"] for check in report["golden"]["onnxruntime_self_check"].values())

    for step in (
        "inputs",
        "onnx",
        "calibration",
        "fp16",
        "int8",
        "accuracy",
        "golden",
        "records",
        "manifest",
    ):
        assert f"  {step}" in log and "FAILED" not in log
    assert "pneumo edge build" in log and "pneumo edge predict" in log and "SYNTHETIC" in log

    archive = root.with_name("tiny.tar.gz")
    with tarfile.open(archive) as tar:
        assert "tiny/manifest.json" in tar.getnames()


@pytest.mark.tf
def test_golden_set_matches_its_own_onnx(made: tuple[Path, dict, str]) -> None:
    root, _, _ = made
    info = ModelInfo.load(root)
    golden = GoldenSet.load(root / "golden", (32, 32, 1), info.threshold)  # checks images_sha256 too
    images, meta = golden.images, json.loads((root / "golden" / "golden.json").read_text())
    assert images.dtype == np.uint8 and images.shape == (12, 32, 32, 1)
    assert meta["split"] == "test" and sorted(set(meta["true_labels"])) == ["NORMAL", "PNEUMONIA"]
    assert meta["true_labels"].count("NORMAL") == 6
    assert meta["decision_threshold"] == info.threshold
    assert set(meta["tolerance"]) == {"fp32", "fp16", "int8"} and meta["tolerance"]["fp32"] == 1e-4
    for precision, name in (
        ("fp32", "model.onnx"),
        ("fp16", "model_fp16.onnx"),
        ("int8", "model_int8_qdq.onnx"),
    ):
        check = golden_check(onnx_outputs(root / name, images), meta, precision, info)
        assert check["passed"], check


@pytest.mark.tf
def test_tampering_is_detected_naming_the_file(made: tuple[Path, dict, str], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(made[0], copy)
    golden = copy / "golden" / "golden.json"
    golden.write_text(golden.read_text().replace('"decision_threshold": 0.5', '"decision_threshold": 0.1'))
    with pytest.raises(BundleError, match=r"golden/golden\.json: sha256 does not match"):
        verify_manifest(copy)


@pytest.mark.tf
def test_output_folder_safety(
    made: tuple[Path, dict, str], tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = made[0]
    before = (root / "manifest.json").read_bytes()
    code = main(["bundle", str(tiny_run.folder), "-o", str(root)], prog="pneumo export")
    assert code == 1 and "not empty; pass --overwrite" in capsys.readouterr().err
    assert (root / "manifest.json").read_bytes() == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    code = main(["bundle", str(tiny_run.folder), "-o", str(other), "--overwrite"], prog="pneumo export")
    assert code == 1 and "not a bundle" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep me"

    code = main(
        ["bundle", str(tiny_run.folder), "-o", str(tiny_run.folder), "--overwrite"], prog="pneumo export"
    )
    assert code == 1 and "run folder" in capsys.readouterr().err


@pytest.mark.tf
def test_overwrite_replaces_a_bundle_and_missing_split_is_named(
    made: tuple[Path, dict, str], tiny_run: TinyRun, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(made[0], copy)
    (copy / "engines").mkdir()
    result = make_bundle(
        tiny_run.folder,
        copy,
        BundleConfig(precisions=("fp32",), golden=GoldenConfig(size=8), bootstrap=0, overwrite=True),
    )
    assert verify_manifest(copy)["precisions"] == ["fp32"] and result.archive is None
    assert not (copy / "model_int8_qdq.onnx").exists() and not (copy / "engines").exists()
    assert not list(tmp_path.glob(".bundle.*")), "no staging or old folder left behind"

    run = tmp_path / "run"
    shutil.copytree(tiny_run.folder, run)
    (run / "split.json").unlink()
    with pytest.raises(RunFolderError, match=r"split\.json: missing"):
        make_bundle(run, tmp_path / "other", BundleConfig(precisions=("fp32",)))
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.*"))


@pytest.mark.tf
def test_an_old_archive_in_the_way_is_refused_before_anything_is_built(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    old = tmp_path / "bundle.tar.gz"
    old.write_bytes(b"the previous model's archive")
    with pytest.raises(OutputExistsError, match=r"bundle\.tar\.gz: exists; pass --overwrite"):
        make_bundle(tiny_run.folder, tmp_path / "bundle", BundleConfig(precisions=("fp32",), tar=True))
    # no new bundle beside the old archive, no staging folder, the archive untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]
    assert old.read_bytes() == b"the previous model's archive"


def test_int8_gate_fails_on_a_sensitivity_drop(tmp_path: Path) -> None:
    results = {"fp32": {"sensitivity": 0.95, "n_images": 600}, "int8": {"sensitivity": 0.92, "n_images": 600}}
    with pytest.raises(
        AccuracyDropError, match=r"model_int8_qdq\.onnx: INT8 sensitivity 0\.920 is 3\.0 points below"
    ):
        require_int8_sensitivity(results, 2.0, tmp_path / "model_int8_qdq.onnx")
    assert require_int8_sensitivity(results, 3.5, tmp_path / "model_int8_qdq.onnx") == pytest.approx(3.0)


def _parity(diff: float) -> ParityResult:
    return ParityResult(
        reference="fp32",
        candidate="x",
        images="golden set",
        n_images=32,
        max_abs_diff=diff,
        mean_abs_diff=diff / 4,
        decision_agreement=1.0,
        decisions_differ=0,
        threshold=0.5,
        tolerance=None,
        passed=True,
    )


def test_golden_tolerance_is_headroom_over_ort_between_floor_and_ceiling() -> None:
    config = GoldenConfig()
    tiny = golden_tolerances(config, {"fp16": _parity(1e-4), "int8": _parity(1e-3)})
    assert tiny == {"fp32": config.fp32_tolerance, "fp16": FP16_FLOOR, "int8": INT8_FLOOR}
    middle = golden_tolerances(config, {"int8": _parity(0.04)})
    assert middle["int8"] == pytest.approx(0.08)
    near = golden_tolerances(config, {"int8": _parity(0.1)})
    assert near["int8"] == INT8_CEILING  # 2 x 0.1 would be 0.2: capped


def test_a_variant_beyond_the_ceiling_is_refused_with_what_to_do() -> None:
    # The synthetic demo's INT8 once differed by 0.45 and got a meaningless tolerance of 0.9.
    with pytest.raises(ExportError, match=r"INT8.*0\.45.*--calib-size.*--precisions fp32,fp16"):
        golden_tolerances(GoldenConfig(), {"int8": _parity(0.45)})
    with pytest.raises(ExportError, match="FP16"):
        golden_tolerances(GoldenConfig(), {"fp16": _parity(FP16_CEILING * 2)})
