"""Engine build wiring against the TensorRT test double (see trt_double.py for what it cannot prove)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.engine_from_onnx import (
    BatchProfile,
    CalibrationData,
    EngineBuildConfig,
    OnnxSources,
    build_engine,
    parse_batch_sizes,
    plan_build,
)
from edge_runtime.engine_sidecar import EngineSidecar, sidecar_path
from edge_runtime.errors import BackendUnavailableError, EngineBuildError
from edge_runtime.fileio import sha256_file
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle, images


@pytest.fixture
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle.open(complete_bundle(tiny_bundle))


def _config(tmp_path: Path, **overrides: object) -> EngineBuildConfig:
    values: dict[str, object] = {
        "timing_cache": tmp_path / "eng" / "timing.cache",
        "calibration_cache": tmp_path / "eng" / "calib_int8.cache",
    }
    values.update(overrides)
    return EngineBuildConfig(**values)  # type: ignore[arg-type]


def test_plan_picks_the_path_from_the_version() -> None:
    fp16_10 = plan_build("10.3.0", "fp16")
    assert (fp16_10.onnx_role, fp16_10.strongly_typed, fp16_10.builder_flags) == ("fp32", False, ("FP16",))
    assert plan_build("10.3.0", "fp32").builder_flags == ()
    calib = plan_build("10.3.0", "int8", "calibrator", calibration_available=True)
    assert calib.calibrator and calib.builder_flags == ("INT8",) and calib.onnx_role == "fp32"
    assert calib.build_path == "trt10-builder-flags+entropy-calibrator"
    qdq = plan_build("10.3.0", "int8", calibration_available=True, qdq_available=True)
    assert qdq.onnx_role == "int8_qdq" and qdq.strongly_typed and not qdq.calibrator
    assert qdq.build_path == "trt10-strongly-typed"
    for precision, role in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8_qdq")):
        plan = plan_build("11.1.0", precision, calibration_available=True)
        assert (plan.onnx_role, plan.strongly_typed, plan.builder_flags, plan.calibrator) == (
            role,
            True,
            (),
            False,
        )
        assert plan.build_path == "trt11-strongly-typed"
    with pytest.raises(EngineBuildError, match="removed implicit INT8 calibration"):
        plan_build("11.0.0", "int8", "calibrator")
    with pytest.raises(EngineBuildError, match="older than 10"):
        plan_build("8.6.2", "fp16")


# (int8_source, Q/DQ model present, calibration set or valid cache at hand) -> INT8 source on TensorRT 10
TRT10_INT8 = [
    ("auto", True, True, "qdq"),  # the graph export measured wins over the calibrator
    ("auto", True, False, "qdq"),
    ("auto", False, True, "calibrator"),  # no Q/DQ model: calibrating is the only way to INT8
    ("auto", False, False, "qdq"),  # neither: the build fails naming model_int8_qdq.onnx
    ("calibrator", True, True, "calibrator"),  # asked for explicitly
    ("calibrator", True, False, "calibrator"),  # refused later without data (INT8 needs real data)
    ("qdq", True, True, "qdq"),
    ("qdq", False, True, "qdq"),
]


@pytest.mark.parametrize(("source", "qdq_model", "calibration", "expected"), TRT10_INT8)
def test_trt10_int8_source_decision_table(
    source: str, qdq_model: bool, calibration: bool, expected: str
) -> None:
    plan = plan_build("10.3.0", "int8", source, calibration, qdq_available=qdq_model)
    if expected == "calibrator":
        assert (plan.onnx_role, plan.strongly_typed, plan.builder_flags, plan.calibrator) == (
            "fp32",
            False,
            ("INT8",),
            True,
        )
    else:
        assert (plan.onnx_role, plan.strongly_typed, plan.builder_flags, plan.calibrator) == (
            "int8_qdq",
            True,
            (),
            False,
        )
    assert plan.int8_reason, "the sidecar records why this source was chosen"


@pytest.mark.parametrize(("qdq_model", "calibration"), [(True, True), (False, True), (False, False)])
def test_trt11_int8_is_always_the_qdq_model_and_refuses_the_calibrator(
    qdq_model: bool, calibration: bool
) -> None:
    plan = plan_build("11.0.0", "int8", "auto", calibration, qdq_available=qdq_model)
    assert (plan.onnx_role, plan.strongly_typed, plan.calibrator) == ("int8_qdq", True, False)
    with pytest.raises(EngineBuildError, match="removed implicit INT8 calibration"):
        plan_build("11.0.0", "int8", "calibrator", calibration, qdq_available=qdq_model)


def test_auto_int8_builds_the_measured_qdq_model_even_with_a_calibration_set(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch, version="10.3.0")
    calibration = CalibrationData.from_npy(bundle.root / "calibration" / "calib.npy")
    sidecar = build_engine(
        OnnxSources.from_bundle(bundle),
        tmp_path / "eng" / "int8.engine",
        _config(tmp_path, precision="int8"),
        calibration,
    )
    record = double.builds[-1]
    assert (
        record.strongly_typed
        and not record.calibrator_used
        and record.onnx_path.endswith("model_int8_qdq.onnx")
    )
    assert sidecar.onnx_file == "model_int8_qdq.onnx" and sidecar.build_path == "trt10-strongly-typed"
    assert sidecar.calibration is not None and sidecar.calibration["source"] == "qdq-onnx"
    assert "export measured" in sidecar.calibration["why"]
    # Without a Q/DQ model beside model.onnx, auto calibrates on the set it was given.
    without_qdq = OnnxSources(fp32=bundle.root / "model.onnx", fp16=bundle.root / "model_fp16.onnx")
    calibrated = build_engine(
        without_qdq, tmp_path / "eng" / "int8.engine", _config(tmp_path, precision="int8"), calibration
    )
    assert double.builds[-1].calibrator_used and calibrated.onnx_file == "model.onnx"
    assert calibrated.calibration is not None and "no Q/DQ model" in calibrated.calibration["why"]


def test_calibration_batches_leave_out_images_from_across_a_class_ordered_set() -> None:
    # 5 images of one class then 5 of the other (export's order); batches of 4 can use 8 of them
    ordered = np.repeat(np.arange(10, dtype=np.uint8), 4).reshape(10, 2, 2, 1)
    data = CalibrationData.from_array(ordered, "class-ordered set")
    used = np.concatenate([batch[:, 0, 0, 0] for batch in data.batches(4)])
    assert len(used) == data.usable_images(4) == 8 and len(set(used.tolist())) == 8
    assert (used < 5).sum() == (used >= 5).sum() == 4  # cutting the end would keep 5 and 3
    whole = np.concatenate(list(CalibrationData.from_array(ordered[:8], "divisible").batches(4)))
    np.testing.assert_array_equal(whole, ordered[:8])  # a set that divides is used as it is, in order


def test_batch_sizes_and_profile() -> None:
    assert parse_batch_sizes("8, 1,32") == (1, 8, 32)
    assert BatchProfile.from_sizes((1, 8, 32)) == BatchProfile(1, 8, 32)
    assert BatchProfile.from_sizes((4,)) == BatchProfile(4, 4, 4)
    assert BatchProfile(1, 8, 32).shapes((32, 32, 1))["max"] == [32, 32, 32, 1]
    for bad in ("", "0,4", "a,b", "1,99999"):
        with pytest.raises(EngineBuildError, match="--batch"):
            parse_batch_sizes(bad)
    with pytest.raises(EngineBuildError, match="precision"):
        EngineBuildConfig(precision="int4")
    with pytest.raises(EngineBuildError, match="workspace"):
        EngineBuildConfig(workspace_mib=1)


def test_without_tensorrt_the_error_says_how_to_get_it(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # an import of it raises ImportError
    with pytest.raises(BackendUnavailableError, match="JetPack.*system-site-packages"):
        build_engine(OnnxSources.from_bundle(bundle), tmp_path / "m.engine", EngineBuildConfig())


def test_fp16_on_trt10_sets_flags_profile_workspace_and_sidecar(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch, version="10.3.0")
    engine = tmp_path / "eng" / "model_fp16.engine"
    config = _config(tmp_path, precision="fp16", batch_sizes=(1, 8, 32), workspace_mib=512)
    sidecar = build_engine(
        OnnxSources.from_bundle(bundle), engine, config, rebuild_command="pneumo edge build B"
    )
    record = double.builds[-1]
    assert record.error is None
    assert record.flags == {"FP16"}, "FP16 set, TF32 cleared so fp32 layers stay full precision"
    assert not record.strongly_typed and record.onnx_path.endswith("model.onnx")
    assert record.workspace_bytes == 512 << 20
    assert record.profiles == [{"image": ((1, 32, 32, 1), (8, 32, 32, 1), (32, 32, 32, 1))}]
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == EngineSidecar.load(sidecar_path(engine)).to_dict() == sidecar.to_dict()
    assert on_disk["tensorrt_version"] == "10.3.0"
    assert (on_disk["gpu_name"], on_disk["compute_capability"]) == ("Orin", "8.7")
    assert on_disk["device_key"] == "orin-sm87-trt10.3.0"
    assert on_disk["precision"] == "fp16" and on_disk["builder_flags"] == ["FP16"]
    assert on_disk["build_path"] == "trt10-builder-flags"
    assert on_disk["profile"] == {
        "image": {"min": [1, 32, 32, 1], "opt": [8, 32, 32, 1], "max": [32, 32, 32, 1]}
    }
    assert on_disk["onnx_file"] == "model.onnx"
    assert on_disk["onnx_sha256"] == sha256_file(bundle.root / "model.onnx")
    assert on_disk["engine_sha256"] == sha256_file(engine)
    assert on_disk["build_time"].endswith("+00:00") and on_disk["build_seconds"] >= 0
    assert on_disk["rebuild_command"] == "pneumo edge build B"
    assert (
        "--fp16" in on_disk["trtexec_equivalent"]
        and "--memPoolSize=workspace:512M" in on_disk["trtexec_equivalent"]
    )
    assert "--minShapes=image:1x32x32x1" in on_disk["trtexec_equivalent"]
    assert sidecar.max_batch == 32


def test_timing_cache_is_written_and_reused_across_builds(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch)
    config = _config(tmp_path)
    first = build_engine(OnnxSources.from_bundle(bundle), tmp_path / "eng" / "a.engine", config)
    assert config.timing_cache is not None and config.timing_cache.is_file() and not first.timing_cache_reused
    second = build_engine(
        OnnxSources.from_bundle(bundle), tmp_path / "eng" / "b.engine", _config(tmp_path, precision="fp16")
    )
    assert second.timing_cache_reused and double.builds[-1].timing_cache_entries_before == 1
    # A cache from another GPU is refused by TensorRT (ignore_mismatch=False) and replaced, with a note.
    trt_double.install(monkeypatch, gpu_name="Xavier", compute_capability=(7, 2))
    third = build_engine(OnnxSources.from_bundle(bundle), tmp_path / "eng" / "c.engine", config)
    assert not third.timing_cache_reused and any("another device" in n for n in third.notes)


def test_trt11_builds_typed_graphs_strongly_typed(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch, version="11.1.0")
    sources = OnnxSources.from_bundle(bundle)
    fp16 = build_engine(sources, tmp_path / "eng" / "fp16.engine", _config(tmp_path, precision="fp16"))
    assert double.builds[-1].strongly_typed and double.builds[-1].flags == {"TF32"}
    assert fp16.onnx_file == "model_fp16.onnx" and fp16.build_path == "trt11-strongly-typed"
    assert fp16.builder_flags == [] and fp16.onnx_sha256 == sha256_file(bundle.root / "model_fp16.onnx")
    calibration = CalibrationData.from_npy(bundle.root / "calibration" / "calib.npy")
    int8 = build_engine(
        sources, tmp_path / "eng" / "int8.engine", _config(tmp_path, precision="int8"), calibration
    )
    assert int8.onnx_file == "model_int8_qdq.onnx" and not double.builds[-1].calibrator_used
    assert int8.calibration == {
        "source": "qdq-onnx",
        "onnx_file": "model_int8_qdq.onnx",
        "why": "TensorRT 11 builds INT8 from the Q/DQ model only",
    }
    with pytest.raises(EngineBuildError, match="removed implicit INT8 calibration"):
        build_engine(
            sources,
            tmp_path / "eng" / "x.engine",
            _config(tmp_path, precision="int8", int8_source="calibrator"),
            calibration,
        )


def test_trt11_fp16_without_the_typed_model_names_the_missing_file(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt_double.install(monkeypatch, version="11.0.0")
    with pytest.raises(EngineBuildError, match="model_fp16.onnx.*pneumo export bundle"):
        build_engine(
            OnnxSources.beside(tiny_bundle / "model.onnx"),
            tmp_path / "e.engine",
            _config(tmp_path, precision="fp16"),
        )


def test_int8_refuses_without_calibration_data(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch)
    with pytest.raises(EngineBuildError, match="INT8 needs real calibration data"):
        build_engine(
            OnnxSources.from_bundle(bundle),
            tmp_path / "eng" / "i.engine",
            _config(tmp_path, precision="int8", int8_source="calibrator"),
        )
    assert double.builds == [], "nothing was built"
    # With no calibration set, auto builds the Q/DQ model (explicit scales) instead of guessing.
    sidecar = build_engine(
        OnnxSources.from_bundle(bundle), tmp_path / "eng" / "i.engine", _config(tmp_path, precision="int8")
    )
    assert sidecar.onnx_file == "model_int8_qdq.onnx" and double.builds[-1].strongly_typed


def test_int8_calibrates_then_reuses_a_matching_cache_only(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch)
    sources = OnnxSources.from_bundle(bundle)
    calibration = CalibrationData.from_npy(bundle.root / "calibration" / "calib.npy")
    config = _config(tmp_path, precision="int8", int8_source="calibrator", calibration_batch_size=8)
    first = build_engine(sources, tmp_path / "eng" / "int8.engine", config, calibration)
    record = double.builds[-1]
    assert record.flags == {"INT8"} and record.calibrator_used and not record.calibration_cache_read
    assert record.calibration_profile == {"image": ((8, 32, 32, 1),) * 3}
    assert (record.calibration_batches, record.calibration_images) == (3, 24)
    assert first.calibration is not None and first.calibration["cache_reused"] is False
    assert first.calibration["calibration_sha256"] == sha256_file(bundle.root / "calibration" / "calib.npy")
    cache = config.calibration_cache
    assert cache is not None and cache.read_bytes().startswith(b"TRT-1030-EntropyCalibration2")
    info = json.loads(sidecar_path(cache).read_text())
    assert info["tensorrt_version"] == "10.3.0" and info["calibration_sha256"] == calibration.sha256
    assert info["onnx_sha256"] == sha256_file(bundle.root / "model.onnx") and info["images"] == 24

    second = build_engine(sources, tmp_path / "eng" / "int8.engine", config, calibration)
    assert double.builds[-1].calibration_cache_read and double.builds[-1].calibration_batches == 0
    assert second.calibration is not None and second.calibration["cache_reused"] is True
    # The cache is valid without the images too (same TensorRT, same model, intact file).
    build_engine(sources, tmp_path / "eng" / "int8.engine", config, None)
    assert double.builds[-1].calibration_cache_read

    other_set = CalibrationData.from_array(images(16, seed=9), "other set")
    third = build_engine(sources, tmp_path / "eng" / "int8.engine", config, other_set)
    assert not double.builds[-1].calibration_cache_read and double.builds[-1].calibration_batches == 2
    assert any("not used because it was calibrated on set" in n for n in third.notes)


def test_calibration_cache_from_another_tensorrt_is_never_used(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt_double.install(monkeypatch, version="10.3.0")
    sources = OnnxSources.from_bundle(bundle)
    calibration = CalibrationData.from_npy(bundle.root / "calibration" / "calib.npy")
    config = _config(tmp_path, precision="int8", int8_source="calibrator")
    build_engine(sources, tmp_path / "eng" / "int8.engine", config, calibration)
    double = trt_double.install(monkeypatch, version="10.4.0")
    with pytest.raises(EngineBuildError, match="written by TensorRT 10.3.0, this is 10.4.0"):
        build_engine(
            sources,
            tmp_path / "eng" / "int8.engine",
            _config(tmp_path, precision="int8", int8_source="calibrator"),
        )
    # auto, with only a stale cache, no images and no Q/DQ model: an error naming the missing model,
    # never the stale scales.
    builds = len(double.builds)
    without_qdq = OnnxSources(fp32=bundle.root / "model.onnx")
    with pytest.raises(EngineBuildError, match="model_int8_qdq.onnx.*missing"):
        build_engine(without_qdq, tmp_path / "eng" / "int8.engine", _config(tmp_path, precision="int8"))
    assert len(double.builds) == builds, "nothing was built"
    rebuilt = build_engine(sources, tmp_path / "eng" / "int8.engine", config, calibration)
    assert double.builds[-1].calibration_batches == 3 and not double.builds[-1].calibration_cache_read
    assert any("TensorRT 10.3.0" in n for n in rebuilt.notes)
    # A cache edited after it was written is refused too.
    assert config.calibration_cache is not None
    config.calibration_cache.write_bytes(b"TRT-1040-EntropyCalibration2\nedited\n")
    with pytest.raises(EngineBuildError, match="does not match the sha256"):
        build_engine(
            sources,
            tmp_path / "eng" / "int8.engine",
            _config(tmp_path, precision="int8", int8_source="calibrator"),
        )


def test_a_calibration_cache_pneumo_did_not_write_is_neither_used_nor_replaced(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file at the cache's name with no sidecar (a trtexec cache, say) is somebody's: refuse, touch nothing."""
    double = trt_double.install(monkeypatch)
    sources = OnnxSources.from_bundle(bundle)
    calibration = CalibrationData.from_npy(bundle.root / "calibration" / "calib.npy")
    config = _config(tmp_path, precision="int8", int8_source="calibrator")
    assert config.calibration_cache is not None
    config.calibration_cache.parent.mkdir(parents=True, exist_ok=True)
    foreign = b"TRT-1030-EntropyCalibration2\nmade by trtexec\n"
    config.calibration_cache.write_bytes(foreign)
    engine = tmp_path / "eng" / "int8.engine"
    with pytest.raises(
        EngineBuildError,
        match="missing or unreadable, so this is not a calibration cache pneumo wrote.*--calib-cache",
    ):
        build_engine(sources, engine, config, calibration)
    assert config.calibration_cache.read_bytes() == foreign
    assert not sidecar_path(config.calibration_cache).exists() and not engine.exists()
    assert double.builds == []


def test_calibration_set_smaller_than_a_batch_is_refused(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt_double.install(monkeypatch)
    tiny_set = CalibrationData.from_array(images(3), "three images")
    with pytest.raises(EngineBuildError, match="fewer than one calibration batch"):
        build_engine(
            OnnxSources.from_bundle(bundle),
            tmp_path / "eng" / "i.engine",
            _config(tmp_path, precision="int8", int8_source="calibrator", calibration_batch_size=8),
            tiny_set,
        )
    with pytest.raises(EngineBuildError, match="uint8"):
        CalibrationData.from_array(np.zeros((4, 32, 32, 1), np.float32))


def test_dla_absent_present_and_invalid(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = OnnxSources.from_bundle(bundle)
    trt_double.install(monkeypatch, dla_cores=0)
    with pytest.raises(EngineBuildError, match="no DLA.*AGX Orin and Orin NX have 2.*without --dla"):
        build_engine(sources, tmp_path / "eng" / "d.engine", _config(tmp_path, precision="fp16", dla_core=0))
    double = trt_double.install(monkeypatch, dla_cores=2)
    sidecar = build_engine(
        sources, tmp_path / "eng" / "d.engine", _config(tmp_path, precision="fp16", dla_core=1)
    )
    record = double.builds[-1]
    assert (record.device_type, record.dla_core) == ("DLA", 1) and "GPU_FALLBACK" in record.flags
    assert sidecar.dla_core == 1 and sidecar.gpu_fallback and "--useDLACore=1" in sidecar.trtexec_equivalent
    # The DLA has no dynamic shapes: one batch size (1 unless asked), min = opt = max.
    assert [(low[0], opt[0], high[0]) for low, opt, high in record.profiles[0].values()] == [(1, 1, 1)]
    assert _config(tmp_path, precision="fp16", dla_core=0, batch_sizes=(8,)).profile == BatchProfile(8, 8, 8)
    with pytest.raises(
        EngineBuildError, match=r"--dla 0 with --batch 1,8: .*one fixed batch size.*--batch 1"
    ):
        _config(tmp_path, precision="fp16", dla_core=0, batch_sizes=(1, 8))
    assert _config(tmp_path).batch_sizes == (1, 8, 32)  # on the GPU, a range
    with pytest.raises(EngineBuildError, match="DLA cores 0..1"):
        build_engine(sources, tmp_path / "eng" / "d.engine", _config(tmp_path, precision="fp16", dla_core=2))
    with pytest.raises(EngineBuildError, match="FP16 or INT8 only"):
        build_engine(sources, tmp_path / "eng" / "d.engine", _config(tmp_path, precision="fp32", dla_core=0))


def test_no_fast_fp16_is_an_error_not_a_silent_fp32_engine(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch, fast_fp16=False)
    with pytest.raises(EngineBuildError, match="no fast FP16"):
        build_engine(
            OnnxSources.from_bundle(bundle), tmp_path / "e.engine", _config(tmp_path, precision="fp16")
        )
    assert double.builds == []


def test_a_failed_build_raises_with_the_workspace_hint(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = trt_double.install(monkeypatch)
    monkeypatch.setattr(double.trt.Builder, "build_serialized_network", lambda self, network, config: None)
    engine = tmp_path / "eng" / "f.engine"
    with pytest.raises(EngineBuildError, match="returned no engine.*--workspace"):
        build_engine(OnnxSources.from_bundle(bundle), engine, _config(tmp_path))
    assert not engine.exists() and not sidecar_path(engine).exists()
