"""TensorRT execution backend: buffer flow and device-match refusal against the test double; pycuda on a GPU.

The double runs the engine's embedded ONNX with ONNX Runtime, so outputs are
compared with ONNX Runtime on the same file; that checks the buffer wiring
(shapes, offsets, copies, padding), not TensorRT numerics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.tensorrt import TensorRTBackend
from edge_runtime.bundle import Bundle
from edge_runtime.engine_from_onnx import EngineBuildConfig, OnnxSources, build_engine
from edge_runtime.engine_sidecar import sidecar_path
from edge_runtime.errors import EngineMismatchError, InferenceError
from edge_runtime.fileio import sha256_file
from edge_runtime.predictor import Predictor
from tests.conftest import skip_or_fail_when_required
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle, images, run_onnx

REBUILD = "pneumo edge build /data/bundle --precision fp32 --batch 1,8,32"


@pytest.fixture
def built(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bundle, Path, trt_double.TrtDouble]:
    bundle = Bundle.open(complete_bundle(tiny_bundle))
    double = trt_double.install(monkeypatch)
    engine = tmp_path / "engines" / "model_fp32.engine"
    build_engine(
        OnnxSources.from_bundle(bundle),
        engine,
        EngineBuildConfig(batch_sizes=(1, 8, 32)),
        rebuild_command=REBUILD,
    )
    return bundle, engine, double


def test_execution_matches_onnxruntime_and_frees_everything(
    built: tuple[Bundle, Path, trt_double.TrtDouble],
) -> None:
    bundle, engine, double = built
    batch = images(5, seed=4)
    expected = run_onnx(bundle.root / "model.onnx", batch)
    before = double.live_allocations
    with TensorRTBackend(engine, expected_onnx_sha256=sha256_file(bundle.root / "model.onnx")) as backend:
        assert backend.max_batch == 32 and backend.precision == "fp32" and backend.name == "trt"
        assert double.live_allocations == before + 2, "one device buffer for the input, one for the output"
        outputs = backend.infer(batch)
        assert backend.last_gpu_ms is not None and backend.last_gpu_ms >= 0
        assert double.executions[-1]["shapes"] == {"image": (5, 32, 32, 1)}
        assert double.context_depth == 0, "the context is pushed only around each call"
        single = backend.infer(batch[:1])
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    np.testing.assert_allclose(single, expected[:1], atol=1e-6)
    assert double.live_allocations == before and double.context_depth == 0


def test_predictor_splits_batches_over_the_profile_max(
    built: tuple[Bundle, Path, trt_double.TrtDouble],
) -> None:
    bundle, engine, double = built
    batch = images(40, seed=5)
    with TensorRTBackend(engine) as backend:
        results = Predictor(backend, bundle.info, "sha").predict(batch, [f"img{i}" for i in range(40)])
        with pytest.raises(InferenceError, match="over this engine's profile maximum of 32"):
            backend.infer(batch)
        with pytest.raises(InferenceError, match="expected uint8"):
            backend.infer(batch[:2].astype(np.float32))
    assert [s["shapes"]["image"][0] for s in double.executions[-2:]] == [32, 8]
    expected = run_onnx(bundle.root / "model.onnx", batch).reshape(-1)
    np.testing.assert_allclose([r.probability for r in results], expected, atol=1e-5)
    assert {r.backend for r in results} == {"trt"}


def test_batch_below_profile_minimum_is_padded(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = Bundle.open(complete_bundle(tiny_bundle))
    double = trt_double.install(monkeypatch)
    engine = tmp_path / "m.engine"
    build_engine(OnnxSources.from_bundle(bundle), engine, EngineBuildConfig(batch_sizes=(4, 8)))
    batch = images(2, seed=6)
    with TensorRTBackend(engine) as backend:
        outputs = backend.infer(batch)
    assert double.executions[-1]["shapes"] == {"image": (4, 32, 32, 1)}
    assert outputs.shape == (2, 1)
    np.testing.assert_allclose(outputs, run_onnx(bundle.root / "model.onnx", batch), atol=1e-6)


@pytest.mark.parametrize(
    ("install", "problem"),
    [
        (
            {"gpu_name": "Xavier", "compute_capability": (7, 2)},
            r"GPU: built on 'Orin', this device has 'Xavier'; compute capability",
        ),
        ({"compute_capability": (8, 6)}, r"compute capability: built for 8.7, this GPU is 8.6"),
        ({"version": "10.4.0"}, r"TensorRT: built with 10.3.0, installed is 10.4.0"),
    ],
)
def test_engine_for_another_device_is_refused_with_the_rebuild_command(
    built: tuple[Bundle, Path, trt_double.TrtDouble],
    monkeypatch: pytest.MonkeyPatch,
    install: dict[str, object],
    problem: str,
) -> None:
    _bundle, engine, _double = built
    trt_double.install(monkeypatch, **install)  # type: ignore[arg-type]
    with pytest.raises(EngineMismatchError, match=problem) as excinfo:
        TensorRTBackend(engine).open()
    assert "not portable" in str(excinfo.value) and str(excinfo.value).endswith(
        f"Rebuild it on this device with: {REBUILD}"
    )


def test_engine_for_another_model_or_a_replaced_engine_is_refused(
    built: tuple[Bundle, Path, trt_double.TrtDouble],
) -> None:
    bundle, engine, double = built
    with pytest.raises(EngineMismatchError, match=r"model: built from ONNX sha256 .*rebuild_here"):
        TensorRTBackend(engine, expected_onnx_sha256="0" * 64, rebuild_command="rebuild_here").open()
    engine.write_bytes(engine.read_bytes() + b" ")
    with pytest.raises(EngineMismatchError, match="does not match the sha256 its sidecar recorded"):
        TensorRTBackend(engine).open()
    assert double.live_allocations == 0


def test_missing_or_foreign_sidecar_is_refused(built: tuple[Bundle, Path, trt_double.TrtDouble]) -> None:
    _bundle, engine, _double = built
    path = sidecar_path(engine)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema": 99}))
    with pytest.raises(EngineMismatchError, match="schema 99"):
        TensorRTBackend(engine).open()
    path.unlink()
    with pytest.raises(EngineMismatchError, match="sidecar missing"):
        TensorRTBackend(engine).open()


@pytest.mark.gpu
def test_pycuda_buffer_layer_on_a_real_gpu() -> None:
    """Page-locked host buffers, device buffers, async copies on one stream and event timing, for real."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]
    except ImportError:
        skip_or_fail_when_required("pycuda not installed (pip install 'pneumo-edge[gpu]')")
    try:
        cuda.init()
        device = cuda.Device(0)
    except Exception as exc:  # noqa: BLE001 - any CUDA failure: no usable GPU here (a failure under make test-trt)
        skip_or_fail_when_required(f"no usable CUDA GPU: {exc}")
    context = device.retain_primary_context()
    context.push()
    try:
        host_in = cuda.pagelocked_empty((8, 32, 32, 1), np.uint8)
        host_in[...] = images(8, seed=7)
        host_out = cuda.pagelocked_empty((8, 32, 32, 1), np.uint8)
        device_buffer = cuda.mem_alloc(host_in.nbytes)
        stream, start, end = cuda.Stream(), cuda.Event(), cuda.Event()
        start.record(stream)
        cuda.memcpy_htod_async(device_buffer, host_in, stream)
        cuda.memcpy_dtoh_async(host_out, device_buffer, stream)
        end.record(stream)
        stream.synchronize()
        assert np.array_equal(host_in, host_out)
        assert end.time_since(start) >= 0.0
        device_buffer.free()
    finally:
        context.pop()
        context.detach()
