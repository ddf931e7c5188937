"""PNG plots of a bench.json: throughput per precision and batch size, latency distributions.

Drawn from the JSON document alone (latency distributions from the stored
percentile sketch), so any committed result can be re-plotted. matplotlib is
imported inside the functions, with the non-interactive Agg backend: a
Jetson or a CI runner has no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.fileio import atomic_write_via

THROUGHPUT_PNG = "throughput.png"
LATENCY_PNG = "latency.png"
_BACKEND_ORDER = ("keras", "ort-cpu", "ort-cuda", "ort-trt", "trt")
_PRECISION_ORDER = ("fp32", "fp16", "int8")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write the figure atomically (a results folder is read while a benchmark rewrites it), then free it."""
    try:
        return atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def _title(document: dict[str, Any]) -> str:
    bundle = document.get("bundle", {})
    synthetic = " (SYNTHETIC)" if bundle.get("synthetic") else ""
    return f"{bundle.get('model_version', '?')}{synthetic} on {document.get('device', {}).get('slug', '?')}, {document.get('date', '')}"


def plot_throughput(document: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: one panel per batch size, precisions on x, one bar per backend."""
    rows = document.get("rows", [])
    if not rows:
        return None
    plt = _pyplot()
    batches = sorted({r["batch"] for r in rows})
    backends = [b for b in _BACKEND_ORDER if any(r["backend"] == b for r in rows)]
    precisions = [p for p in _PRECISION_ORDER if any(r["precision"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.2), squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, batch in zip(axes[0], batches):
        for i, backend in enumerate(backends):
            xs, heights = [], []
            for j, precision in enumerate(precisions):
                row = next(
                    (
                        r
                        for r in rows
                        if r["backend"] == backend and r["precision"] == precision and r["batch"] == batch
                    ),
                    None,
                )
                if row is not None:
                    xs.append(j + (i - (len(backends) - 1) / 2) * width)
                    heights.append(row["throughput_ips"])
            if xs:
                bars = ax.bar(xs, heights, width=width, label=backend)
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(precisions)), precisions)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("images / s (pure inference)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Throughput per precision and batch size: " + _title(document), fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_latency(document: dict[str, Any], path: Path) -> Path | None:
    """Latency CDF per backend and precision, one panel per batch size (log-scale ms)."""
    rows = [r for r in document.get("rows", []) if r.get("latency_quantiles_ms")]
    if not rows:
        return None
    plt = _pyplot()
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.0), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for row in sorted(
            (r for r in rows if r["batch"] == batch),
            key=lambda r: (
                _BACKEND_ORDER.index(r["backend"]) if r["backend"] in _BACKEND_ORDER else 99,
                r["precision"],
            ),
        ):
            sketch = row["latency_quantiles_ms"]
            percent = (
                [100.0 * i / (len(sketch) - 1) for i in range(len(sketch))] if len(sketch) > 1 else [50.0]
            )
            ax.plot(sketch, percent, label=f"{row['backend']} {row['precision']}", linewidth=1.3)
        ax.set_xscale("log")
        ax.set_xlabel("latency per call (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Latency distribution: " + _title(document), fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)


def write_plots(document: dict[str, Any], folder: Path) -> list[Path]:
    """Both plots into ``folder``; returns the files written (none when no row ran)."""
    written = [
        plot_throughput(document, folder / THROUGHPUT_PNG),
        plot_latency(document, folder / LATENCY_PNG),
    ]
    return [p for p in written if p is not None]
