"""The project's performance targets, each judged as a ratio of two rows from the same run.

A target whose rows did not run here, or whose speed rows have no accuracy on
test images (a fast wrong model is not a result), is "not measured" with the
reason, never "met"; one whose reduced-precision row (INT8, FP16) scores outside
the INT8 accuracy budget of FP32 on the same images is "not judged" with the
difference; a verdict from a row with unstable timing says so in its status.
Ratios are always same-run: a speedup against a Keras number from another day
or machine would say nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import UNSTABLE_CV

# INT8 counts as "no faster" when within this factor of FP32.
_NO_FASTER = 1.05
#: Issue 6's budget for INT8: accuracy within this many points of FP32 on the same test images (README,
#: "The best small model"; tests/export/test_real_data.py asserts it on the real test split).
INT8_ACCURACY_POINTS = 1.0


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    kind: str  # "throughput", "cold_start", "memory", "trtexec"
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    batch: int | None
    threshold: float
    #: ">=": the ratio must reach the threshold; "<=": it must stay below it
    direction: str
    where: str  # "cpu" or "gpu"


TARGETS = (
    Target(
        "cpu_ort_fp32_vs_keras_b1",
        "ONNX Runtime FP32 >= 5x Keras throughput at batch 1 (CPU)",
        "throughput",
        ("ort-cpu", "fp32"),
        ("keras", "fp32"),
        1,
        5.0,
        ">=",
        "cpu",
    ),
    Target(
        "cpu_ort_int8_vs_keras_b1",
        "ONNX Runtime INT8 >= 3x Keras throughput at batch 1 (CPU)",
        "throughput",
        ("ort-cpu", "int8"),
        ("keras", "fp32"),
        1,
        3.0,
        ">=",
        "cpu",
    ),
    Target(
        "cold_start_vs_tensorflow",
        "edge runtime cold start <= 1/5 of TensorFlow/Keras",
        "cold_start",
        ("edge", ""),
        ("keras", "fp32"),
        None,
        0.2,
        "<=",
        "any",
    ),
    Target(
        "peak_memory_vs_tensorflow",
        "edge runtime peak host memory <= 1/4 of TensorFlow/Keras",
        "memory",
        ("edge", ""),
        ("keras", "fp32"),
        None,
        0.25,
        "<=",
        "any",
    ),
    Target(
        "gpu_trt_fp16_vs_keras_b32",
        "TensorRT FP16 >= 5x Keras GPU throughput at batch 32",
        "throughput",
        ("trt", "fp16"),
        ("keras", "fp32"),
        32,
        5.0,
        ">=",
        "gpu",
    ),
    Target(
        "trt_python_vs_trtexec",
        "our Python runtime within 15% of trtexec throughput on the same engine (FP16)",
        "trtexec",
        ("trt", "fp16"),
        ("trtexec", "fp16"),
        None,
        0.85,
        ">=",
        "gpu",
    ),
)
# Which edge cold-start row stands for "the edge runtime": what `pneumo edge` would pick.
_EDGE_PREFERENCE = (
    ("trt", "fp16"),
    ("trt", "fp32"),
    ("ort-cpu", "fp32"),
    ("ort-cuda", "fp32"),
    ("ort-trt", "fp16"),
)


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its ratio and status (see :data:`STATUSES`), the reason in ``detail``.

    ``threshold_reached`` (bool, None when not measured) and ``unstable_timing`` (bool) carry the same
    verdict for programs; ``status`` is never a plain "met" from a row the run itself flags.
    """
    return [_evaluate(target, document) for target in TARGETS]


#: Every status a target can have. "(unstable timing)": a row behind the ratio has CV > UNSTABLE_CV.
#: "not judged": the speed was measured, but the faster row's accuracy is outside the INT8 budget of FP32.
STATUSES = (
    "met",
    "missed",
    "met (unstable timing)",
    "missed (unstable timing)",
    "not measured",
    "not judged",
)


@dataclass(frozen=True)
class _Measure:
    ratio: float | None
    detail: str
    #: "backend precision bN CV x%" of each row behind the ratio whose timing the run flags as unstable
    unstable: tuple[str, ...] = ()
    #: the ratio was measured but its fast row's accuracy is outside the budget: no verdict
    not_judged: bool = False


def _evaluate(target: Target, document: dict[str, Any]) -> dict[str, Any]:
    if target.kind == "throughput":
        measure = _throughput_ratio(target, document)
    elif target.kind in ("cold_start", "memory"):
        measure = _Measure(*_cold_ratio(target, document))
    else:
        measure = _trtexec_ratio(document)
    result: dict[str, Any] = {
        "key": target.key,
        "target": target.text,
        "threshold": target.threshold,
        "direction": target.direction,
        "ratio": None,
        "status": "not measured",
        "threshold_reached": None,
        "unstable_timing": bool(measure.unstable),
        "detail": measure.detail,
    }
    if measure.not_judged:
        result["status"] = "not judged"
    if measure.ratio is None:
        return result
    reached = (
        measure.ratio >= target.threshold if target.direction == ">=" else measure.ratio <= target.threshold
    )
    result["ratio"] = round(measure.ratio, 4)
    result["threshold_reached"] = reached
    result["status"] = "met" if reached else "missed"
    if measure.unstable:
        result["status"] += " (unstable timing)"
        result["detail"] += (
            f"; unstable timing (CV > {UNSTABLE_CV:.0%}): {', '.join(measure.unstable)}; "
            "re-run on an idle machine before trusting this verdict"
        )
    return result


def _row(document: dict[str, Any], backend: str, precision: str, batch: int) -> dict[str, Any] | None:
    for row in document.get("rows", []):
        if row["backend"] == backend and row["precision"] == precision and row["batch"] == batch:
            return row
    return None


def _unstable(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    flagged = []
    for row in rows:
        cv = (row.get("latency_ms") or {}).get("cv")
        if cv is not None and cv > UNSTABLE_CV:
            flagged.append(f"{row['backend']} {row['precision']} b{row['batch']} CV {cv:.0%}")
    return tuple(flagged)


def _without_accuracy(document: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> list[str]:
    """Which of ``keys`` (backend, precision) have no accuracy on test images in this run."""
    scored = {(a["backend"], a["precision"]) for a in document.get("accuracy", [])}
    return [f"{backend} {precision}" for backend, precision in keys if (backend, precision) not in scored]


def _throughput_ratio(target: Target, document: dict[str, Any]) -> _Measure:
    assert target.batch is not None
    top = _row(document, *target.numerator, target.batch)
    bottom = _row(document, *target.denominator, target.batch)
    if top is None or bottom is None:
        missing = " and ".join(
            f"{b} {p} batch {target.batch}"
            for (b, p), row in ((target.numerator, top), (target.denominator, bottom))
            if row is None
        )
        return _Measure(None, f"{missing} did not run here")
    if target.where == "gpu" and bottom.get("device") != "gpu":
        return _Measure(None, "Keras ran on the CPU here (no TensorFlow GPU): no GPU reference")
    if target.where == "cpu" and bottom.get("device") != "cpu":
        return _Measure(None, "Keras ran on a GPU here: the CPU target needs a CPU reference")
    unscored = _without_accuracy(document, (target.numerator, target.denominator))
    if unscored:
        # A speed whose outputs were never checked (an INT8 graph can be fast and wrong) is not a result.
        return _Measure(
            None,
            f"{' and '.join(unscored)} has no accuracy on test images in this run, so its speed is not a "
            "result; pass --data TESTDIR (or --keras RUN with split.json) and re-run",
        )
    speed = (
        f"{top['throughput_ips']:.1f} vs {bottom['throughput_ips']:.1f} images/s "
        f"({target.numerator[0]} {target.numerator[1]} / keras, batch {target.batch})"
    )
    off_budget = _accuracy_off_budget(document, target.numerator)
    if off_budget:
        # A reduced precision that lost accuracy (an INT8 bundle exported with --force) is fast and wrong.
        return _Measure(
            None,
            f"{off_budget}, so its speed ({speed}) is not judged; re-export the bundle without --force so "
            f"that its {target.numerator[1]} graph passes the export's accuracy checks, and re-run",
            not_judged=True,
        )
    return _Measure(top["throughput_ips"] / bottom["throughput_ips"], speed, _unstable([top, bottom]))


def _accuracy_off_budget(document: dict[str, Any], key: tuple[str, str]) -> str:
    """Why the ``key`` (backend, precision) row's accuracy is outside the INT8 budget of FP32 ("" when within).

    The reference is FP32 of the same backend (same runtime, same images), else the Keras model every
    precision was exported from. FP16 is held to the same budget: anything beyond it is a broken graph.
    """
    backend, precision = key
    if precision == "fp32":
        return ""
    scores = {(a["backend"], a["precision"]): a for a in document.get("accuracy", [])}
    reference_key = (backend, "fp32") if (backend, "fp32") in scores else ("keras", "fp32")
    row, reference = scores.get(key), scores.get(reference_key)
    if row is None or reference is None:
        return ""  # _without_accuracy names what was not scored
    mine, theirs = row.get("accuracy"), reference.get("accuracy")
    if not _finite(mine) or not _finite(theirs):
        return f"{backend} {precision} accuracy {mine} cannot be compared with {' '.join(reference_key)} {theirs}"
    reasons = []
    points = _points(theirs, mine, absolute=True)
    n_images = row.get("n_images")
    # On a small test set (a demo's 40 images) one image is more than a point: one image is allowed.
    one_image = 100.0 / n_images if isinstance(n_images, int) and n_images > 0 else 0.0
    if points > max(INT8_ACCURACY_POINTS, round(one_image, 6)):
        reasons.append(
            f"accuracy differs from FP32 by {points:.1f} points ({backend} {precision} {float(mine):.3f} vs "
            f"{' '.join(reference_key)} {float(theirs):.3f} on {n_images or '?'} test images; "
            f"budget {INT8_ACCURACY_POINTS:g} point or one image)"
        )
    sensitivity, reference_sensitivity = row.get("sensitivity"), reference.get("sensitivity")
    if _finite(sensitivity) and _finite(reference_sensitivity):
        from export.config import QuantConfig  # the export gate's budget; export.config imports nothing heavy

        drop = _points(reference_sensitivity, sensitivity, absolute=False)
        if drop > QuantConfig.max_sensitivity_drop:
            reasons.append(
                f"sensitivity {drop:.1f} points below FP32 ({float(sensitivity):.3f} vs "
                f"{float(reference_sensitivity):.3f}; the export gate allows {QuantConfig.max_sensitivity_drop:g})"
            )
    return "; ".join(reasons)


def _points(reference: float, value: float, absolute: bool) -> float:
    """``reference - value`` in percentage points, rounded so that 0.93 - 0.92 is 1.0, not 1.0000000000000009."""
    points = round(100.0 * (float(reference) - float(value)), 6)
    return abs(points) if absolute else points


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cold_ratio(target: Target, document: dict[str, Any]) -> tuple[float | None, str]:
    entries = document.get("cold_start", [])
    keras, keras_failed = _cold_entry(entries, [("keras", "fp32")])
    edge, edge_failed = _cold_entry(entries, list(_EDGE_PREFERENCE))
    if keras is None or edge is None:
        failed = [bad for bad, ok in ((edge_failed, edge), (keras_failed, keras)) if ok is None and bad]
        if failed:
            return None, "; ".join(
                f"the {c['backend']} {c['precision']} cold start failed ({c['error']})" for c in failed
            )
        return None, "needs a cold start of both the edge runtime and Keras in this run"
    key, unit, label = (
        ("cold_start_s", "s", "cold start")
        if target.kind == "cold_start"
        else ("peak_rss_mb", "MB", "peak RSS")
    )
    if not keras[key]:
        return None, f"Keras {label} is zero"
    return edge[key] / keras[key], (
        f"{label} {edge[key]:.2f} {unit} ({edge['backend']} {edge['precision']}) vs {keras[key]:.2f} {unit} (keras)"
    )


def _cold_entry(
    entries: list[dict[str, Any]], preference: list[tuple[str, str]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The first measured cold start in ``preference`` order, and the first failed one (the reason when none)."""
    measured: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    for backend, precision in preference:
        for entry in entries:
            if entry["backend"] != backend or entry["precision"] != precision:
                continue
            if "error" not in entry and measured is None:
                measured = entry
            elif "error" in entry and failed is None:
                failed = entry
    return measured, failed


def _trtexec_ratio(document: dict[str, Any]) -> _Measure:
    rows = [
        r for r in document.get("trtexec", []) if r.get("precision") == "fp16" and r.get("python_vs_trtexec")
    ]
    if not rows:
        return _Measure(None, "no trtexec row for an FP16 engine in this run")
    worst = min(rows, key=lambda r: r["python_vs_trtexec"])
    ours = _row(document, "trt", "fp16", worst["batch"])
    return _Measure(
        float(worst["python_vs_trtexec"]),
        f"batch {worst['batch']}: {worst['python_runtime_throughput_ips']:.1f} vs "
        f"{worst['throughput_ips']:.1f} images/s (worst batch of {len(rows)})",
        _unstable([ours]) if ours else (),
    )


def measurement_notes(document: dict[str, Any]) -> list[str]:
    """Plain statements about what was measured that a reader must not miss."""
    notes: list[str] = []
    device = document.get("device", {})
    flags = device.get("cpu_flags", [])
    int8_ratios = _cpu_ratios(document, "int8")
    slow = [batch for batch, ratio in int8_ratios.items() if ratio <= _NO_FASTER]
    if slow:
        int8_flags = [f for f in flags if f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")]
        notes.append(
            f"INT8 Q/DQ on this CPU is no faster than FP32 at batch {', '.join(map(str, slow))} "
            f"(INT8/FP32 throughput: {_ratio_text(int8_ratios)}); CPU int8 flags: {', '.join(int8_flags) or 'none'}. "
            "On this CPU, ONNX Runtime gains no speed from the INT8 Q/DQ graph; INT8 is meant for TensorRT "
            "on the Jetson, where it is measured separately."
        )
    fp16_ratios = _cpu_ratios(document, "fp16")
    if any(ratio < 1.0 for ratio in fp16_ratios.values()):
        notes.append(
            f"FP16 on the CPU is slower than FP32 (FP16/FP32 throughput: {_ratio_text(fp16_ratios)}): ONNX Runtime's "
            "CPU provider has few FP16 kernels and inserts casts; FP16 is a GPU precision."
        )
    if not any(r["backend"] in ("trt", "ort-trt") for r in document.get("rows", [])):
        notes.append("No TensorRT row ran on this machine: TensorRT figures are not measured by this run.")
    if document.get("bundle", {}).get("synthetic"):
        notes.append(
            "SYNTHETIC: the model was trained on phantom images; accuracy figures are not about X-rays."
        )
    return notes


def _cpu_ratios(document: dict[str, Any], precision: str) -> dict[int, float]:
    """ort-cpu throughput of ``precision`` over FP32, per batch size where both ran."""
    ratios = {}
    for batch in sorted({r["batch"] for r in document.get("rows", [])}):
        fp32 = _row(document, "ort-cpu", "fp32", batch)
        other = _row(document, "ort-cpu", precision, batch)
        if fp32 and other and fp32["throughput_ips"]:
            ratios[batch] = other["throughput_ips"] / fp32["throughput_ips"]
    return ratios


def _ratio_text(ratios: dict[int, float]) -> str:
    return ", ".join(f"x{ratio:.2f} at batch {batch}" for batch, ratio in ratios.items())
