"""Targets as same-run ratios: met, missed, not measured; the INT8-on-CPU note."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import evaluate_targets, measurement_notes


def row(backend: str, precision: str, batch: int, ips: float, device: str = "cpu") -> dict[str, Any]:
    return {
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "throughput_ips": ips,
        "device": device,
    }


def cold(backend: str, precision: str, seconds: float, rss: float) -> dict[str, Any]:
    return {"backend": backend, "precision": precision, "cold_start_s": seconds, "peak_rss_mb": rss}


def document() -> dict[str, Any]:
    return {
        "device": {"cpu_flags": ["avx2", "avx512_vnni"]},
        "bundle": {"synthetic": False},
        "rows": [
            row("keras", "fp32", 1, 10.0),
            row("ort-cpu", "fp32", 1, 68.0),
            row("ort-cpu", "int8", 1, 43.0),
            row("ort-cpu", "fp16", 1, 20.0),
        ],
        "cold_start": [cold("ort-cpu", "fp32", 0.5, 90.0), cold("keras", "fp32", 6.0, 300.0)],
        "trtexec": [],
    }


def test_statuses() -> None:
    targets = {t["key"]: t for t in evaluate_targets(document())}
    assert targets["cpu_ort_fp32_vs_keras_b1"]["status"] == "met"
    assert targets["cpu_ort_fp32_vs_keras_b1"]["ratio"] == 6.8
    assert targets["cpu_ort_int8_vs_keras_b1"]["status"] == "met"
    assert targets["cold_start_vs_tensorflow"]["status"] == "met"
    assert abs(targets["cold_start_vs_tensorflow"]["ratio"] - 0.5 / 6.0) < 1e-4
    assert targets["peak_memory_vs_tensorflow"]["status"] == "missed"  # 0.3 > 0.25
    assert targets["gpu_trt_fp16_vs_keras_b32"]["status"] == "not measured"
    assert "did not run" in targets["gpu_trt_fp16_vs_keras_b32"]["detail"]
    assert targets["trt_python_vs_trtexec"]["status"] == "not measured"


def test_gpu_target_needs_a_gpu_reference() -> None:
    doc = document()
    doc["rows"] += [
        row("keras", "fp32", 32, 100.0, device="cpu"),
        row("trt", "fp16", 32, 3000.0, device="gpu"),
    ]
    target = next(t for t in evaluate_targets(doc) if t["key"] == "gpu_trt_fp16_vs_keras_b32")
    assert target["status"] == "not measured" and "CPU" in target["detail"]


def test_trtexec_target_uses_the_worst_batch() -> None:
    doc = document()
    doc["trtexec"] = [
        {
            "precision": "fp16",
            "batch": 1,
            "throughput_ips": 1000.0,
            "python_runtime_throughput_ips": 800.0,
            "python_vs_trtexec": 0.8,
        },
        {
            "precision": "fp16",
            "batch": 32,
            "throughput_ips": 5000.0,
            "python_runtime_throughput_ips": 4900.0,
            "python_vs_trtexec": 0.98,
        },
    ]
    target = next(t for t in evaluate_targets(doc) if t["key"] == "trt_python_vs_trtexec")
    assert target["status"] == "missed" and target["ratio"] == 0.8


def test_notes_say_int8_and_fp16_are_not_faster_on_this_cpu() -> None:
    notes = measurement_notes(document())
    int8 = next(n for n in notes if n.startswith("INT8 Q/DQ on this CPU is no faster"))
    assert "avx512_vnni" in int8 and "x0.63 at batch 1" in int8
    assert any(n.startswith("FP16 on the CPU is slower") for n in notes)
    assert any("No TensorRT row" in n for n in notes)
