"""Backend selection: auto picks the fastest that really loads and says which; named ones never fall back."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.base import Backend
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.backends.select import create_backend, select_backend
from edge_runtime.backends.tensorrt import TensorRTBackend
from edge_runtime.bundle import Bundle
from edge_runtime.edge_build import EdgeBuildConfig, run_edge_build
from edge_runtime.errors import BackendUnavailableError, BundleError
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle, images, run_onnx


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def test_auto_on_a_cpu_machine_picks_ort_cpu_and_says_why(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in _providers():
        pytest.skip("this ONNX Runtime has a CUDA provider; the CPU-only expectation does not apply")
    bundle = Bundle.open(tiny_bundle)
    with caplog.at_level(logging.INFO, logger="edge_runtime.backends.select"):
        choice = select_backend(bundle, "auto", "fp32")
    assert choice.name == "ort-cpu" and isinstance(choice.backend, OnnxRuntimeBackend)
    assert set(choice.skipped) == {"trt", "ort-trt", "ort-cuda"}
    assert "TensorRT is not installed" in choice.skipped["trt"] or "pycuda" in choice.skipped["trt"]
    assert "has no CUDAExecutionProvider" in choice.skipped["ort-cuda"]
    assert any("backend auto -> backend ort-cpu (fp32)" in r.getMessage() for r in caplog.records)
    with choice.backend as backend:
        assert backend.active_providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]


def test_create_backend_keeps_its_signature_and_returns_unopened(tiny_bundle: Path) -> None:
    backend = create_backend(Bundle.open(tiny_bundle), backend="auto", precision="fp32", threads=1)
    assert isinstance(backend, Backend)
    with pytest.raises(RuntimeError, match="not open"):
        backend.infer(np.zeros((1, 32, 32, 1), np.uint8))
    with backend:
        assert backend.infer(np.full((1, 32, 32, 1), 250, np.uint8))[0, 0] > 0.5


def test_named_backend_that_cannot_load_is_an_error(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    if "CUDAExecutionProvider" not in _providers():
        with (
            pytest.raises(BackendUnavailableError, match="ort-cuda.*onnxruntime-gpu"),
            create_backend(bundle, "ort-cuda"),
        ):
            pass
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tpu'"):
        create_backend(bundle, "tpu")
    with pytest.raises(BundleError, match="no fp16 model"):
        create_backend(bundle, "ort-cpu", "fp16")


def test_trt_without_an_engine_names_the_build_command(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt_double.install(monkeypatch)
    with pytest.raises(
        BackendUnavailableError,
        match=r"no fp16 engine for this device \(orin-sm87-trt10.3.0\).*pneumo edge build",
    ):
        create_backend(Bundle.open(tiny_bundle), "trt", "fp16")


def test_auto_prefers_a_built_engine_for_this_device(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete_bundle(tiny_bundle)
    trt_double.install(monkeypatch)
    report = run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp16",)))
    assert report.passed
    choice = select_backend(Bundle.open(tiny_bundle), "auto", "fp16")
    assert choice.name == "trt" and isinstance(choice.backend, TensorRTBackend) and choice.skipped == {}
    batch = images(3, seed=8)
    with choice.backend as backend:
        np.testing.assert_allclose(
            backend.infer(batch), run_onnx(tiny_bundle / "model.onnx", batch), atol=1e-6
        )
    # The same bundle on another Jetson model: the engine is refused and auto moves on, saying why.
    trt_double.install(monkeypatch, gpu_name="Xavier", compute_capability=(7, 2))
    other = select_backend(Bundle.open(tiny_bundle), "auto", "fp16")
    assert (
        other.name != "trt"
        and "no fp16 engine for this device (xavier-sm72-trt10.3.0)" in other.skipped["trt"]
    )
