"""Classification metrics from model outputs: numpy only, no TensorFlow.

Training's evaluation, export's accuracy per precision and the benchmarks'
accuracy on the device all score outputs here, so the same numbers come out
whichever runtime (Keras, ONNX Runtime, a TensorRT engine) produced them. It
lives in the edge runtime because the benchmarks run on the Jetson, where
``train`` is not a dependency.

The headline metrics are binary, *abnormal vs the negative label* (NORMAL),
at the decision threshold recorded in :class:`~edge_runtime.contract.ModelInfo`:
for a softmax head P(abnormal) = 1 - P(NORMAL). Per-class figures use the label
each image would be shown with (:func:`edge_runtime.predictor.predicted_labels`).

Confidence intervals are 95% percentile bootstrap intervals over images
(seeded, default 1,000 resamples). Images of one patient are resampled
independently, so the intervals are, if anything, a little narrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo
from edge_runtime.errors import MetricsError
from edge_runtime.predictor import abnormal_probability, predicted_labels

THRESHOLD_RULES = ("sensitivity:<target>", "youden", "fixed:<value>")
DEFAULT_THRESHOLD_RULE = "sensitivity:0.95"
BINARY_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc")


# --------------------------------------------------------------------------- building blocks


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    average = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks_sorted = np.repeat(average, ends - starts)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). NaN when one class is absent."""
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), one point per distinct score, from (0, 0)."""
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class Confusion:
    """Binary confusion counts, positive = abnormal."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def from_decisions(cls, y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
        y = np.asarray(y_true).astype(bool)
        p = np.asarray(y_pred).astype(bool)
        return cls(
            tp=int(np.sum(y & p)), fp=int(np.sum(~y & p)), tn=int(np.sum(~y & ~p)), fn=int(np.sum(y & ~p))
        )

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, sensitivity (recall), specificity, F1 and ROC AUC of P(abnormal) at ``threshold``."""
    y = np.asarray(y_true).astype(bool).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    c = Confusion.from_decisions(y, p >= threshold)
    precision = _ratio(c.tp, c.tp + c.fp)
    sensitivity = _ratio(c.tp, c.tp + c.fn)
    return {
        "accuracy": _ratio(c.tp + c.tn, len(y)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "roc_auc": roc_auc(y, p),
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray, labels: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (one-vs-rest)."""
    result: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = float(matrix[i, i])
        predicted = float(matrix[:, i].sum())
        actual = float(matrix[i, :].sum())
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, actual)
        result[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * tp, predicted + actual),
            "support": int(actual),
        }
    return result


def bootstrap_intervals(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of every binary metric: {name: [low, high]}.

    Resamples where a metric is undefined (e.g. no positive image drawn) are left
    out of that metric's interval.
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if resamples <= 0 or len(y) == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in BINARY_METRICS}
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        values = binary_metrics(y[idx], p[idx], threshold)
        for name in BINARY_METRICS:
            draws[name].append(values[name])
    tail = (1.0 - level) / 2.0 * 100.0
    intervals: dict[str, list[float]] = {}
    for name, drawn in draws.items():
        arr = np.asarray(drawn, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if len(arr) == 0:
            intervals[name] = [float("nan"), float("nan")]
        else:
            low, high = np.percentile(arr, [tail, 100.0 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


# --------------------------------------------------------------------------- threshold


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    rule: str
    description: str


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """'sensitivity:0.95' -> ('sensitivity', 0.95); 'youden' -> ('youden', None); 'fixed:0.5' -> ('fixed', 0.5)."""
    text = rule.strip().lower()
    name, _, value = text.partition(":")
    if name == "youden" and not value:
        return "youden", None
    if name in ("sensitivity", "fixed") and value:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise MetricsError(f"threshold rule {rule!r}: the value must be a number within [0, 1]")
        return name, number
    raise MetricsError(f"threshold rule {rule!r}: expected one of {', '.join(THRESHOLD_RULES)}")


def choose_threshold(
    y_true: np.ndarray, prob: np.ndarray, rule: str = DEFAULT_THRESHOLD_RULE
) -> ThresholdChoice:
    """Pick the decision threshold on P(abnormal) from **validation** outputs.

    * ``sensitivity:T`` - the highest threshold whose sensitivity is still >= T
      (the k-th highest abnormal score, k = ceil(T * n_abnormal)): as few false
      alarms as the sensitivity target allows;
    * ``youden`` - the score maximising sensitivity + specificity - 1;
    * ``fixed:V`` - V, whatever the data.
    """
    name, value = parse_threshold_rule(rule)
    if name == "fixed":
        assert value is not None
        return ThresholdChoice(value, f"fixed:{value:g}", f"fixed at {value:g}")
    y = np.asarray(y_true).astype(bool).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise MetricsError(
            f"threshold rule {rule!r} needs both normal and abnormal validation images "
            f"(got {n_pos} abnormal of {len(y)}); use a fixed threshold or a larger validation split"
        )
    if name == "sensitivity":
        assert value is not None
        positives = np.sort(p[y])[::-1]
        k = max(1, math.ceil(value * n_pos - 1e-9))
        threshold = float(positives[k - 1])
        achieved = float(np.mean(p[y] >= threshold))
        spec = float(np.mean(p[~y] < threshold))
        return ThresholdChoice(
            threshold,
            f"sensitivity:{value:g}",
            f"highest threshold keeping validation sensitivity >= {value:g} "
            f"(validation sensitivity {achieved:.3f}, specificity {spec:.3f})",
        )
    candidates = np.unique(p)
    pos_sorted = np.sort(p[y])
    neg_sorted = np.sort(p[~y])
    # sensitivity at t: share of positives >= t; specificity: share of negatives < t
    sens_at = 1.0 - np.searchsorted(pos_sorted, candidates, side="left") / len(pos_sorted)
    spec_at = np.searchsorted(neg_sorted, candidates, side="left") / len(neg_sorted)
    best = int(np.argmax(sens_at + spec_at - 1.0))
    return ThresholdChoice(
        float(candidates[best]),
        "youden",
        f"maximises validation sensitivity + specificity - 1 (J = {sens_at[best] + spec_at[best] - 1:.3f}; "
        f"sensitivity {sens_at[best]:.3f}, specificity {spec_at[best]:.3f})",
    )


# --------------------------------------------------------------------------- one call for everything


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the result is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    return obj


def evaluate_outputs(
    y_true: np.ndarray,
    outputs: np.ndarray,
    info: ModelInfo,
    bootstrap: int = 1000,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Every metric of one evaluation, JSON-ready.

    ``y_true`` holds class indices into ``info.labels``; ``outputs`` the raw
    model outputs (N, 1) sigmoid or (N, K) softmax. ``threshold`` overrides
    ``info.threshold`` (e.g. to report the same outputs at 0.5 too).
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    out = np.asarray(outputs, dtype=np.float32)
    if out.ndim == 1:
        out = out.reshape(-1, 1)
    if len(y) == 0:
        raise MetricsError("no images to evaluate")
    if out.shape[0] != len(y):
        raise MetricsError(f"{out.shape[0]} outputs for {len(y)} labels")
    if out.shape[1] != info.n_outputs:
        raise MetricsError(
            f"outputs have {out.shape[1]} columns; model info ({info.head}) expects {info.n_outputs}"
        )
    if y.min() < 0 or y.max() >= len(info.labels):
        raise MetricsError(f"labels must be indices into {info.labels}")
    negative = info.labels.index(info.negative_label)
    t = info.threshold if threshold is None else float(threshold)
    shown = info if threshold is None else _with_threshold(info, t)
    prob = abnormal_probability(out, shown)
    abnormal = y != negative
    metrics = binary_metrics(abnormal, prob, t)
    confusion = Confusion.from_decisions(abnormal, prob >= t)
    label_index = {label: i for i, label in enumerate(info.labels)}
    pred_names = predicted_labels(out, shown)
    if info.head == "sigmoid":
        # positive_label is the other label; map decisions straight to indices
        y_pred = np.where(prob >= t, label_index[info.positive_label], negative)
    else:
        y_pred = np.asarray([label_index[name] for name in pred_names], dtype=np.int64)
    matrix = confusion_matrix(y, y_pred, len(info.labels))
    fpr, tpr, _ = roc_curve(abnormal, prob)
    result: dict[str, Any] = {
        "n_images": len(y),
        "n_abnormal": int(abnormal.sum()),
        "n_normal": int((~abnormal).sum()),
        "positive": "abnormal (any label other than " + info.negative_label + ")",
        "threshold": t,
        "threshold_rule": info.threshold_rule if threshold is None else f"fixed:{t:g}",
        **metrics,
        "confusion": confusion.to_dict(),
        "ci95": bootstrap_intervals(abnormal, prob, t, resamples=bootstrap, seed=seed),
        "bootstrap_resamples": int(bootstrap),
        "confusion_matrix": {"labels": list(info.labels), "rows_true_cols_predicted": matrix.tolist()},
        "per_class": per_class_metrics(matrix, info.labels),
        "roc_curve": _downsample_curve(fpr, tpr),
    }
    return dict(_clean(result))


def _with_threshold(info: ModelInfo, threshold: float) -> ModelInfo:
    data = info.to_dict()
    data["threshold"] = threshold
    return ModelInfo.from_dict(data)


def _downsample_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 201) -> dict[str, list[float]]:
    """The ROC curve at most ``points`` points (for plots and JSON), keeping both ends."""
    if len(fpr) > points:
        idx = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def format_with_ci(metrics: dict[str, Any], name: str, digits: int = 3) -> str:
    """'0.912 [0.889, 0.934]' for a metric of :func:`evaluate_outputs`."""
    value = metrics.get(name)
    if value is None:
        return "n/a"
    ci = metrics.get("ci95", {}).get(name)
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{value:.{digits}f}"
