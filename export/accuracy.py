"""Per-precision accuracy on the test split, and the INT8 sensitivity gate.

Each exported graph (FP32, FP16, INT8 Q/DQ) runs on ONNX Runtime CPU over the
same preprocessed test images; :func:`edge_runtime.metrics.evaluate_outputs` scores
them at the model's threshold, so these figures are comparable with the
training report and with the benchmarks on the Jetson.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo
from export.errors import AccuracyDropError, ExportError
from export.parity import onnx_outputs

HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")
# The order the advice suggests them in: auto's own order first (export.config.AUTO_CALIBRATE_METHODS).
CALIBRATE_METHODS = ("percentile", "minmax", "entropy")


def evaluate_precisions(
    models: dict[str, Path],
    images: np.ndarray,
    y_true: np.ndarray,
    info: ModelInfo,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """``{precision: evaluate_outputs(...)}`` and the raw outputs of each model on ``images``."""
    from edge_runtime.metrics import MetricsError, evaluate_outputs

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    for precision, path in models.items():
        outputs[precision] = onnx_outputs(path, images, precision=precision)
        try:
            metrics = evaluate_outputs(y_true, outputs[precision], info, bootstrap=bootstrap, seed=seed)
        except MetricsError as exc:
            raise ExportError(f"{path}: cannot score its outputs on the test split ({exc})") from exc
        metrics.pop("roc_curve", None)
        results[precision] = metrics
    return results, outputs


def sensitivity_drop_points(results: dict[str, dict[str, Any]], precision: str) -> float:
    """How many percentage points ``precision`` loses in sensitivity against FP32 (negative = gains)."""
    return 100.0 * (float(results["fp32"]["sensitivity"]) - float(results[precision]["sensitivity"]))


def accuracy_drop_points(results: dict[str, dict[str, Any]], precision: str) -> float:
    return 100.0 * (float(results["fp32"]["accuracy"]) - float(results[precision]["accuracy"]))


def require_int8_sensitivity(
    results: dict[str, dict[str, Any]], max_drop: float, path: Path, methods_tried: Sequence[str] = ()
) -> float:
    """Raise :class:`AccuracyDropError` when INT8 sensitivity falls more than ``max_drop`` points below FP32.

    ``methods_tried``: the calibration methods the INT8 graph was made with, so the advice names another.
    """
    drop = sensitivity_drop_points(results, "int8")
    if drop > max_drop:
        raise AccuracyDropError(
            f"{path}: INT8 sensitivity {results['int8']['sensitivity']:.3f} is {drop:.1f} points below FP32 "
            f"{results['fp32']['sensitivity']:.3f} on {results['int8']['n_images']} test images (allowed "
            f"{max_drop:g}); a missed pneumonia costs more than latency: ship fp16 (--precisions fp32,fp16), "
            f"calibrate on more images (--calib-size) {_calibration_advice(methods_tried)}"
        )
    return drop


def _calibration_advice(methods_tried: Sequence[str]) -> str:
    """The next calibration setting to try: a method not yet used, else more layers kept in float."""
    if not methods_tried:
        return f"or try another --calib-method ({', '.join(CALIBRATE_METHODS)})"
    used = ", ".join(methods_tried)
    untried = [m for m in CALIBRATE_METHODS if m not in methods_tried]
    if untried:
        return f"or try --calib-method {untried[0]} (tried: {used})"
    return f"or keep more layers in float (--int8-max-float-layers, --keep-head; tried: {used})"


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {name: metrics.get(name) for name in HEADLINE}
