"""Does a model read the chest's *shape* instead of its lungs? A one-axis rescale probe.

The preprocessing contract squashes every image to a square. In the Kermany
training set the classes were acquired at different aspect ratios (original
NORMAL images: median width/height 1.21, PNEUMONIA 1.50), so after squashing a
pneumonia chest looks narrower than a normal one, and a CNN can learn "narrow
chest = pneumonia". Nothing in a clinic keeps that true.

The probe rescales every image along one axis only (content centred, black
border when it shrinks, centre crop when it grows), re-scores it, and reports
per probe: mean P(abnormal) of the normal and the abnormal images, ROC AUC,
and how many normals cross the model's threshold. A model that reads anatomy
moves little and about alike for "width x0.85" and "height x0.85"; one that
reads shape moves its normals towards abnormal when the width shrinks.

Run it on validation data (``pneumo evaluate RUN --data DATA --split run-val
--shape-probe``), never to choose on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo
from edge_runtime.metrics import roc_auc
from edge_runtime.predictor import abnormal_probability


@dataclass(frozen=True)
class Probe:
    """Rescale the width by ``width`` and the height by ``height`` (1.0 = unchanged)."""

    name: str
    width: float
    height: float


PROBES = (
    Probe("unchanged", 1.0, 1.0),
    Probe("width x0.85", 0.85, 1.0),
    Probe("height x0.85", 1.0, 0.85),
    Probe("width x1.15", 1.15, 1.0),
    Probe("height x1.15", 1.0, 1.15),
)


def _fit_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Centre ``image`` on ``size`` pixels along ``axis``: black border if smaller, crop if larger."""
    current = image.shape[axis]
    if current == size:
        return image
    if current > size:
        start = (current - size) // 2
        return np.take(image, np.arange(start, start + size), axis=axis)
    shape = list(image.shape)
    shape[axis] = size
    out = np.zeros(shape, image.dtype)
    start = (size - current) // 2
    index = [slice(None)] * image.ndim
    index[axis] = slice(start, start + current)
    out[tuple(index)] = image
    return out


def rescale(images: np.ndarray, width: float, height: float) -> np.ndarray:
    """uint8 NHWC images with their content rescaled per axis, same array shape."""
    import cv2

    if width <= 0 or height <= 0:
        raise ValueError(f"rescale factors must be > 0, got width {width}, height {height}")
    n, h, w = images.shape[:3]
    new_w, new_h = max(1, round(w * width)), max(1, round(h * height))
    if (new_w, new_h) == (w, h):
        return images.copy()
    shrink = new_w * new_h < w * h
    out = np.empty_like(images)
    for i in range(n):
        # INTER_AREA when shrinking is the contract's own resampling; linear when growing.
        resized = cv2.resize(
            images[i], (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        resized = resized.reshape(new_h, new_w, *images.shape[3:])
        out[i] = _fit_axis(_fit_axis(resized, h, 0), w, 1)
    return out


def probe_outputs(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    outputs: np.ndarray | None = None,
    probes: tuple[Probe, ...] = PROBES,
) -> list[np.ndarray]:
    """The model's raw outputs on ``x`` under each probe, in ``probes`` order.

    ``outputs``: the outputs on ``x`` as it is, if the caller has them already; the unchanged
    probe then reuses them instead of predicting again.
    """
    results = []
    for probe in probes:
        unchanged = probe.width == 1.0 and probe.height == 1.0
        raw = outputs if unchanged and outputs is not None else predict(rescale(x, probe.width, probe.height))
        results.append(np.asarray(raw))
    return results


def shape_pooled(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    outputs: np.ndarray | None = None,
    probes: tuple[Probe, ...] = PROBES,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, outputs) of ``x`` as it is and under every probe, stacked: validation as a clinic
    with other acquisition geometry would see it. ``--threshold-on shape-pooled`` chooses there."""
    raws = probe_outputs(predict, x, outputs, probes)
    return np.concatenate([np.asarray(y).reshape(-1)] * len(raws)), np.concatenate(raws)


def shape_probe(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    info: ModelInfo,
    outputs: np.ndarray | None = None,
    probes: tuple[Probe, ...] = PROBES,
) -> dict[str, Any]:
    """Score ``x`` (uint8 NHWC, labels ``y`` as class indices) under each probe; JSON-ready.

    ``outputs``: as in :func:`probe_outputs`. Besides one row per probe, ``pooled`` scores all
    probes' outputs together (the selection criterion "shape-pooled validation ROC AUC").
    """
    negative = info.labels.index(info.negative_label)
    abnormal = np.asarray(y).reshape(-1) != negative
    both = 0 < abnormal.sum() < len(abnormal)
    probs = [abnormal_probability(raw, info) for raw in probe_outputs(predict, x, outputs, probes)]
    base = probs[0]
    rows = []
    for probe, prob in zip(probes, probs, strict=True):
        normals, abnormals = prob[~abnormal], prob[abnormal]
        rows.append(
            {
                "probe": probe.name,
                "width": probe.width,
                "height": probe.height,
                "mean_p_normal_images": _mean(normals),
                "mean_p_abnormal_images": _mean(abnormals),
                "roc_auc": roc_auc(abnormal, prob) if both else None,
                "normals_called_abnormal": int((normals >= info.threshold).sum()),
                "abnormals_called_normal": int((abnormals < info.threshold).sum()),
                "decisions_changed": int(((prob >= info.threshold) != (base >= info.threshold)).sum()),
            }
        )
    pooled_truth, pooled_prob = np.tile(abnormal, len(probs)), np.concatenate(probs)
    return {
        "threshold": info.threshold,
        "n_normal": int((~abnormal).sum()),
        "n_abnormal": int(abnormal.sum()),
        "probes": rows,
        "pooled": {
            "n_outputs": len(pooled_prob),
            "roc_auc": roc_auc(pooled_truth, pooled_prob) if both else None,
            "normals_called_abnormal": int((pooled_prob[~pooled_truth] >= info.threshold).sum()),
            "abnormals_called_normal": int((pooled_prob[pooled_truth] < info.threshold).sum()),
        },
    }


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def probe_table(report: dict[str, Any]) -> str:
    """The probe as a table for people."""
    lines = [
        f"shape probe: {report['n_normal']} normal, {report['n_abnormal']} abnormal images, "
        f"threshold {report['threshold']:.4f}",
        f"  {'probe':<14}{'P(abn) normals':>15}{'P(abn) abnormals':>17}{'ROC AUC':>9}"
        f"{'normals > thr':>15}{'changed':>9}",
    ]
    for row in report["probes"]:
        lines.append(
            f"  {row['probe']:<14}{_fmt(row['mean_p_normal_images']):>15}"
            f"{_fmt(row['mean_p_abnormal_images']):>17}{_fmt(row['roc_auc'], 4):>9}"
            f"{row['normals_called_abnormal']:>15}{row['decisions_changed']:>9}"
        )
    pooled = report.get("pooled")
    if pooled:
        lines.append(
            f"  {'all pooled':<14}{'':>15}{'':>17}{_fmt(pooled['roc_auc'], 4):>9}"
            f"{pooled['normals_called_abnormal']:>15}{'':>9}   ({pooled['n_outputs']} outputs)"
        )
    lines.append(
        "  A model that reads anatomy moves little under these; normals rising when only the width "
        "shrinks means it reads chest shape."
    )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
