"""Backend selection: auto picks the fastest that really loads and says which; named ones never fall back."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.base import Backend
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.backends.select import (
    GOLDEN_GATED_BACKENDS,
    create_backend,
    golden_gate,
    select_backend,
)
from edge_runtime.backends.tensorrt import TensorRTBackend
from edge_runtime.bundle import Bundle, write_manifest
from edge_runtime.edge_build import EdgeBuildConfig, run_edge_build
from edge_runtime.errors import BackendUnavailableError, BundleError, EngineMismatchError
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


def test_an_engine_of_another_precision_is_refused(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete_bundle(tiny_bundle)
    trt_double.install(monkeypatch)
    assert run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp32",))).passed
    folder = next((tiny_bundle / "engines").iterdir())
    # A technician "fixing" a missing FP16 engine by copying the FP32 one under its name.
    for suffix in (".engine", ".engine.json"):
        (folder / f"model_fp16{suffix}").write_bytes((folder / f"model_fp32{suffix}").read_bytes())
    with (
        pytest.raises(EngineMismatchError, match="precision: the engine is fp32, fp16 was asked for"),
        create_backend(Bundle.open(tiny_bundle), "trt", "fp16"),
    ):
        pass


def test_an_engine_whose_sidecar_names_no_model_of_this_bundle_is_refused(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete_bundle(tiny_bundle)
    trt_double.install(monkeypatch)
    assert run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp32",))).passed
    sidecar = next((tiny_bundle / "engines").iterdir()) / "model_fp32.engine.json"
    data = json.loads(sidecar.read_text())
    data["onnx_file"] = "../other-bundle/model.onnx"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=r"'\.\./other-bundle/model\.onnx'.*unknown origin"):
        create_backend(Bundle.open(tiny_bundle), "trt", "fp32")


def test_a_dla_engine_is_run_with_dla_and_pointed_at_without(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete_bundle(tiny_bundle)
    double = trt_double.install(monkeypatch, dla_cores=2)
    assert run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("int8",), dla_core=1)).passed
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BackendUnavailableError, match=r"model_int8_dla1\.engine.*add --dla 1"):
        create_backend(bundle, "trt", "int8")
    choice = select_backend(bundle, "auto", "int8", dla_core=1)
    assert choice.name == "trt" and isinstance(choice.backend, TensorRTBackend)
    with choice.backend as backend:
        assert backend.sidecar is not None and backend.sidecar.dla_core == 1  # type: ignore[attr-defined]
    assert double.runtime_dla_cores[-1] == 1, "the runtime must run the engine on the core it was built for"
    with pytest.raises(BackendUnavailableError, match="DLA cores run TensorRT engines only"):
        create_backend(bundle, "ort-cpu", "int8", dla_core=1)
    with pytest.raises(BackendUnavailableError, match=r"--dla 0"):
        create_backend(bundle, "trt", "int8", dla_core=0)


def test_an_engine_renamed_to_another_placement_is_refused(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete_bundle(tiny_bundle)
    trt_double.install(monkeypatch, dla_cores=2)
    assert run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp16",))).passed
    folder = next((tiny_bundle / "engines").iterdir())
    for suffix in ("", ".json"):  # the GPU engine copied under the DLA core 1 name
        (folder / f"model_fp16_dla1.engine{suffix}").write_bytes(
            (folder / f"model_fp16.engine{suffix}").read_bytes()
        )
    with pytest.raises(EngineMismatchError, match=r"runs on the GPU, DLA core 1 was asked for"):
        create_backend(Bundle.open(tiny_bundle), "trt", "fp16", dla_core=1)


def test_an_engine_without_a_passed_self_test_never_classifies(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Q/DQ int8 graph cannot meet a 1e-9 tolerance: the engine is built and fails its self-test
    complete_bundle(tiny_bundle, tolerance={"fp32": 1e-5, "fp16": 5e-3, "int8": 1e-9})
    trt_double.install(monkeypatch)
    report = run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp32", "int8"), int8_source="qdq"))
    assert [r.status for r in report.results] == ["pass", "fail"]
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(EngineMismatchError, match=r"did not pass the golden self-test \(fail: max \|diff\|"):
        create_backend(bundle, "trt", "int8")
    choice = select_backend(bundle, "auto", "int8")
    assert choice.name != "trt" and "golden self-test" in choice.skipped["trt"]
    with create_backend(bundle, "trt", "fp32") as backend:  # the engine that passed runs
        assert backend.infer(images(2)).shape[0] == 2
    # an engine from before self-tests were recorded is refused until 'edge build' tests it
    sidecar = next((tiny_bundle / "engines").iterdir()) / "model_fp32.engine.json"
    data = json.loads(sidecar.read_text())
    del data["self_test"]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="has not been through the golden self-test"):
        create_backend(bundle, "trt", "fp32")
    assert (
        run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=("fp32",))).results[0].engine_action
        == "reused"
    )
    create_backend(Bundle.open(tiny_bundle), "trt", "fp32")


def test_onnxruntime_trt_caches_each_model_and_precision_apart(tiny_bundle: Path) -> None:
    complete_bundle(tiny_bundle)
    bundle = Bundle.open(tiny_bundle)
    caches = {}
    for precision in ("fp32", "fp16", "int8"):
        # ungated, so not opened: no TensorRT needed to read the options it would open with
        backend = create_backend(bundle, "ort-trt", precision, golden_gated=())
        assert isinstance(backend, OnnxRuntimeBackend)
        caches[precision] = Path(backend.provider_options["trt_engine_cache_path"])
    assert caches["fp16"].name == f"fp16-{bundle.file_sha256('model.onnx')[:16]}", (
        "fp16 = the fp32 graph + flag"
    )
    assert caches["int8"].name == f"int8-{bundle.file_sha256('model_int8_qdq.onnx')[:16]}"
    assert len(set(caches.values())) == 3 and all(
        c.parent == bundle.engines_dir / "onnxruntime-trt" for c in caches.values()
    )


def _alter_golden_outputs(root: Path) -> list[str]:
    """Invert the recorded FP32 outputs (re-hashed, so the manifest passes): every clear decision flips."""
    meta_path = root / "golden" / "golden.json"
    meta = json.loads(meta_path.read_text())
    meta["fp32_outputs"] = [[1.0 - row[0]] for row in meta["fp32_outputs"]]
    meta_path.write_text(json.dumps(meta))
    write_manifest(root)
    return list(meta["files"])


def test_golden_gate_passes_the_bundle_it_was_exported_with(tiny_bundle: Path) -> None:
    bundle = Bundle.open(complete_bundle(tiny_bundle))
    for precision in ("fp32", "fp16", "int8"):
        backend = OnnxRuntimeBackend(
            bundle.onnx_path(precision), "ort-cpu", precision, expected_item_shape=bundle.contract.input_shape
        )
        assert golden_gate(backend, bundle, precision) is None
        assert backend.active_providers == [], "the gate closes what it opened"


def test_golden_gate_names_the_difference_and_the_flipped_files(tiny_bundle: Path) -> None:
    complete_bundle(tiny_bundle)
    files = _alter_golden_outputs(tiny_bundle)
    bundle = Bundle.open(tiny_bundle)
    backend = OnnxRuntimeBackend(bundle.onnx_path("fp32"), "ort-cpu", "fp32")
    problem = golden_gate(backend, bundle, "fp32")
    assert problem is not None
    assert re.search(r"failed the bundle's golden self-test \(max \|diff\| 0\.\d+ > tolerance 1e-05", problem)
    assert f"decisions flipped on {files[0]}" in problem and "more, on 24 images)" in problem
    # A precision golden.json has no tolerance for cannot be vouched for either.
    meta = json.loads((tiny_bundle / "golden" / "golden.json").read_text())
    del meta["tolerance"]["fp32"]
    (tiny_bundle / "golden" / "golden.json").write_text(json.dumps(meta))
    write_manifest(tiny_bundle)
    unchecked = golden_gate(backend, Bundle.open(tiny_bundle), "fp32")
    assert unchecked is not None and "no tolerance for fp32" in unchecked


def test_auto_skips_a_gated_backend_that_fails_the_golden_set(tiny_bundle: Path) -> None:
    complete_bundle(tiny_bundle)
    # ort-cpu gated here because it is the one provider that loads on this machine
    passing = select_backend(Bundle.open(tiny_bundle), "auto", "fp32", golden_gated={"ort-cpu"})
    assert passing.name == "ort-cpu" and "ort-cpu" not in passing.skipped
    _alter_golden_outputs(tiny_bundle)
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BackendUnavailableError, match=r"no backend can run") as caught:
        select_backend(bundle, "auto", "fp32", golden_gated={"ort-cpu"})
    assert re.search(r"ort-cpu: failed the bundle's golden self-test \(max \|diff\|", str(caught.value))
    assert "decisions flipped on golden_00.png" in str(caught.value)
    # named, it is refused, saying with which bundle, the numbers, and what to do instead
    with pytest.raises(EngineMismatchError) as refused:
        create_backend(bundle, "ort-cpu", "fp32", golden_gated={"ort-cpu"})
    message = str(refused.value)
    assert message.startswith(f"{tiny_bundle}: refusing to classify images with --backend ort-cpu (fp32)")
    assert "max |diff|" in message and "tolerance 1e-05" in message
    assert f"pneumo edge build {tiny_bundle} --precision fp32" in message
    # ort-cpu produced the golden outputs at export, the GPU providers' numerics were never measured:
    # by default only the latter are gated, so the gate adds nothing to CPU start-up
    assert "ort-cpu" not in GOLDEN_GATED_BACKENDS and {"ort-trt", "ort-cuda"} <= GOLDEN_GATED_BACKENDS
    assert select_backend(bundle, "auto", "fp32").name == "ort-cpu"


def test_a_contract_that_does_not_fit_the_model_is_refused_at_open(tiny_bundle: Path) -> None:
    contract = json.loads((tiny_bundle / "contract.json").read_text())
    contract.update(height=48, width=48)
    (tiny_bundle / "contract.json").write_text(json.dumps(contract))
    write_manifest(tiny_bundle)  # re-hashed: the manifest alone cannot catch this
    with (
        pytest.raises(BundleError, match=r"model takes 32x32x1 .* contract\.json says 48x48x1"),
        create_backend(Bundle.open(tiny_bundle), "ort-cpu"),
    ):
        pass
    contract.update(height=32, width=32, color="rgb")
    (tiny_bundle / "contract.json").write_text(json.dumps(contract))
    write_manifest(tiny_bundle)
    # auto does not try the next backend: no backend can fix the bundle itself.
    with pytest.raises(BundleError, match=r"model takes 32x32x1 .* contract\.json says 32x32x3"):
        select_backend(Bundle.open(tiny_bundle), "auto")
