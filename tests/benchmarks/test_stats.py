"""Latency statistics against numpy on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stats import MIN_CALLS_FOR_TAIL, UNSTABLE_CV, quantile_sketch, summarize, throughput

FIXED = [
    np.array([1.0, 2.0, 3.0, 4.0, 100.0]),
    np.array([0.5] * 7),
    np.arange(1, 1001, dtype=np.float64) / 10.0,
    np.array([3.25]),
]


@pytest.mark.parametrize("samples", FIXED, ids=["outlier", "constant", "ramp", "single"])
def test_summary_matches_numpy(samples: np.ndarray) -> None:
    stats = summarize(samples)
    assert stats.count == samples.size
    assert stats.min == pytest.approx(samples.min())
    assert stats.max == pytest.approx(samples.max())
    assert stats.mean == pytest.approx(samples.mean())
    assert stats.median == pytest.approx(np.median(samples))
    for name, q in (("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(samples, q))
    std = samples.std(ddof=1) if samples.size > 1 else 0.0
    assert stats.std == pytest.approx(std)
    assert stats.cv == pytest.approx(std / samples.mean())
    assert stats.min <= stats.median <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max


def test_known_values_of_a_small_sample() -> None:
    stats = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats.median == 3.0
    # linear interpolation between the 4th and 5th sample: 4 + 0.6 * 96
    assert stats.p90 == pytest.approx(61.6)
    assert stats.unstable


def test_constant_latency_is_stable() -> None:
    stats = summarize([2.0] * 50)
    assert stats.cv == 0.0
    assert not stats.unstable
    assert pytest.approx(0.10) == UNSTABLE_CV


def test_empty_or_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_quantile_sketch_is_a_cdf() -> None:
    samples = np.random.default_rng(0).exponential(2.0, 500)
    sketch = quantile_sketch(samples)
    assert len(sketch) == 101
    assert sketch[0] == pytest.approx(samples.min(), abs=1e-6)
    assert sketch[50] == pytest.approx(np.median(samples), abs=1e-6)
    assert sketch[-1] == pytest.approx(samples.max(), abs=1e-6)
    assert sketch == sorted(sketch)


def test_throughput() -> None:
    assert throughput(320, 2.0) == 160.0
    with pytest.raises(ValueError):
        throughput(1, 0.0)


def test_tail_percentiles_need_a_hundred_calls() -> None:
    assert MIN_CALLS_FOR_TAIL == 100
    assert not summarize([3.25]).tail_meaningful  # one call: p99 is that call
    assert not summarize([1.0] * 99).tail_meaningful
    assert summarize([1.0] * 100).tail_meaningful
