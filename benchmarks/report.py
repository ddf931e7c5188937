"""bench.json (one schema for every device), bench.md, plots, and side-by-side comparison of two runs.

bench.json, schema ``pneumo-bench/1`` (:data:`benchmarks.BENCH_SCHEMA`)::

    schema, created, date, finished, command      when and how it ran
    config      the resolved BenchConfig
    bundle      model version, arch, threshold, SYNTHETIC flag, contract, file sizes
    device      the device stamp (benchmarks.device_facts), hostname-free
    rows        one per backend x precision x batch: throughput_ips, latency_ms
                {count,min,mean,median,p90,p95,p99,max,std,cv}, latency_quantiles_ms
                (101 percentiles), gpu_compute_ms (trt only, else null + gpu_compute_note),
                end_to_end {throughput_ips, latency_ms, preprocess_ms_per_image, ...},
                model/engine file and bytes, engine_build_s, power, speedup_vs_keras, warnings
    accuracy    one per backend x precision: accuracy, sensitivity, specificity,
                roc_auc, ci95, confusion, agreement with the reference
    cold_start  one per backend x precision: cold_start_s (median of fresh processes),
                import/load/first-inference split, peak_rss_mb, gpu_memory_mb
    trtexec     rows from trtexec --loadEngine on the same engines
    skipped     {backend, precision, batch, reason} for everything that did not run
                tail_latency_meaningful (false below 100 calls: p95/p99 shown as "-" in bench.md),
                threads {runtime, intra_op_threads, inter_op_threads, ...} (null for trt)
    targets     each project target as a same-run ratio: status (met / missed / "met (unstable
                timing)" / "missed (unstable timing)" / not measured), threshold_reached,
                unstable_timing, detail
    warnings, notes
    watch       the watch-daemon benchmark (benchmarks.watch_bench) or null

Results are written to ``OUT/<device-slug>/<YYYY-MM-DD>/`` and never over an
earlier run of the same day (a ``-2``, ``-3`` ... suffix is added instead);
with ``overwrite`` the earlier run's report files there are removed first.
:func:`compare` adds ``same_model`` and ``warnings`` (different model,
settings or test set; unstable rows) to the side-by-side rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks import BENCH_SCHEMA
from benchmarks.device_facts import summary_line
from benchmarks.errors import BenchInputError
from benchmarks.plots import LATENCY_PNG, THROUGHPUT_PNG, write_plots
from benchmarks.stats import MIN_CALLS_FOR_TAIL, UNSTABLE_CV
from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.fileio import atomic_write_json, atomic_write_text

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
#: Every file write_report may write: what --overwrite clears first, so no file of an older run is left
#: beside the new one looking like its result (a plot this run did not draw, say).
BENCH_FILES = (BENCH_JSON, BENCH_MD, THROUGHPUT_PNG, LATENCY_PNG)
DECISION_SUPPORT = "Model outputs are decision support for a trained clinician, not a diagnosis."


def result_folder(
    out_root: Path, document: dict[str, Any], overwrite: bool = False, marker: str = BENCH_JSON
) -> Path:
    """``out_root/<device-slug>/<date>``, or the next free ``<date>-N`` (judged by ``marker``) unless ``overwrite``."""
    base = Path(out_root) / document["device"]["slug"] / document["date"]
    if overwrite or not (base / marker).exists():
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}" / marker).exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def write_report(document: dict[str, Any], out_root: Path, overwrite: bool = False) -> dict[str, Path]:
    """Write bench.json, bench.md and the PNG plots; returns {name: path}."""
    folder = result_folder(out_root, document, overwrite)
    # Render once before writing anything, so a bug never leaves a half-written result folder.
    render_markdown(document)
    json.dumps(document)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_old_results(folder)
    try:
        plots = write_plots(document, folder)
    except ImportError as exc:
        from edge_runtime.extras import install_hint

        plots = []
        document.setdefault("warnings", []).append(
            f"no plots: matplotlib is missing ({exc}); {install_hint('bench')}"
        )
    written = {"json": folder / BENCH_JSON, "markdown": folder / BENCH_MD}
    atomic_write_text(written["markdown"], render_markdown(document, plots=[p.name for p in plots]))
    atomic_write_json(written["json"], document)
    for plot in plots:
        written[plot.stem] = plot
    return written


def _remove_old_results(folder: Path) -> None:
    """Only the files of a bench report: a watch.json or a user's notes in the folder stay."""
    for name in BENCH_FILES:
        (folder / name).unlink(missing_ok=True)


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read a bench.json and check its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / BENCH_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchInputError(f"{path}: cannot read benchmark results ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise BenchInputError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("schema") != BENCH_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise BenchInputError(
            f"{path}: schema {found!r} is not {BENCH_SCHEMA}; is this a 'pneumo bench' bench.json?"
        )
    return document


# --------------------------------------------------------------------------- Markdown


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _with_ci(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "-"
    ci = (metrics.get("ci95") or {}).get(name)
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {"keras": 0, "ort-cpu": 1, "ort-cuda": 2, "ort-trt": 3, "trt": 4}
    precision = {"fp32": 0, "fp16": 1, "int8": 2}
    return sorted(
        rows, key=lambda r: (r["batch"], order.get(r["backend"], 9), precision.get(r["precision"], 9))
    )


def _tail(lat: dict[str, Any], name: str) -> str:
    """p95/p99 from too few calls would pass the max off as a tail: "-" instead (the JSON keeps the number)."""
    return _fmt(lat[name], 3) if lat.get("count", 0) >= MIN_CALLS_FOR_TAIL else "-"


def performance_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for r in _sorted_rows(document.get("rows", [])):
        lat = r["latency_ms"]
        e2e = r.get("end_to_end") or {}
        gpu = r.get("gpu_compute_ms") or {}
        power = r.get("power") or {}
        rows.append(
            [
                r["backend"],
                r["precision"],
                str(r["batch"]),
                _fmt(r["throughput_ips"], 1),
                _fmt(r.get("speedup_vs_keras"), 2, "x"),
                _fmt(lat["mean"], 3),
                _fmt(lat["median"], 3),
                _fmt(lat["p90"], 3),
                _tail(lat, "p95"),
                _tail(lat, "p99"),
                f"{lat['cv']:.0%}" + (" ⚠" if lat["cv"] > UNSTABLE_CV else ""),
                _fmt(gpu.get("mean"), 3),
                _fmt(e2e.get("throughput_ips"), 1),
                _fmt(e2e.get("preprocess_ms_per_image"), 2),
                _size(r.get("model_bytes")),
                _size(r.get("engine_bytes")),
                _fmt(r.get("engine_build_s"), 1),
                _fmt(power.get("mean_power_w"), 1),
                _fmt(power.get("images_per_joule"), 1),
            ]
        )
    header = [
        "backend",
        "precision",
        "batch",
        "images/s",
        "vs Keras",
        "mean ms",
        "median ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "CV",
        "GPU compute ms",
        "e2e images/s",
        "preprocess ms/img",
        "model",
        "engine",
        "build s",
        "power W",
        "images/J",
    ]
    return _table(header, rows)


def accuracy_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for a in document.get("accuracy", []):
        agreement = a.get("agreement") or {}
        rows.append(
            [
                a["backend"],
                a["precision"],
                str(a.get("n_images", "-")),
                _with_ci(a, "accuracy"),
                _with_ci(a, "sensitivity"),
                _with_ci(a, "specificity"),
                _with_ci(a, "roc_auc"),
                _fmt(agreement.get("max_abs_probability_diff"), 5),
                _fmt(agreement.get("decisions_changed")),
                agreement.get("reference", "-"),
            ]
        )
    header = [
        "backend",
        "precision",
        "images",
        "accuracy [95% CI]",
        "sensitivity",
        "specificity",
        "ROC AUC",
        "max |Δp|",
        "decisions changed",
        "vs",
    ]
    return _table(header, rows)


def cold_start_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for c in document.get("cold_start", []):
        if "error" in c:
            rows.append([c["backend"], c["precision"], "failed: " + c["error"], "", "", "", "", ""])
            continue
        rows.append(
            [
                c["backend"],
                c["precision"],
                f"{c['cold_start_s']:.2f} (median of {c['repeats']})",
                _fmt(c["import_s"]),
                _fmt(c["load_s"]),
                _fmt(c["first_inference_s"], 3),
                _fmt(c["peak_rss_mb"], 0),
                _fmt(c.get("gpu_memory_mb"), 0),
            ]
        )
    header = [
        "runtime",
        "precision",
        "cold start s",
        "import s",
        "load s",
        "first inference s",
        "peak RSS MB",
        "GPU MB",
    ]
    return _table(header, rows)


def trtexec_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for t in document.get("trtexec", []):
        lat = t.get("latency_ms", {})
        rows.append(
            [
                t["precision"],
                str(t["batch"]),
                _fmt(t["throughput_ips"], 1),
                _fmt(t.get("python_runtime_throughput_ips"), 1),
                _fmt(t.get("python_vs_trtexec"), 3),
                _fmt(lat.get("median"), 3),
                _fmt(lat.get("p99"), 3),
                _fmt((t.get("gpu_compute_ms") or {}).get("mean"), 3),
            ]
        )
    header = [
        "precision",
        "batch",
        "trtexec images/s",
        "ours images/s",
        "ours/trtexec",
        "median ms",
        "p99 ms",
        "GPU compute ms",
    ]
    return _table(header, rows)


def targets_table(document: dict[str, Any]) -> list[str]:
    marks = {
        "met": "met ✅",
        "missed": "MISSED ❌",
        "met (unstable timing)": "met ⚠ unstable timing, not trustworthy",
        "missed (unstable timing)": "MISSED ❌ ⚠ unstable timing",
        "not measured": "not measured",
    }
    rows = [
        [t["target"], _fmt(t.get("ratio"), 3), marks.get(t["status"], t["status"]), t.get("detail", "")]
        for t in document.get("targets", [])
    ]
    return _table(["target", "ratio (same run)", "status", "detail"], rows)


def grouped_skips(skipped: list[dict[str, Any]]) -> list[str]:
    """'trt: reason' when every precision shares the reason, else 'keras fp16: reason'."""
    lines: list[str] = []
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for item in skipped:
        by_backend.setdefault(item["backend"], []).append(item)
    for backend, items in by_backend.items():
        reasons = {i["reason"] for i in items}
        if len(reasons) == 1 and all(i.get("batch") is None for i in items):
            precisions = sorted({i["precision"] for i in items if i.get("precision")})
            scope = f" ({', '.join(precisions)})" if precisions else ""
            lines.append(f"{backend}{scope}: {reasons.pop()}")
            continue
        for i in items:
            where = " ".join(
                str(x)
                for x in (backend, i.get("precision"), f"batch {i['batch']}" if i.get("batch") else None)
                if x
            )
            lines.append(f"{where}: {i['reason']}")
    return lines


def threads_line(document: dict[str, Any]) -> str:
    """What --threads asked for and the intra/inter-op pools each CPU runtime really used."""
    requested = document.get("config", {}).get("threads") or 0
    asked = f"--threads {requested}" if requested else "--threads 0 (each runtime's default)"
    seen: dict[str, dict[str, Any]] = {}
    for row in document.get("rows", []):
        settings = row.get("threads")
        if settings:
            seen.setdefault(settings["runtime"], settings)
    if not seen:
        # Results written before threads were recorded: then only ONNX Runtime was given --threads.
        return f"{asked}, applied to ONNX Runtime only (intra-op); TensorFlow and TensorRT used their own"
    pools = "; ".join(
        f"{runtime} intra-op {s['intra_op_threads']}, inter-op {s['inter_op_threads']}"
        + (f" ({s['note']})" if s.get("note") else "")
        for runtime, s in sorted(seen.items())
    )
    return (
        f"{asked}, applied to the intra-op pool of ONNX Runtime and TensorFlow (TensorRT has none); "
        f"used: {pools} (0: the runtime's default)"
    )


def render_markdown(document: dict[str, Any], plots: list[str] | None = None) -> str:
    bundle = document.get("bundle", {})
    config = document.get("config", {})
    device = document.get("device", {})
    timing = (
        f"{config.get('iterations')} timed calls"
        if config.get("iterations")
        else f"{config.get('duration_s')} s per combination (at least {config.get('min_iterations')} calls)"
    )
    lines = [f"# pneumo bench: {bundle.get('model_version', '?')} on {device.get('slug', '?')}", ""]
    if bundle.get("synthetic"):
        lines += [f"> **{SYNTHETIC_WARNING}**", ""]
    lines += [
        f"- Date: {document.get('created')} (UTC)",
        f"- Device: {summary_line(device)}",
        f"- Bundle: `{bundle.get('path')}`, model {bundle.get('model_version')} ({bundle.get('arch')}), "
        f"threshold {bundle.get('threshold')} ({bundle.get('threshold_rule')}); {bundle.get('contract')}",
        f"- Timing: {config.get('warmup_s')} s warm-up, {timing}",
        f"- Threads: {threads_line(document)}",
        f"- Command: `{document.get('command') or '(library call)'}`",
        "",
        "## Throughput and latency",
        "",
        "Pure inference on one preprocessed batch (host wall time per call; GPU compute from CUDA events for "
        "`trt` only). `e2e` adds reading, JPEG decoding and preprocessing (edge_runtime.preprocess). "
        "`vs Keras` is the ratio to the Keras row of the same batch in this run.",
        "",
        *performance_table(document),
        "",
    ]
    if document.get("accuracy"):
        lines += [
            "## Accuracy on the test split",
            "",
            f"At the bundle's threshold {bundle.get('threshold')}; positive = abnormal. "
            f"Images: {document['accuracy'][0].get('test_images', '?')}.",
            "",
            *accuracy_table(document),
            "",
        ]
    else:
        lines += [
            "## Accuracy on the test split",
            "",
            "**Not measured** (no labelled test images): no row is a complete result.",
            "",
        ]
    if document.get("cold_start"):
        lines += ["## Cold start and peak memory (fresh process each)", "", *cold_start_table(document), ""]
    if document.get("trtexec"):
        lines += ["## trtexec --loadEngine on the same engines", "", *trtexec_table(document), ""]
    if document.get("watch"):
        from benchmarks.watch_bench import watch_markdown

        lines += ["## Watch daemon: inbox to result file", "", *watch_markdown(document["watch"]), ""]
    lines += ["## Targets", "", *targets_table(document), ""]
    for title, key in (("Notes", "notes"), ("Warnings", "warnings")):
        if document.get(key):
            lines += [f"## {title}", "", *[f"- {item}" for item in document[key]], ""]
    skipped = grouped_skips(document.get("skipped", []))
    lines += ["## Skipped here", ""] + ([f"- {line}" for line in skipped] or ["- nothing"]) + [""]
    if plots:
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({p})" for p in plots], ""]
    lines += [f"_{DECISION_SUPPORT}_", ""]
    return "\n".join(lines)


def summary_lines(document: dict[str, Any]) -> list[str]:
    """A short plain-text summary for the terminal."""
    lines = [
        f"{'backend':<9} {'prec':<5} {'batch':>5} {'images/s':>10} {'vs keras':>9} {'p50 ms':>9} {'p99 ms':>9} {'CV':>5}"
    ]
    for r in _sorted_rows(document.get("rows", [])):
        lat = r["latency_ms"]
        speed = f"{r['speedup_vs_keras']:.2f}x" if r.get("speedup_vs_keras") else "-"
        lines.append(
            f"{r['backend']:<9} {r['precision']:<5} {r['batch']:>5} {r['throughput_ips']:>10.1f} {speed:>9} "
            f"{lat['median']:>9.3f} {_tail(lat, 'p99'):>9} {lat['cv']:>5.0%}"
        )
    for a in document.get("accuracy", []):
        lines.append(
            f"accuracy {a['backend']} {a['precision']}: {_fmt(a.get('accuracy'), 3)} "
            f"(sens {_fmt(a.get('sensitivity'), 3)}, spec {_fmt(a.get('specificity'), 3)}, AUC {_fmt(a.get('roc_auc'), 3)})"
        )
    watch = document.get("watch")
    if watch:
        lines.append(
            f"watch daemon: {watch.get('throughput_ips') or 0:.1f} images/s inbox to results.jsonl "
            f"({watch.get('done', 0)} of {watch.get('dropped', 0)} images done, {watch.get('missing', 0)} missing)"
        )
    for t in document.get("targets", []):
        lines.append(
            f"target: {t['target']}: {t['status']}"
            + (f" (ratio {t['ratio']:.2f})" if t.get("ratio") is not None else "")
        )
    lines += [f"skipped {line}" for line in grouped_skips(document.get("skipped", []))]
    lines += [f"warning: {w}" for w in document.get("warnings", [])]
    return lines


# --------------------------------------------------------------------------- compare


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (row["backend"], row["precision"], int(row["batch"]))


#: Settings that change what a timing means; two runs that differ in one are not a device comparison.
_COMPARED_CONFIG = ("threads", "iterations", "duration_s", "warmup_s", "min_iterations", "test_limit", "seed")


def _unstable_row(row: dict[str, Any] | None) -> bool:
    return row is not None and bool(row["latency_ms"]["cv"] > UNSTABLE_CV)


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs timed the same model file (sha256 when both have it, else the model version)."""
    ba, bb = a.get("bundle", {}), b.get("bundle", {})
    if ba.get("model_sha256") and bb.get("model_sha256"):
        return bool(ba["model_sha256"] == bb["model_sha256"])
    return bool(ba.get("model_version") == bb.get("model_version"))


def _test_set(document: dict[str, Any]) -> tuple[Any, ...] | None:
    first = (document.get("accuracy") or [None])[0]
    return (first.get("n_images"), first.get("n_abnormal"), first.get("n_normal")) if first else None


def compare_warnings(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Why B/A ratios of two runs are not (only) a device comparison: model, settings, test set, unstable rows."""
    warnings: list[str] = []
    if not same_model(a, b):
        ba, bb = a.get("bundle", {}), b.get("bundle", {})
        warnings.append(
            f"different models (A: {ba.get('model_version')} sha256 {str(ba.get('model_sha256'))[:12]}, "
            f"B: {bb.get('model_version')} sha256 {str(bb.get('model_sha256'))[:12]}): B/A ratios mix model "
            "and device, and accuracies are of different models; compare the same bundle on both devices"
        )
    ca, cb = a.get("config", {}), b.get("config", {})
    differing = [f"{k} {ca.get(k)} vs {cb.get(k)}" for k in _COMPARED_CONFIG if ca.get(k) != cb.get(k)]
    if differing:
        warnings.append(
            f"different settings ({', '.join(differing)}): B/A ratios mix settings and device; "
            "re-run one side with the other's settings"
        )
    if _test_set(a) != _test_set(b):
        warnings.append(
            f"different test sets (images, abnormal, normal: A {_test_set(a)}, B {_test_set(b)}): "
            "accuracies are not comparable"
        )
    for name, document in (("A", a), ("B", b)):
        unstable = [
            f"{r['backend']} {r['precision']} b{r['batch']} CV {r['latency_ms']['cv']:.0%}"
            for r in document.get("rows", [])
            if _unstable_row(r)
        ]
        if unstable:
            warnings.append(
                f"{name} has rows with unstable timing (CV > {UNSTABLE_CV:.0%}): {', '.join(unstable)}; "
                "their ratios are marked ⚠ and are not trustworthy"
            )
    return warnings


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows of two runs matched by backend, precision and batch; B/A throughput ratios and why to doubt them."""
    rows_a = {_key(r): r for r in a.get("rows", [])}
    rows_b = {_key(r): r for r in b.get("rows", [])}
    acc_a = {(x["backend"], x["precision"]): x for x in a.get("accuracy", [])}
    acc_b = {(x["backend"], x["precision"]): x for x in b.get("accuracy", [])}
    order = {"keras": 0, "ort-cpu": 1, "ort-cuda": 2, "ort-trt": 3, "trt": 4}
    precision = {"fp32": 0, "fp16": 1, "int8": 2}
    keys = sorted(set(rows_a) | set(rows_b), key=lambda k: (k[2], order.get(k[0], 9), precision.get(k[1], 9)))
    rows = []
    for key in keys:
        ra, rb = rows_a.get(key), rows_b.get(key)
        ta = ra["throughput_ips"] if ra else None
        tb = rb["throughput_ips"] if rb else None
        rows.append(
            {
                "backend": key[0],
                "precision": key[1],
                "batch": key[2],
                "a_throughput_ips": ta,
                "b_throughput_ips": tb,
                "b_over_a": round(tb / ta, 4) if ta and tb else None,
                "a_median_ms": ra["latency_ms"]["median"] if ra else None,
                "b_median_ms": rb["latency_ms"]["median"] if rb else None,
                "a_accuracy": (acc_a.get(key[:2]) or {}).get("accuracy"),
                "b_accuracy": (acc_b.get(key[:2]) or {}).get("accuracy"),
                "unstable": _unstable_row(ra) or _unstable_row(rb),
            }
        )
    cold = []
    cold_a = {(c["backend"], c["precision"]): c for c in a.get("cold_start", []) if "error" not in c}
    cold_b = {(c["backend"], c["precision"]): c for c in b.get("cold_start", []) if "error" not in c}
    for runtime in sorted(set(cold_a) | set(cold_b)):
        ca, cb = cold_a.get(runtime, {}), cold_b.get(runtime, {})
        cold.append(
            {
                "backend": runtime[0],
                "precision": runtime[1],
                "a_cold_start_s": ca.get("cold_start_s"),
                "b_cold_start_s": cb.get("cold_start_s"),
                "a_peak_rss_mb": ca.get("peak_rss_mb"),
                "b_peak_rss_mb": cb.get("peak_rss_mb"),
            }
        )
    targets_b = {t["key"]: t for t in b.get("targets", [])}
    targets = [
        {
            "target": t["target"],
            "a_status": t["status"],
            "a_ratio": t.get("ratio"),
            "b_status": targets_b.get(t["key"], {}).get("status"),
            "b_ratio": targets_b.get(t["key"], {}).get("ratio"),
        }
        for t in a.get("targets", [])
    ]
    return {
        "a": _run_label(a),
        "b": _run_label(b),
        "same_model": same_model(a, b),
        "warnings": compare_warnings(a, b),
        "rows": rows,
        "cold_start": cold,
        "targets": targets,
    }


def _run_label(document: dict[str, Any]) -> dict[str, Any]:
    bundle = document.get("bundle", {})
    return {
        "device": document.get("device", {}).get("slug"),
        "device_summary": summary_line(document.get("device", {})),
        "created": document.get("created"),
        "model_version": bundle.get("model_version"),
        "synthetic": bundle.get("synthetic"),
        "command": document.get("command"),
    }


def render_compare(comparison: dict[str, Any]) -> str:
    lines = _compare_heading(comparison["a"], comparison["b"])
    lines += [f"warning: {w}" for w in comparison.get("warnings", [])]
    if comparison.get("warnings"):
        lines += [""]
    lines += _compare_rows_table(comparison)
    if comparison["cold_start"]:
        lines += ["", *_compare_cold_start_table(comparison["cold_start"])]
    if comparison["targets"]:
        lines += ["", *_compare_targets_table(comparison["targets"])]
    return "\n".join(lines) + "\n"


def _compare_heading(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Which run is A and which is B: device, date, model and the device summary under each."""
    return [
        f"A: {a['device']} {a['created']} model {a['model_version']}"
        + (" SYNTHETIC" if a.get("synthetic") else ""),
        f"   {a['device_summary']}",
        f"B: {b['device']} {b['created']} model {b['model_version']}"
        + (" SYNTHETIC" if b.get("synthetic") else ""),
        f"   {b['device_summary']}",
        "",
    ]


def _compare_rows_table(comparison: dict[str, Any]) -> list[str]:
    # The column says what a ratio compares, so a copied table cannot pass a model change off as a device's.
    ratio = "B/A (device)" if comparison.get("same_model", True) else "B/A (model AND device)"
    rows = [
        [
            r["backend"],
            r["precision"],
            str(r["batch"]),
            _fmt(r["a_throughput_ips"], 1),
            _fmt(r["b_throughput_ips"], 1),
            _fmt(r["b_over_a"], 2, "x") + (" ⚠" if r.get("unstable") else ""),
            _fmt(r["a_median_ms"], 3),
            _fmt(r["b_median_ms"], 3),
            _fmt(r["a_accuracy"], 3),
            _fmt(r["b_accuracy"], 3),
        ]
        for r in comparison["rows"]
    ]
    return _table(
        [
            "backend",
            "precision",
            "batch",
            "A images/s",
            "B images/s",
            ratio,
            "A median ms",
            "B median ms",
            "A accuracy",
            "B accuracy",
        ],
        rows,
    )


def _compare_cold_start_table(cold_start: list[dict[str, Any]]) -> list[str]:
    return _table(
        ["runtime", "precision", "A cold start s", "B cold start s", "A peak RSS MB", "B peak RSS MB"],
        (
            [
                c["backend"],
                c["precision"],
                _fmt(c["a_cold_start_s"]),
                _fmt(c["b_cold_start_s"]),
                _fmt(c["a_peak_rss_mb"], 0),
                _fmt(c["b_peak_rss_mb"], 0),
            ]
            for c in cold_start
        ),
    )


def _compare_targets_table(targets: list[dict[str, Any]]) -> list[str]:
    return _table(
        ["target", "A", "B"],
        (
            [
                t["target"],
                f"{t['a_status']} {_fmt(t['a_ratio'], 2)}",
                f"{t['b_status'] or '-'} {_fmt(t['b_ratio'], 2)}",
            ]
            for t in targets
        ),
    )
