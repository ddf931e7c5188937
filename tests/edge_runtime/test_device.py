"""Device facts and ``pneumo edge doctor``: parsers on real-format text, facts here, facts under the double."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import pytest

from edge_runtime.cli import main
from edge_runtime.device import (
    collect_device_facts,
    device_key,
    jetpack_for_l4t,
    loadable_onnxruntime_providers,
    opencv_capture_backends,
    opencv_has_gui,
    parse_nvpmodel,
    precision_readiness,
    read_l4t_release,
    tensorrt_and_gpu,
)
from edge_runtime.errors import BackendUnavailableError
from tests.edge_runtime import trt_double


def test_l4t_release_and_jetpack(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19\n"
    )
    assert read_l4t_release(release) == "R36.3.0"
    assert jetpack_for_l4t("R36.3.0") == "JetPack 6.x" and jetpack_for_l4t("R35.4.1") == "JetPack 5.x"
    assert read_l4t_release(tmp_path / "absent") is None and jetpack_for_l4t(None) is None


def test_nvpmodel_output() -> None:
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert parse_nvpmodel("NVPM WARN: ...\nNV Power Mode: 15W\n2\n") == "15W (mode 2)"
    assert parse_nvpmodel("nothing useful") is None


def test_opencv_build_information_here() -> None:
    info = cv2.getBuildInformation()
    backends = opencv_capture_backends(info)
    assert set(backends) == {"gstreamer", "v4l2", "ffmpeg"}
    assert backends["gstreamer"] == ("GStreamer:                   YES" in info)
    assert opencv_has_gui(info) == ("GUI:                           NONE" not in info)


def test_device_key_is_a_safe_folder_name() -> None:
    assert device_key("Orin", "8.7", "10.3.0") == "orin-sm87-trt10.3.0"
    assert (
        device_key("NVIDIA GeForce RTX 4090", "8.9", "10.7.0.23")
        == "nvidia-geforce-rtx-4090-sm89-trt10.7.0.23"
    )


def test_onnxruntime_providers_are_checked_by_loading() -> None:
    version, loaded, failed = loadable_onnxruntime_providers()
    assert version is not None and "CPUExecutionProvider" in loaded
    assert not set(loaded) & set(failed)


def test_facts_on_this_machine_say_what_is_missing() -> None:
    facts = collect_device_facts(check_providers=False)
    assert facts.python and facts.disk_free_mib is not None and facts.memory_total_mib
    readiness = precision_readiness(facts)
    assert [r.precision for r in readiness] == ["fp32", "fp16", "int8"]
    if facts.tensorrt_version is None:
        assert all(not r.tensorrt_ready for r in readiness)
        assert readiness[0].missing[0] == "TensorRT" and "system-site-packages" in readiness[0].fixes[0]
    else:  # a Jetson or a TensorRT host: FP32 needs nothing beyond TensorRT itself
        assert "TensorRT" not in readiness[0].missing


def test_facts_with_tensorrt_and_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    trt_double.install(monkeypatch, version="10.3.0", dla_cores=2)
    facts = collect_device_facts(check_providers=False)
    assert (facts.gpu_name, facts.compute_capability, facts.gpu_source) == ("Orin", "8.7", "pycuda")
    assert facts.tensorrt_version == "10.3.0" and facts.dla_cores == 2 and facts.platform_fast_int8 is True
    assert facts.device_key == "orin-sm87-trt10.3.0" and facts.cuda_driver_version == "12.6"
    assert all(r.tensorrt_ready for r in precision_readiness(facts))
    trt_double.install(monkeypatch, version="11.0.0")
    facts = collect_device_facts(check_providers=False)
    assert facts.platform_fast_fp16 is None, "TensorRT 11 removed platform_has_fast_fp16: unknown, not False"
    notes = {r.precision: r.notes for r in precision_readiness(facts)}
    assert any("Q/DQ" in n for n in notes["int8"]) and any("strongly typed" in n for n in notes["fp16"])


def test_a_tensorrt_too_old_to_build_is_not_called_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    trt_double.install(monkeypatch, version="8.6.2")  # JetPack 6.0
    readiness = precision_readiness(collect_device_facts(check_providers=False))
    assert not any(r.tensorrt_ready for r in readiness)
    assert readiness[0].missing == ("TensorRT 10 or later",) and "JetPack 6.1" in readiness[0].fixes[0]


def test_every_missing_tensorrt_piece_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(
        BackendUnavailableError, match="TensorRT is not installed.* AND pycuda is not installed"
    ):
        tensorrt_and_gpu()


def test_doctor_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for item in (
        "GPU",
        "TensorRT",
        "ONNX Runtime",
        "DLA cores",
        "L4T / JetPack",
        "power mode",
        "disk free",
        "memory",
        "cameras",
        "OpenCV",
        "precision",
    ):
        assert item in out
    assert main(["doctor", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "CPUExecutionProvider" in document["onnxruntime_providers"]
    assert [p["precision"] for p in document["precisions"]] == ["fp32", "fp16", "int8"]
    assert set(document["opencv_backends"]) == {"gstreamer", "v4l2", "ffmpeg"}


def test_the_int8_note_on_tensorrt_10_says_what_edge_build_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 10 builds INT8 from the Q/DQ model when the bundle has one; the note may not say it calibrates."""
    from edge_runtime.engine_from_onnx import plan_build

    trt_double.install(monkeypatch, version="10.3.0")
    facts = collect_device_facts(check_providers=False)
    [note] = {r.precision: r.notes for r in precision_readiness(facts)}["int8"]
    assert note.startswith("INT8 builds from the bundle's Q/DQ model (model_int8_qdq.onnx")
    assert (
        "only with 'pneumo edge build --int8-source calibrator', or for a bundle without a Q/DQ model" in note
    )
    # what the note says is what plan_build chooses
    assert plan_build("10.3.0", "int8", "auto", True, qdq_available=True).onnx_role == "int8_qdq"
    assert plan_build("10.3.0", "int8", "calibrator", True, qdq_available=True).calibrator
    assert plan_build("10.3.0", "int8", "auto", True, qdq_available=False).calibrator
