"""edge_runtime.metrics against hand-computed values; numpy only (export and benchmarks reuse it without TF)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo
from edge_runtime.metrics import (
    MetricsError,
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    confusion_matrix,
    evaluate_outputs,
    parse_threshold_rule,
    rankdata,
    roc_auc,
    roc_curve,
)


def test_rankdata_gives_ties_their_average_rank() -> None:
    assert rankdata(np.array([0.3, 0.1, 0.3, 0.2])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_roc_auc_hand_computed() -> None:
    # positives 0.35, 0.8 against negatives 0.1, 0.4: pairs won 1 + 0 + 1 + 1 = 3 of 4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_roc_auc_counts_ties_as_half() -> None:
    # positives 0.6, 0.9 vs negatives 0.2, 0.6: 1 + 0.5 + 1 + 1 = 3.5 of 4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.2, 0.6, 0.6, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_roc_auc_undefined_with_one_class() -> None:
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_roc_auc_matches_curve_area() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.5 + 0.4 * y, 2)  # rounded: many ties
    fpr, tpr, _ = roc_curve(y, scores)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, scores), abs=1e-12)


def test_binary_metrics_hand_computed() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1])
    m = binary_metrics(y, p, 0.5)  # TP 3, FN 1, FP 1, TN 2
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["roc_auc"] == pytest.approx(10 / 12)  # 12 pairs; positives 0.6 and 0.3 lose to the 0.7 negative


def test_threshold_sensitivity_rule_is_the_highest_that_keeps_the_target() -> None:
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.65, 0.3, 0.1])
    choice = choose_threshold(y, p, "sensitivity:0.8")  # 4 of 5 positives must stay >= t
    assert choice.threshold == pytest.approx(0.6)
    assert binary_metrics(y, p, choice.threshold)["sensitivity"] >= 0.8
    # any higher threshold loses the target
    assert binary_metrics(y, p, np.nextafter(choice.threshold, 1))["sensitivity"] < 0.8
    assert choose_threshold(y, p, "sensitivity:0.95").threshold == pytest.approx(0.2)


def test_threshold_youden_and_fixed() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1])
    # candidates: t=0.8 -> sens 2/3, spec 1 (J 0.667); t=0.4 -> sens 1, spec 2/3 (J 0.667); first max wins
    choice = choose_threshold(y, p, "youden")
    assert choice.threshold in (pytest.approx(0.4), pytest.approx(0.8))
    m = binary_metrics(y, p, choice.threshold)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(2 / 3)
    assert choose_threshold(y, p, "fixed:0.5").threshold == 0.5


@pytest.mark.parametrize("rule", ["sensitivity", "sensitivity:1.5", "fixed:x", "median", ""])
def test_bad_threshold_rules_are_refused(rule: str) -> None:
    with pytest.raises(MetricsError, match="threshold rule"):
        parse_threshold_rule(rule)


def test_threshold_needs_both_classes_in_validation() -> None:
    with pytest.raises(MetricsError, match="both normal and abnormal"):
        choose_threshold(np.array([1, 1]), np.array([0.2, 0.3]), "youden")


def test_bootstrap_interval_contains_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 400), 0, 1)
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_intervals(y, p, 0.5, resamples=300, seed=7)
    for name, (low, high) in ci.items():
        assert low <= point[name] <= high, name
        assert high - low < 0.2, name
    assert ci == bootstrap_intervals(y, p, 0.5, resamples=300, seed=7)
    assert ci != bootstrap_intervals(y, p, 0.5, resamples=300, seed=8)


def test_confusion_matrix_rows_are_truth() -> None:
    m = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_evaluate_outputs_sigmoid() -> None:
    info = ModelInfo(model_version="t", arch="x", threshold=0.5, threshold_rule="fixed:0.5")
    y = np.array([0, 0, 1, 1])
    out = np.array([[0.1], [0.7], [0.8], [0.3]], dtype=np.float32)
    result = evaluate_outputs(y, out, info, bootstrap=50, seed=0)
    assert result["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["per_class"]["NORMAL"]["recall"] == pytest.approx(0.5)
    assert set(result["ci95"]) >= {"accuracy", "roc_auc"}
    json.dumps(result, allow_nan=False)  # strict JSON: NaN became null
    at_low = evaluate_outputs(y, out, info, bootstrap=0, threshold=0.2)
    assert at_low["sensitivity"] == pytest.approx(1.0) and at_low["threshold_rule"] == "fixed:0.2"


def test_evaluate_outputs_softmax_uses_one_minus_normal() -> None:
    info = ModelInfo(
        model_version="t", arch="x", labels=("BACTERIA", "NORMAL", "VIRUS"), head="softmax", threshold=0.5
    )
    y = np.array([1, 0, 2, 2])
    out = np.array(
        [[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]],  # last: VIRUS called NORMAL
        dtype=np.float32,
    )
    result = evaluate_outputs(y, out, info, bootstrap=0)
    assert result["n_abnormal"] == 3 and result["n_normal"] == 1
    assert result["confusion"] == {"tp": 2, "fp": 0, "tn": 1, "fn": 1}
    assert result["confusion_matrix"]["rows_true_cols_predicted"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert result["per_class"]["VIRUS"]["recall"] == pytest.approx(0.5)


def test_evaluate_outputs_rejects_mismatched_shapes() -> None:
    info = ModelInfo(model_version="t", arch="x")
    with pytest.raises(MetricsError, match="outputs for"):
        evaluate_outputs(np.array([0, 1]), np.zeros((3, 1)), info)
    with pytest.raises(MetricsError, match="columns"):
        evaluate_outputs(np.array([0, 1]), np.zeros((2, 2)), info)
