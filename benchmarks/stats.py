"""Latency statistics in the manner of trtexec's performance summary.

Percentiles use numpy's default (linear interpolation between the two nearest
samples), so a report can be re-derived from raw samples with one numpy call.
The coefficient of variation is the sample standard deviation (ddof=1) over
the mean: a run whose CV is above :data:`UNSTABLE_CV` was disturbed (other
processes, thermal throttling, unlocked clocks) and says so in the report.
With fewer than :data:`MIN_CALLS_FOR_TAIL` samples p95/p99 are not a tail
estimate, and the report says that too. A CV from very few samples is itself
noise, which is why ``pneumo bench`` refuses ``--iterations`` below 10.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: A run with a coefficient of variation above this is flagged as unstable.
UNSTABLE_CV = 0.10
#: Below this many samples p95/p99 are one or two samples (or an interpolation towards the max):
#: reported in bench.json for completeness, shown as "-" in bench.md, with a warning.
MIN_CALLS_FOR_TAIL = 100
#: Percentiles kept in bench.json so a latency distribution can be redrawn without raw samples.
SKETCH_POINTS = 101


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds."""

    count: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    @property
    def tail_meaningful(self) -> bool:
        """Whether p95/p99 rest on enough samples to say anything about the tail."""
        return self.count >= MIN_CALLS_FOR_TAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (round(value, 6) if isinstance(value, float) else value)
            for key, value in asdict(self).items()
        }


def summarize(samples_ms: np.ndarray | list[float]) -> LatencyStats:
    """Min, mean, median, p90, p95, p99, max, std and CV of a non-empty sample."""
    samples = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
    if samples.size == 0:
        raise ValueError("cannot summarize an empty latency sample")
    if not np.all(np.isfinite(samples)):
        raise ValueError("latency samples contain NaN or infinity")
    p50, p90, p95, p99 = np.percentile(samples, [50, 90, 95, 99])
    mean = float(samples.mean())
    std = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    return LatencyStats(
        count=int(samples.size),
        min=float(samples.min()),
        mean=mean,
        median=float(p50),
        p90=float(p90),
        p95=float(p95),
        p99=float(p99),
        max=float(samples.max()),
        std=std,
        cv=std / mean if mean > 0 else 0.0,
    )


def quantile_sketch(samples_ms: np.ndarray | list[float], points: int = SKETCH_POINTS) -> list[float]:
    """Latency at ``points`` evenly spaced percentiles 0..100 (a CDF small enough for JSON)."""
    samples = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
    if samples.size == 0:
        return []
    return [round(float(v), 6) for v in np.percentile(samples, np.linspace(0.0, 100.0, points))]


def throughput(images: int, seconds: float) -> float:
    """Images per second over a wall-clock window (trtexec: queries / total host walltime)."""
    if seconds <= 0:
        raise ValueError(f"throughput needs a positive duration, got {seconds}")
    return images / seconds
