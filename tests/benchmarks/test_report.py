"""benchmarks.report on hand-built results: table cells, tail-latency hiding, SYNTHETIC labelling,
the files written, bench.json loading errors, and the side-by-side comparison of two runs.

The documents here are small bench.json documents built by hand in the shape ``pneumo bench``
writes (see ``benchmarks/results``), so each expected cell can be worked out from the input.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BENCH_SCHEMA
from benchmarks.errors import BenchInputError
from benchmarks.report import (
    BENCH_JSON,
    BENCH_MD,
    DECISION_SUPPORT,
    accuracy_table,
    cold_start_table,
    compare,
    compare_warnings,
    grouped_skips,
    load_bench,
    performance_table,
    render_compare,
    render_markdown,
    result_folder,
    same_model,
    summary_lines,
    targets_table,
    threads_line,
    trtexec_table,
    write_report,
)
from benchmarks.stats import MIN_CALLS_FOR_TAIL, UNSTABLE_CV
from edge_runtime.contract import SYNTHETIC_WARNING

PERFORMANCE_HEADER = [
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


def latency(count: int = 200, cv: float = 0.02, median: float = 1.25) -> dict[str, Any]:
    return {
        "count": count,
        "min": median - 0.25,
        "mean": median + 0.01,
        "median": median,
        "p90": median + 0.5,
        "p95": median + 0.75,
        "p99": median + 1.0,
        "max": median + 3.0,
        "std": cv * median,
        "cv": cv,
    }


def timing_row(backend: str, precision: str, batch: int, ips: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "throughput_ips": ips,
        "latency_ms": latency(),
        "speedup_vs_keras": None,
        "model_bytes": 3_985_846,
        "engine_bytes": None,
        "engine_build_s": None,
        "gpu_compute_ms": None,
        "end_to_end": None,
        "power": None,
    }
    row.update(extra)
    return row


def scored(backend: str, precision: str, accuracy: float = 0.9279, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "n_images": 624,
        "n_abnormal": 390,
        "n_normal": 234,
        "test_images": "test split of runs/demo/split.json",
        "accuracy": accuracy,
        "sensitivity": 0.941,
        "specificity": 0.906,
        "roc_auc": 0.972,
        "ci95": {"accuracy": [0.907, 0.9487], "sensitivity": [0.9173, 0.9638]},
        "agreement": {"max_abs_probability_diff": 0.00015, "decisions_changed": 0, "reference": "keras fp32"},
    }
    entry.update(extra)
    return entry


def document(synthetic: bool = False, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": BENCH_SCHEMA,
        "created": "2026-11-24T10:00:00+00:00",
        "date": "2026-11-24",
        "command": "pneumo bench bundles/demo --duration 3",
        "config": {
            "threads": 0,
            "iterations": None,
            "duration_s": 3.0,
            "warmup_s": 1.0,
            "min_iterations": 10,
            "test_limit": None,
            "seed": 0,
        },
        "bundle": {
            "path": "bundles/demo",
            "model_version": "demo-1",
            "model_sha256": "a" * 64,
            "arch": "lite0",
            "threshold": 0.5,
            "threshold_rule": "fixed",
            "contract": "160x160 grayscale",
            "synthetic": synthetic,
        },
        "device": {
            "slug": "cpu-test-2c",
            "cpu_model": "Test CPU",
            "cpu_cores_usable": 2,
            "onnxruntime": "1.32.0",
        },
        "rows": [
            timing_row("ort-cpu", "fp32", 1, 792.571, speedup_vs_keras=33.729),
            timing_row("keras", "fp32", 1, 23.5, model_bytes=None),
        ],
        "accuracy": [scored("ort-cpu", "fp32")],
        "cold_start": [],
        "trtexec": [],
        "targets": [],
        "skipped": [],
        "warnings": [],
        "notes": [],
        "watch": None,
    }
    doc.update(overrides)
    return doc


def cells_of(lines: list[str], prefix: str) -> list[str]:
    """The cells of the one Markdown table line that starts with ``prefix``."""
    (line,) = [x for x in lines if x.startswith(prefix)]
    return [c.strip() for c in line.strip().strip("|").split("|")]


# --------------------------------------------------------------------------- Markdown tables


def test_performance_table_header_and_cells() -> None:
    row = timing_row(
        "trt",
        "fp16",
        8,
        1234.56,
        speedup_vs_keras=52.5,
        latency_ms=latency(median=6.5),
        gpu_compute_ms={"mean": 5.1234},
        end_to_end={"throughput_ips": 400.04, "preprocess_ms_per_image": 0.3462},
        model_bytes=2_007_571,
        engine_bytes=1_500,
        engine_build_s=42.25,
        power={"mean_power_w": 9.87, "images_per_joule": 125.04},
    )
    lines = performance_table(document(rows=[row]))
    assert [c.strip() for c in lines[0].strip("|").split("|")] == PERFORMANCE_HEADER
    assert lines[1] == "|" + "|".join(["---"] * len(PERFORMANCE_HEADER)) + "|"
    assert cells_of(lines, "| trt |") == [
        "trt",
        "fp16",
        "8",
        "1234.6",
        "52.50x",
        "6.510",
        "6.500",
        "7.000",
        "7.250",
        "7.500",
        "2%",
        "5.123",
        "400.0",
        "0.35",
        "2.01 MB",
        "1.50 kB",
        "42.2",
        "9.9",
        "125.0",
    ]


def test_performance_table_shows_dashes_for_what_a_row_lacks() -> None:
    cells = cells_of(performance_table(document()), "| keras |")
    # No speedup (it is the reference), GPU compute, end-to-end, model/engine file, build or power.
    assert cells[4] == "-" and cells[11:] == ["-"] * 8


def test_performance_rows_are_ordered_by_batch_then_backend_then_precision() -> None:
    rows = [
        timing_row("trt", "int8", 1, 10.0),
        timing_row("ort-cpu", "fp32", 8, 10.0),
        timing_row("trt", "fp16", 1, 10.0),
        timing_row("keras", "fp32", 1, 10.0),
        timing_row("ort-cpu", "int8", 1, 10.0),
    ]
    order = [line.split("|")[1:4] for line in performance_table(document(rows=rows))[2:]]
    assert [[c.strip() for c in o] for o in order] == [
        ["keras", "fp32", "1"],
        ["ort-cpu", "int8", "1"],
        ["trt", "fp16", "1"],
        ["trt", "int8", "1"],
        ["ort-cpu", "fp32", "8"],
    ]


@pytest.mark.parametrize(
    ("count", "shown"),
    [(MIN_CALLS_FOR_TAIL - 1, False), (MIN_CALLS_FOR_TAIL, True), (10, False)],
)
def test_p95_p99_need_enough_calls_in_table_and_summary(count: int, shown: bool) -> None:
    row = timing_row("ort-cpu", "fp32", 1, 100.0, latency_ms=latency(count=count))
    row["tail_latency_meaningful"] = shown
    doc = document(rows=[row])
    cells = cells_of(performance_table(doc), "| ort-cpu |")
    assert cells[7] == "1.750"  # p90 needs no tail, it is always shown
    assert cells[8:10] == (["2.000", "2.250"] if shown else ["-", "-"])
    summary = next(line for line in summary_lines(doc) if line.startswith("ort-cpu"))
    assert summary.split()[6] == ("2.250" if shown else "-")


def test_cv_above_the_unstable_bound_is_flagged() -> None:
    rows = [
        timing_row("ort-cpu", "fp32", 1, 100.0, latency_ms=latency(cv=UNSTABLE_CV)),
        timing_row("ort-cpu", "fp16", 1, 100.0, latency_ms=latency(cv=0.25)),
    ]
    lines = performance_table(document(rows=rows))
    assert cells_of(lines, "| ort-cpu | fp32 |")[10] == f"{UNSTABLE_CV:.0%}"  # at the bound: not flagged
    assert cells_of(lines, "| ort-cpu | fp16 |")[10] == "25% ⚠"


def test_accuracy_table_with_and_without_confidence_intervals() -> None:
    doc = document(accuracy=[scored("ort-cpu", "fp32"), scored("keras", "fp32", roc_auc=None, ci95=None)])
    lines = accuracy_table(doc)
    assert cells_of(lines, "| ort-cpu |") == [
        "ort-cpu",
        "fp32",
        "624",
        "0.928 [0.907, 0.949]",
        "0.941 [0.917, 0.964]",
        "0.906",
        "0.972",
        "0.00015",
        "0",
        "keras fp32",
    ]
    keras = cells_of(lines, "| keras |")
    assert keras[3] == "0.928" and keras[6] == "-"


def test_cold_start_table_names_a_failed_runtime() -> None:
    doc = document(
        cold_start=[
            {
                "backend": "ort-cpu",
                "precision": "fp32",
                "cold_start_s": 0.2645,
                "repeats": 3,
                "import_s": 0.1075,
                "load_s": 0.0966,
                "first_inference_s": 0.0087,
                "peak_rss_mb": 98.1,
                "gpu_memory_mb": None,
            },
            {"backend": "trt", "precision": "fp16", "error": "engine missing: run pneumo edge build"},
        ]
    )
    lines = cold_start_table(doc)
    assert cells_of(lines, "| ort-cpu |") == [
        "ort-cpu",
        "fp32",
        "0.26 (median of 3)",
        "0.11",
        "0.10",
        "0.009",
        "98",
        "-",
    ]
    assert cells_of(lines, "| trt |")[:3] == ["trt", "fp16", "failed: engine missing: run pneumo edge build"]


def test_trtexec_table_compares_our_runtime_with_trtexec() -> None:
    doc = document(
        trtexec=[
            {
                "precision": "int8",
                "batch": 8,
                "throughput_ips": 2000.0,
                "python_runtime_throughput_ips": 1900.0,
                "python_vs_trtexec": 0.95,
                "latency_ms": {"median": 3.9, "p99": 4.4},
                "gpu_compute_ms": {"mean": 3.5},
            }
        ]
    )
    assert cells_of(trtexec_table(doc), "| int8 |") == [
        "int8",
        "8",
        "2000.0",
        "1900.0",
        "0.950",
        "3.900",
        "4.400",
        "3.500",
    ]


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("met", "met ✅"),
        ("missed", "MISSED ❌"),
        ("met (unstable timing)", "met ⚠ unstable timing, not trustworthy"),
        ("missed (unstable timing)", "MISSED ❌ ⚠ unstable timing"),
        ("not measured", "not measured"),
        ("a status added later", "a status added later"),
    ],
)
def test_targets_table_marks_each_status(status: str, shown: str) -> None:
    target = {"key": "k", "target": "FP16 >= 2x FP32", "ratio": 2.34567, "status": status, "detail": "why"}
    assert cells_of(targets_table(document(targets=[target])), "| FP16") == [
        "FP16 >= 2x FP32",
        "2.346",
        shown,
        "why",
    ]


def test_grouped_skips_share_one_line_per_common_reason() -> None:
    missing = "TensorRT not installed"
    skipped = [
        {"backend": "trt", "precision": p, "batch": None, "reason": missing} for p in ("int8", "fp32", "fp16")
    ]
    skipped += [
        {"backend": "keras", "precision": "fp16", "batch": None, "reason": "Keras runs fp32 only"},
        {"backend": "keras", "precision": "int8", "batch": None, "reason": "Keras runs fp32 only"},
        {"backend": "ort-cuda", "precision": "fp32", "batch": 32, "reason": "out of GPU memory"},
        {"backend": "ort-cuda", "precision": "fp16", "batch": None, "reason": "no CUDA provider"},
    ]
    assert grouped_skips(skipped) == [
        f"trt (fp16, fp32, int8): {missing}",
        "keras (fp16, int8): Keras runs fp32 only",
        "ort-cuda fp32 batch 32: out of GPU memory",
        "ort-cuda fp16: no CUDA provider",
    ]


def test_threads_line_for_old_results_and_for_recorded_pools() -> None:
    assert threads_line(document()) == (
        "--threads 0 (each runtime's default), applied to ONNX Runtime only (intra-op); "
        "TensorFlow and TensorRT used their own"
    )
    rows = [
        timing_row(
            "ort-cpu",
            "fp32",
            1,
            1.0,
            threads={"runtime": "onnxruntime", "intra_op_threads": 2, "inter_op_threads": 0},
        ),
        timing_row(
            "keras",
            "fp32",
            1,
            1.0,
            threads={
                "runtime": "tensorflow",
                "intra_op_threads": 4,
                "inter_op_threads": 0,
                "note": "--threads 2 not applied",
            },
        ),
    ]
    doc = document(rows=rows)
    doc["config"]["threads"] = 2
    assert threads_line(doc) == (
        "--threads 2, applied to the intra-op pool of ONNX Runtime and TensorFlow (TensorRT has none); "
        "used: onnxruntime intra-op 2, inter-op 0; tensorflow intra-op 4, inter-op 0 (--threads 2 not applied) "
        "(0: the runtime's default)"
    )


# --------------------------------------------------------------------------- bench.md and the terminal summary


def test_markdown_of_a_synthetic_model_says_so_under_the_title() -> None:
    lines = render_markdown(document(synthetic=True)).splitlines()
    assert lines[0] == "# pneumo bench: demo-1 on cpu-test-2c"
    assert lines[2] == f"> **{SYNTHETIC_WARNING}**"
    assert SYNTHETIC_WARNING not in render_markdown(document(synthetic=False))


def test_markdown_sections_header_and_closing_line() -> None:
    doc = document(
        notes=["INT8 on CPU is emulated"],
        warnings=["keras row is slow"],
        skipped=[{"backend": "trt", "precision": "fp32", "batch": None, "reason": "no TensorRT"}],
    )
    text = render_markdown(doc, plots=["throughput.png"])
    lines = text.splitlines()
    for expected in (
        "- Timing: 1.0 s warm-up, 3.0 s per combination (at least 10 calls)",
        "- Command: `pneumo bench bundles/demo --duration 3`",
        "## Throughput and latency",
        "At the bundle's threshold 0.5; positive = abnormal. Images: test split of runs/demo/split.json.",
        "## Notes",
        "- INT8 on CPU is emulated",
        "## Warnings",
        "- keras row is slow",
        "- trt (fp32): no TensorRT",
        "![throughput](throughput.png)",
    ):
        assert expected in lines, expected
    assert "## Cold start and peak memory (fresh process each)" not in text  # no entries: no empty table
    assert "## trtexec --loadEngine on the same engines" not in text
    assert text.endswith(f"_{DECISION_SUPPORT}_\n")


def test_markdown_without_accuracy_says_not_measured_and_nothing_skipped() -> None:
    doc = document(accuracy=[], command=None)
    doc["config"]["iterations"] = 500
    lines = render_markdown(doc).splitlines()
    assert "**Not measured** (no labelled test images): no row is a complete result." in lines
    assert "- Timing: 1.0 s warm-up, 500 timed calls" in lines
    assert "- Command: `(library call)`" in lines
    assert lines[lines.index("## Skipped here") + 2] == "- nothing"


def test_summary_lines_for_the_terminal() -> None:
    doc = document(
        targets=[{"key": "k", "target": "ORT >= 5x Keras", "status": "met", "ratio": 33.729}],
        skipped=[{"backend": "trt", "precision": "fp32", "batch": None, "reason": "no TensorRT"}],
        warnings=["machine was busy"],
    )
    lines = summary_lines(doc)
    assert lines[0].split() == [
        "backend",
        "prec",
        "batch",
        "images/s",
        "vs",
        "keras",
        "p50",
        "ms",
        "p99",
        "ms",
        "CV",
    ]
    assert lines[1].split() == ["keras", "fp32", "1", "23.5", "-", "1.250", "2.250", "2%"]
    assert lines[2].split() == ["ort-cpu", "fp32", "1", "792.6", "33.73x", "1.250", "2.250", "2%"]
    assert lines[3:] == [
        "accuracy ort-cpu fp32: 0.928 (sens 0.941, spec 0.906, AUC 0.972)",
        "target: ORT >= 5x Keras: met (ratio 33.73)",
        "skipped trt (fp32): no TensorRT",
        "warning: machine was busy",
    ]


# --------------------------------------------------------------------------- files


def test_write_report_writes_json_markdown_and_plots_in_a_device_date_folder(tmp_path: Path) -> None:
    doc = document(synthetic=True)
    written = write_report(doc, tmp_path)
    folder = tmp_path / "cpu-test-2c" / "2026-11-24"
    assert written["json"] == folder / BENCH_JSON and written["markdown"] == folder / BENCH_MD
    assert json.loads(written["json"].read_text(encoding="utf-8")) == doc
    plots = [name for name in ("throughput", "latency") if name in written]
    markdown = written["markdown"].read_text(encoding="utf-8")
    assert markdown == render_markdown(doc, plots=[written[name].name for name in plots])
    assert f"> **{SYNTHETIC_WARNING}**" in markdown
    assert "throughput" in plots  # matplotlib is a test dependency: a throughput plot is drawn
    assert written["throughput"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_keeps_earlier_runs_unless_overwrite(tmp_path: Path) -> None:
    first = write_report(document(), tmp_path)["json"]
    second = write_report(document(), tmp_path)["json"]
    third = write_report(document(), tmp_path)["json"]
    assert [p.parent.name for p in (first, second, third)] == ["2026-11-24", "2026-11-24-2", "2026-11-24-3"]
    (first.parent / "notes.txt").write_text("mine")
    again = write_report(document(rows=[]), tmp_path, overwrite=True)
    assert again["json"] == first
    assert json.loads(first.read_text(encoding="utf-8"))["rows"] == []
    assert (first.parent / "notes.txt").read_text() == "mine"  # not a bench file: left alone


def test_result_folder_uses_the_marker_to_find_a_free_name(tmp_path: Path) -> None:
    doc = document()
    base = tmp_path / "cpu-test-2c" / "2026-11-24"
    assert result_folder(tmp_path, doc) == base
    base.mkdir(parents=True)
    (base / "watch.json").write_text("{}")
    assert result_folder(tmp_path, doc) == base  # no bench.json there yet
    assert result_folder(tmp_path, doc, marker="watch.json") == base.with_name("2026-11-24-2")
    assert result_folder(tmp_path, doc, overwrite=True, marker="watch.json") == base


def test_a_document_that_cannot_be_rendered_writes_nothing(tmp_path: Path) -> None:
    doc = document()
    del doc["rows"][0]["latency_ms"]
    with pytest.raises(KeyError, match="latency_ms"):
        write_report(doc, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_bench_reads_a_file_or_its_folder(tmp_path: Path) -> None:
    written = write_report(document(), tmp_path)
    assert load_bench(written["json"]) == document()
    assert load_bench(written["json"].parent) == document()


def test_load_bench_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / BENCH_JSON
    with pytest.raises(BenchInputError, match="cannot read benchmark results") as exc:
        load_bench(missing)
    assert str(exc.value).startswith(f"{missing}: ")
    with pytest.raises(BenchInputError, match=f"{BENCH_JSON}: cannot read"):
        load_bench(tmp_path)  # a folder without bench.json

    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": ', encoding="utf-8")
    with pytest.raises(BenchInputError, match="broken.json: not JSON"):
        load_bench(broken)

    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BenchInputError) as exc:
        load_bench(listing)
    assert str(exc.value) == (
        f"{listing}: schema None is not {BENCH_SCHEMA}; is this a 'pneumo bench' bench.json?"
    )

    watch = tmp_path / "watch.json"
    watch.write_text(json.dumps({"schema": "pneumo-watch-bench/1"}), encoding="utf-8")
    with pytest.raises(BenchInputError, match="schema 'pneumo-watch-bench/1' is not"):
        load_bench(watch)


# --------------------------------------------------------------------------- compare


def two_runs() -> tuple[dict[str, Any], dict[str, Any]]:
    a = document(
        cold_start=[
            {"backend": "ort-cpu", "precision": "fp32", "cold_start_s": 0.26, "peak_rss_mb": 98.1},
            {"backend": "trt", "precision": "fp16", "error": "no engine"},
        ],
        targets=[{"key": "ort_vs_keras", "target": "ORT >= 5x Keras", "status": "met", "ratio": 33.729}],
    )
    b = copy.deepcopy(a)
    b["device"] = {**a["device"], "slug": "jetson-orin-nano"}
    b["created"] = "2026-11-25T10:00:00+00:00"
    b["rows"][0]["throughput_ips"] = 1585.142  # ort-cpu fp32 b1: twice A's
    b["rows"][0]["latency_ms"] = latency(median=0.625)
    b["rows"].append(timing_row("trt", "fp16", 1, 3000.0))  # only B has TensorRT
    b["accuracy"][0]["accuracy"] = 0.9311
    b["cold_start"] = [
        {"backend": "ort-cpu", "precision": "fp32", "cold_start_s": 0.52, "peak_rss_mb": 120.0}
    ]
    b["targets"][0].update(status="missed", ratio=4.5)
    return a, b


def test_compare_matches_rows_and_computes_b_over_a() -> None:
    a, b = two_runs()
    comparison = compare(a, b)
    assert comparison["same_model"] is True and comparison["warnings"] == []
    assert comparison["a"]["device"] == "cpu-test-2c" and comparison["b"]["device"] == "jetson-orin-nano"
    by_key = {(r["backend"], r["precision"], r["batch"]): r for r in comparison["rows"]}
    assert list(by_key) == [("keras", "fp32", 1), ("ort-cpu", "fp32", 1), ("trt", "fp16", 1)]
    ort = by_key[("ort-cpu", "fp32", 1)]
    assert ort["b_over_a"] == round(1585.142 / 792.571, 4) == 2.0
    assert (ort["a_median_ms"], ort["b_median_ms"]) == (1.25, 0.625)
    assert (ort["a_accuracy"], ort["b_accuracy"]) == (0.9279, 0.9311)
    assert ort["unstable"] is False
    trt = by_key[("trt", "fp16", 1)]
    assert trt["a_throughput_ips"] is None and trt["b_over_a"] is None
    assert by_key[("keras", "fp32", 1)]["b_over_a"] == 1.0
    # A failed cold start is left out rather than compared as a number.
    assert comparison["cold_start"] == [
        {
            "backend": "ort-cpu",
            "precision": "fp32",
            "a_cold_start_s": 0.26,
            "b_cold_start_s": 0.52,
            "a_peak_rss_mb": 98.1,
            "b_peak_rss_mb": 120.0,
        }
    ]
    assert comparison["targets"] == [
        {
            "target": "ORT >= 5x Keras",
            "a_status": "met",
            "a_ratio": 33.729,
            "b_status": "missed",
            "b_ratio": 4.5,
        }
    ]
    assert json.loads(json.dumps(comparison)) == comparison  # what --compare --json prints


def test_render_compare_columns_and_synthetic_labels() -> None:
    a, b = two_runs()
    b["bundle"]["synthetic"] = True
    text = render_compare(compare(a, b))
    lines = text.splitlines()
    assert lines[0] == "A: cpu-test-2c 2026-11-24T10:00:00+00:00 model demo-1"
    assert lines[2] == "B: jetson-orin-nano 2026-11-25T10:00:00+00:00 model demo-1 SYNTHETIC"
    header = cells_of(lines, "| backend |")
    assert header[5] == "B/A (device)"
    assert cells_of(lines, "| ort-cpu | fp32 | 1 |") == [
        "ort-cpu",
        "fp32",
        "1",
        "792.6",
        "1585.1",
        "2.00x",
        "1.250",
        "0.625",
        "0.928",
        "0.931",
    ]
    assert cells_of(lines, "| trt |")[3:6] == ["-", "3000.0", "-"]
    assert cells_of(lines, "| runtime |") == [
        "runtime",
        "precision",
        "A cold start s",
        "B cold start s",
        "A peak RSS MB",
        "B peak RSS MB",
    ]
    assert cells_of(lines, "| ort-cpu | fp32 | 0.26 |") == ["ort-cpu", "fp32", "0.26", "0.52", "98", "120"]
    assert cells_of(lines, "| ORT >= 5x Keras |") == ["ORT >= 5x Keras", "met 33.73", "missed 4.50"]
    assert text.endswith("\n") and "warning:" not in text


def test_compare_warns_about_model_settings_test_set_and_unstable_rows() -> None:
    a, b = two_runs()
    b["bundle"].update(model_version="demo-2", model_sha256="b" * 64)
    b["config"]["duration_s"] = 10.0
    b["accuracy"][0]["n_images"] = 100
    b["rows"][0]["latency_ms"]["cv"] = 0.3
    warnings = compare_warnings(a, b)
    assert len(warnings) == 4
    assert warnings[0].startswith(
        f"different models (A: demo-1 sha256 {'a' * 12}, B: demo-2 sha256 {'b' * 12}): B/A ratios mix model"
    )
    assert warnings[1].startswith("different settings (duration_s 3.0 vs 10.0)")
    assert warnings[2] == (
        "different test sets (images, abnormal, normal: A (624, 390, 234), B (100, 390, 234)): "
        "accuracies are not comparable"
    )
    assert warnings[3].startswith(
        f"B has rows with unstable timing (CV > {UNSTABLE_CV:.0%}): ort-cpu fp32 b1 CV 30%"
    )
    comparison = compare(a, b)
    text = render_compare(comparison)
    assert cells_of(text.splitlines(), "| backend |")[5] == "B/A (model AND device)"
    assert cells_of(text.splitlines(), "| ort-cpu | fp32 | 1 |")[5] == "2.00x ⚠"
    assert [line for line in text.splitlines() if line.startswith("warning: ")] == [
        f"warning: {w}" for w in warnings
    ]


def test_same_model_prefers_the_file_hash_over_the_version() -> None:
    a, b = document(), document()
    assert same_model(a, b)
    b["bundle"]["model_sha256"] = "c" * 64
    assert not same_model(a, b)  # same version string, different file: not the same model
    for doc in (a, b):
        del doc["bundle"]["model_sha256"]
    assert same_model(a, b)  # no hashes (older results): the version decides
    b["bundle"]["model_version"] = "demo-2"
    assert not same_model(a, b)
