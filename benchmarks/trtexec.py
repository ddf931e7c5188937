"""A reference row from NVIDIA's own ``trtexec --loadEngine`` on the same engine file.

Comparing it with our ``trt`` row shows the overhead of the Python runtime
(pycuda copies, per-call Python work). trtexec's performance summary looks
like (TensorRT 8.6 - 10.x)::

    [I] === Performance summary ===
    [I] Throughput: 1021.37 qps
    [I] Latency: min = 0.95 ms, max = 1.8 ms, mean = 0.98 ms, median = 0.97 ms, percentile(90%) = 1.0 ms, ...
    [I] GPU Compute Time: min = 0.9 ms, ...

"qps" counts inferences (batches), so images per second is qps x batch.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

# JetPack installs trtexec here without putting it on PATH.
_KNOWN_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
_STAT_RE = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([\d.eE+-]+)\s*ms")
_SECTIONS = {
    "Latency": "latency_ms",
    "Enqueue Time": "enqueue_ms",
    "H2D Latency": "h2d_ms",
    "GPU Compute Time": "gpu_compute_ms",
    "D2H Latency": "d2h_ms",
}


def find_trtexec() -> Path | None:
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    for candidate in _KNOWN_LOCATIONS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def parse_performance_summary(text: str) -> dict[str, Any]:
    """Throughput (qps) and the latency sections of trtexec's summary; raises ValueError when absent."""
    summary: dict[str, Any] = {}
    for line in text.splitlines():
        body = re.sub(r"^\s*(\[[^\]]*\]\s*)+", "", line).strip()
        if body.startswith("Throughput:"):
            match = re.search(r"([\d.eE+-]+)\s*qps", body)
            if match:
                summary["throughput_qps"] = float(match.group(1))
            continue
        for title, key in _SECTIONS.items():
            if body.startswith(title + ":"):
                summary[key] = _parse_stats(body)
        if body.startswith("Total Host Walltime:"):
            match = re.search(r"([\d.eE+-]+)\s*s", body.split(":", 1)[1])
            if match:
                summary["host_walltime_s"] = float(match.group(1))
    if "throughput_qps" not in summary or "latency_ms" not in summary:
        raise ValueError("no trtexec performance summary (Throughput / Latency lines) in the output")
    return summary


def _parse_stats(body: str) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, pct, value in _STAT_RE.findall(body):
        key = name if not pct else f"p{float(pct):g}"
        stats[key] = float(value)
    return stats


def run_trtexec(
    trtexec: Path,
    engine: Path,
    batch: int,
    input_name: str | None,
    input_shape: tuple[int, int, int],
    duration_s: float,
    warmup_s: float,
    timeout_s: float | None = None,
    dla_core: int | None = None,
) -> dict[str, Any]:
    """Run ``trtexec --loadEngine`` and return its parsed summary plus the exact command.

    A DLA engine is run on the core it was built for (``--useDLACore``), as the Python runtime does.
    ``timeout_s`` defaults to the timed duration and warm-up plus 5 minutes for loading the engine.
    """
    argv = [
        str(trtexec),
        f"--loadEngine={engine}",
        f"--duration={max(1, round(duration_s))}",
        f"--warmUp={max(0, round(warmup_s * 1000))}",
    ]
    if dla_core is not None:
        argv.append(f"--useDLACore={dla_core}")
    if input_name:
        argv.append(f"--shapes={input_name}:{batch}x{'x'.join(str(d) for d in input_shape)}")
    limit = timeout_s if timeout_s is not None else duration_s + warmup_s + 300.0
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        # A RuntimeError like every other trtexec failure: the run records a skip and keeps its rows.
        raise RuntimeError(
            f"trtexec did not finish within {limit:.0f} s (a {duration_s:g} s run) and was stopped; "
            f"run it by hand to see where it stalls: {shlex.join(argv)}"
        ) from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"trtexec exited {proc.returncode}: {tail}")
    summary = parse_performance_summary(proc.stdout + "\n" + proc.stderr)
    summary["command"] = " ".join(argv)
    summary["throughput_ips"] = summary["throughput_qps"] * batch
    return summary
