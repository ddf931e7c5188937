"""Bundle manifest: verification passes on a fresh bundle and names the file on tampering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import Bundle, verify_manifest
from edge_runtime.contract import ModelInfo
from edge_runtime.errors import BundleError, ContractError
from edge_runtime.fileio import sha256_file
from edge_runtime.predictor import Predictor


def test_fresh_bundle_verifies_and_predicts(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    assert bundle.precisions == ["fp32"]
    with OnnxRuntimeBackend(bundle.onnx_path("fp32")) as backend:
        predictor = Predictor(backend, bundle.info, bundle.file_sha256("model.onnx"))
        batch = np.stack([np.full((32, 32, 1), v, np.uint8) for v in (10, 245)])
        low, high = predictor.predict(batch, ["dark", "bright"])
    assert low.decision == "normal" and high.decision == "abnormal"
    assert high.label == "PNEUMONIA" and high.threshold == 0.5 and high.model_version == "tiny-test-1"
    assert high.to_dict()["warning"].startswith("SYNTHETIC")


def test_tampered_file_is_named(tiny_bundle: Path) -> None:
    path = tiny_bundle / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256"):
        verify_manifest(tiny_bundle)


def test_truncated_file_is_named(tiny_bundle: Path) -> None:
    path = tiny_bundle / "model_card.json"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(BundleError, match=r"model_card\.json: .*truncated"):
        verify_manifest(tiny_bundle)


def test_added_file_and_missing_manifest(tiny_bundle: Path) -> None:
    (tiny_bundle / "surprise.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="surprise.bin"):
        verify_manifest(tiny_bundle)
    (tiny_bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest missing"):
        Bundle.open(tiny_bundle)


def test_an_added_file_is_refused_with_what_to_do(tiny_bundle: Path) -> None:
    (tiny_bundle / "results.csv").write_text("file,probability\n")
    (tiny_bundle / "zz.txt").write_text("notes")
    with pytest.raises(BundleError) as refused:
        verify_manifest(tiny_bundle)
    assert str(refused.value) == (
        f"{tiny_bundle / 'results.csv'}: file is not in the manifest (added after export?) (and 1 more, e.g. "
        "zz.txt); move or delete it: the bundle keeps only the files its manifest lists, engines/ aside"
    )


def test_engines_folder_is_outside_manifest(tiny_bundle: Path) -> None:
    (tiny_bundle / "engines").mkdir()
    (tiny_bundle / "engines" / "x.engine").write_bytes(b"device specific")
    manifest = verify_manifest(tiny_bundle)  # engines are built on the target, after export
    assert "model.onnx" in manifest["files"] and not any(f.startswith("engines/") for f in manifest["files"])
    # The same file anywhere else in the bundle is an unlisted addition.
    (tiny_bundle / "golden").mkdir()
    (tiny_bundle / "golden" / "x.engine").write_bytes(b"device specific")
    with pytest.raises(BundleError, match="golden/x.engine"):
        verify_manifest(tiny_bundle)


@pytest.mark.parametrize("key", ["threshold", "synthetic"])
def test_model_info_without_threshold_or_synthetic_flag_is_refused(tiny_bundle: Path, key: str) -> None:
    info = json.loads((tiny_bundle / "model_info.json").read_text())
    del info[key]
    (tiny_bundle / "model_info.json").write_text(json.dumps(info))
    write_manifest_without_checks(tiny_bundle)
    with pytest.raises(ContractError, match=rf"model info lacks \['{key}'\]"):
        Bundle.open(tiny_bundle)


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "threshold None must be a number"), ("0.5", "threshold '0.5' must be a number"), (True, "True")],
)
def test_a_threshold_that_is_not_a_number_is_refused(tiny_bundle: Path, value: object, message: str) -> None:
    info = json.loads((tiny_bundle / "model_info.json").read_text())
    info["threshold"] = value
    (tiny_bundle / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(ContractError, match=message):
        ModelInfo.load(tiny_bundle)


def test_manifest_and_model_info_must_agree_on_synthetic_and_threshold(tiny_bundle: Path) -> None:
    info = json.loads((tiny_bundle / "model_info.json").read_text())
    info.update(synthetic=False, threshold=0.25)  # a demo model passed off as real, at another threshold
    (tiny_bundle / "model_info.json").write_text(json.dumps(info))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["decision_threshold"] = 0.5
    manifest["files"]["model_info.json"] = {
        "sha256": sha256_file(tiny_bundle / "model_info.json"),
        "bytes": (tiny_bundle / "model_info.json").stat().st_size,
    }
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=r"SYNTHETIC flag: manifest True.*decision threshold: manifest 0\.5"
    ):
        Bundle.open(tiny_bundle)


def test_a_hand_edit_that_re_hashes_cannot_move_the_threshold_past_the_model_card(tiny_bundle: Path) -> None:
    # as export writes it: the model card keeps the threshold with how it was chosen on validation
    card = {"model_version": "tiny-test-1", "synthetic": True, "threshold": {"value": 0.5, "rule": "youden"}}
    (tiny_bundle / "model_card.json").write_text(json.dumps(card))
    write_manifest_without_checks(tiny_bundle)
    Bundle.open(tiny_bundle)  # in agreement: opens
    for name in ("model_info.json", "manifest.json"):
        data = json.loads((tiny_bundle / name).read_text())
        key = "threshold" if name == "model_info.json" else "decision_threshold"
        (tiny_bundle / name).write_text(json.dumps({**data, key: 0.2}))
    write_manifest_without_checks(tiny_bundle)
    with pytest.raises(
        BundleError, match=r"decision threshold: model_card\.json 0\.5, model_info\.json 0\.2"
    ):
        Bundle.open(tiny_bundle)


def test_a_hand_edit_that_re_hashes_cannot_drop_the_synthetic_flag(tiny_bundle: Path) -> None:
    # model_info.json and the manifest agree; model_card.json still says synthetic
    for name in ("model_info.json", "manifest.json"):
        data = json.loads((tiny_bundle / name).read_text())
        (tiny_bundle / name).write_text(json.dumps({**data, "synthetic": False}))
    write_manifest_without_checks(tiny_bundle)
    with pytest.raises(BundleError, match=r"model_card\.json says the model was trained on synthetic images"):
        Bundle.open(tiny_bundle)


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ({"sha256": "ab" * 32}, "'sha256': 'abab"),
        ("not a table", "not a table"),
        ({"sha256": "x", "bytes": "12"}, "'12'"),
    ],
)
def test_a_malformed_manifest_entry_is_named_not_a_traceback(
    tiny_bundle: Path, entry: object, shown: str
) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = entry
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"manifest\.json: entry 'model\.onnx' is malformed .*{shown}"):
        Bundle.open(tiny_bundle)


def test_a_grown_file_is_not_called_truncated(tiny_bundle: Path) -> None:
    with (tiny_bundle / "contract.json").open("a") as handle:
        handle.write("\n\n")
    with pytest.raises(BundleError, match=r"contract\.json: .*larger"):
        verify_manifest(tiny_bundle)


def test_a_manifest_that_is_not_an_object_is_named(tiny_bundle: Path) -> None:
    (tiny_bundle / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match=r"manifest\.json: not a bundle manifest"):
        Bundle.open(tiny_bundle)


def write_manifest_without_checks(root: Path) -> None:
    """Re-hash every file the way export would, without loading model_info.json (which now fails)."""
    manifest = json.loads((root / "manifest.json").read_text())
    for rel in manifest["files"]:
        manifest["files"][rel] = {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
    (root / "manifest.json").write_text(json.dumps(manifest))
