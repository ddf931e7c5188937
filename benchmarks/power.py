"""Board power and temperature during a benchmark, through jetson-stats (jtop) when installed.

One :class:`PowerMonitor` samples in a background thread for the whole run;
each timed loop asks for the mean over its own time window, so every row
gets its mean power, temperature and images per joule. Reading jtop changes
nothing on the device. Without jetson-stats (any non-Jetson machine) the
monitor is inert and rows carry ``power: null`` with a note.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

# jtop's client refuses intervals much below its service's (0.5 s is safe across 3.x and 4.x).
_SAMPLE_INTERVAL_S = 0.5


class PowerMonitor:
    """Context manager: starts jtop sampling on enter if jetson-stats is importable."""

    def __init__(self, interval_s: float = _SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.available = False
        self.reason = "jetson-stats (jtop) not installed: no power or temperature readings"
        self._samples: list[tuple[float, float | None, float | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PowerMonitor:
        try:
            from jtop import jtop  # noqa: F401 - only probing that jetson-stats is installed
        except ImportError:
            return self
        self.available = True
        self.reason = ""
        self._thread = threading.Thread(target=self._sample, name="jtop-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _sample(self) -> None:
        from jtop import jtop

        try:
            with jtop(interval=self.interval_s) as board:
                while not self._stop.is_set() and board.ok():
                    sample = (
                        time.perf_counter(),
                        total_power_w(board.power),
                        max_temperature_c(board.temperature),
                    )
                    with self._lock:
                        self._samples.append(sample)
        except Exception as exc:  # noqa: BLE001 - jtop service errors must not stop the benchmark
            self.available = False
            self.reason = f"jetson-stats failed while sampling: {exc}"

    def window(self, start: float, end: float, images: int) -> dict[str, Any] | None:
        """Mean power (W), mean/max temperature (C) and images per joule between two perf_counter stamps."""
        with self._lock:
            inside = [s for s in self._samples if start <= s[0] <= end]
        powers = [p for _, p, _ in inside if p is not None]
        temps = [t for _, _, t in inside if t is not None]
        if not powers and not temps:
            return None
        mean_power = sum(powers) / len(powers) if powers else None
        seconds = end - start
        return {
            "samples": len(inside),
            "mean_power_w": round(mean_power, 3) if mean_power else None,
            "mean_temperature_c": round(sum(temps) / len(temps), 2) if temps else None,
            "max_temperature_c": round(max(temps), 2) if temps else None,
            "images_per_joule": (
                round(images / (mean_power * seconds), 4) if mean_power and seconds > 0 else None
            ),
        }


def total_power_w(power: Any) -> float | None:
    """Total board power in watts from jtop's ``power`` (jetson-stats 4.x dict or 3.x tuple)."""
    if isinstance(power, tuple) and power:
        power = power[0]
    if not isinstance(power, dict):
        return None
    total = power.get("tot", power)
    if isinstance(total, dict):
        for key in ("power", "cur"):
            value = total.get(key)
            if isinstance(value, (int, float)):
                return float(value) / 1000.0  # jtop reports milliwatts
    return None


def max_temperature_c(temperature: Any) -> float | None:
    """Hottest sensor in jtop's ``temperature`` (dict of dicts in 4.x, of floats in 3.x)."""
    if not isinstance(temperature, dict):
        return None
    values = []
    for value in temperature.values():
        if isinstance(value, dict):
            value = value.get("temp") if value.get("online", True) else None
        if isinstance(value, (int, float)) and -40.0 < value < 150.0:
            values.append(float(value))
    return max(values) if values else None
