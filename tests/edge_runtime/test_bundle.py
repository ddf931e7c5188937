"""Bundle manifest: verification passes on a fresh bundle and names the file on tampering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import Bundle, verify_manifest
from edge_runtime.errors import BundleError
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
