"""The benchmark end to end on the tiny bundle with real ONNX Runtime (few iterations, nothing timed)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import BENCH_SCHEMA
from benchmarks.errors import BenchConfigError
from benchmarks.report import BENCH_JSON, BENCH_MD, compare, load_bench, render_compare, write_report
from benchmarks.run import BenchConfig, make_batch, run_benchmark
from edge_runtime.bundle import write_manifest
from tests.conftest import write_image


def labelled_folder(root: Path, per_class: int = 4) -> Path:
    """NORMAL images dark, PNEUMONIA bright: the tiny model scores them correctly."""
    rng = np.random.default_rng(1)
    for label, mean in (("NORMAL", 50), ("PNEUMONIA", 200)):
        for i in range(per_class):
            image = np.clip(rng.normal(mean, 20, (60, 70)), 0, 255).astype(np.uint8)
            write_image(root / label / f"{label.lower()}_{i}.jpeg", image)
    return root


def quick_config(bundle: Path, data: Path | None, **overrides: object) -> BenchConfig:
    settings: dict[str, object] = {
        "bundle": bundle,
        "backends": ("trt", "ort-cuda", "ort-cpu", "keras"),
        "batches": (1, 2),
        "iterations": 10,
        "warmup_s": 0.0,
        "data": data,
        "bootstrap": 20,
        "cold_start_repeats": 1,
        "progress": False,
        "command": "pneumo bench test",
    }
    settings.update(overrides)
    return BenchConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def all_precision_bundle(tiny_bundle: Path) -> Path:
    """The tiny bundle with its (uint8-in, float-out) model also filed as the FP16 and INT8 graphs."""
    for name in ("model_fp16.onnx", "model_int8_qdq.onnx"):
        shutil.copyfile(tiny_bundle / "model.onnx", tiny_bundle / name)
    write_manifest(tiny_bundle)
    return tiny_bundle


def test_bench_document_on_the_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    data = labelled_folder(tmp_path / "test")
    document = run_benchmark(quick_config(tiny_bundle, data))

    assert document["schema"] == BENCH_SCHEMA
    assert document["bundle"]["model_version"] == "tiny-test-1" and document["bundle"]["synthetic"] is True
    assert document["device"]["cpu_model"] and document["device"]["onnxruntime"]
    rows = document["rows"]
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("ort-cpu", "fp32", 1),
        ("ort-cpu", "fp32", 2),
    ]
    for row in rows:
        lat = row["latency_ms"]
        assert lat["count"] == 10
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert row["throughput_ips"] > 0
        assert row["gpu_compute_ms"] is None and "CUDA events" in row["gpu_compute_note"]
        assert row["end_to_end"]["throughput_ips"] > 0 and row["end_to_end"]["preprocess_ms_per_image"] > 0
        assert row["model_file"] == "model.onnx" and row["model_bytes"] > 0
        assert len(row["latency_quantiles_ms"]) == 101
        assert row["speedup_vs_keras"] is None  # no Keras row in this run
        assert row["tail_latency_meaningful"] is False  # 10 calls: p95/p99 are not a tail
        assert any("only 10 timed calls: p95/p99" in w for w in row["warnings"])
    assert any(w.startswith("fewer than 100 timed calls in 2 of 2 rows") for w in document["warnings"])

    accuracy = document["accuracy"]
    assert len(accuracy) == 1 and accuracy[0]["n_images"] == 8
    assert (
        accuracy[0]["accuracy"] == 1.0
        and accuracy[0]["sensitivity"] == 1.0
        and accuracy[0]["specificity"] == 1.0
    )

    cold = document["cold_start"]
    assert len(cold) == 1 and "error" not in cold[0], cold
    assert cold[0]["cold_start_s"] > 0 and cold[0]["peak_rss_mb"] > 10

    reasons = {(s["backend"], s["precision"]): s["reason"] for s in document["skipped"]}
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT not installed" in reasons[("trt", "fp32")]
    if ("ort-cuda", "fp32") in reasons:  # where CUDA really loads, that row is measured instead
        assert "CUDAExecutionProvider" in reasons[("ort-cuda", "fp32")]
    assert "no model_int8_qdq.onnx" in reasons[("ort-cpu", "int8")]
    assert "not a Keras precision" in reasons[("keras", "fp16")]
    assert "--keras" in reasons[("keras", "fp32")]
    statuses = {t["key"]: t["status"] for t in document["targets"]}
    assert statuses["cpu_ort_fp32_vs_keras_b1"] == "not measured"
    json.dumps(document)  # strict JSON-serialisable


def test_every_precision_runs_and_has_its_accuracy(all_precision_bundle: Path, tmp_path: Path) -> None:
    data = labelled_folder(tmp_path / "test", per_class=2)
    document = run_benchmark(
        quick_config(
            all_precision_bundle,
            data,
            backends=("ort-cpu",),
            batches=(1,),
            cold_start_repeats=0,
            end_to_end=False,
        )
    )
    assert {r["precision"] for r in document["rows"]} == {"fp32", "fp16", "int8"}
    assert {a["precision"] for a in document["accuracy"]} == {"fp32", "fp16", "int8"}
    int8 = next(a for a in document["accuracy"] if a["precision"] == "int8")
    assert int8["agreement"]["reference"] == "ort-cpu fp32"
    assert int8["agreement"]["max_abs_probability_diff"] == 0.0  # the same graph filed three times
    assert all(r["end_to_end"] is None for r in document["rows"])


def test_without_test_images_the_report_says_accuracy_is_missing(tiny_bundle: Path) -> None:
    document = run_benchmark(
        quick_config(tiny_bundle, None, backends=("ort-cpu",), batches=(1,), cold_start_repeats=0)
    )
    assert document["accuracy"] == []
    assert any("accuracy not measured" in w for w in document["warnings"])
    assert "generated" in document["rows"][0]["end_to_end"]["files"]


def test_relative_paths_from_another_folder(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cold-start child runs in the checkout: relative bundle and image paths must reach it resolved."""
    labelled_folder(tmp_path / "test", per_class=2)
    monkeypatch.chdir(tmp_path)
    document = run_benchmark(
        quick_config(Path("bundle"), Path("test"), backends=("ort-cpu",), batches=(1,), end_to_end=False)
    )
    (cold,) = document["cold_start"]
    assert "error" not in cold, cold
    assert cold["cold_start_s"] > 0
    assert not any("cold start" in w for w in document["warnings"])


def test_report_files_and_compare(tiny_bundle: Path, tmp_path: Path) -> None:
    data = labelled_folder(tmp_path / "test", per_class=2)
    document = run_benchmark(quick_config(tiny_bundle, data, cold_start_repeats=0, threads=1))
    ort = next(r for r in document["rows"] if r["backend"] == "ort-cpu")
    assert ort["threads"]["runtime"] == "onnxruntime"
    assert (ort["threads"]["requested"], ort["threads"]["intra_op_threads"]) == (1, 1)
    first = write_report(document, tmp_path / "results")
    second = write_report(document, tmp_path / "results")
    assert first["json"].parent.parent.name == document["device"]["slug"]
    assert first["json"].parent.name == document["date"]
    assert second["json"].parent.name == f"{document['date']}-2"  # never over an earlier run
    markdown = first["markdown"].read_text()
    assert first["markdown"].name == BENCH_MD and first["json"].name == BENCH_JSON
    line = next(x for x in markdown.splitlines() if x.startswith("| ort-cpu | fp32 | 1 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[7] != "-" and cells[8:10] == ["-", "-"]  # p90 shown; p95/p99 of 10 calls are not
    assert "- Threads: --threads 1, applied to the intra-op pool of ONNX Runtime and TensorFlow" in markdown
    assert "onnxruntime intra-op 1," in markdown
    for text in (
        "| ort-cpu | fp32 | 1 |",
        "## Accuracy on the test split",
        "## Skipped here",
        "- trt (",
        "SYNTHETIC",
        "pneumo bench test",
    ):
        assert text in markdown
    for name in ("throughput", "latency"):
        png = first[name]
        assert png.suffix == ".png" and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in markdown

    a = load_bench(first["json"])
    b = json.loads(second["json"].read_text())
    b["rows"][0]["throughput_ips"] = a["rows"][0]["throughput_ips"] * 2
    comparison = compare(a, b)
    row = comparison["rows"][0]
    assert (row["backend"], row["precision"], row["batch"]) == ("ort-cpu", "fp32", 1)
    assert row["b_over_a"] == pytest.approx(2.0, rel=1e-3)
    assert "ort-cpu | fp32 | 1" in render_compare(comparison)
    assert comparison["same_model"] is True
    assert not any(w.startswith("different") for w in comparison["warnings"])

    b["bundle"]["model_sha256"] = "0" * 64
    b["config"]["threads"] = 4
    for r in b["rows"]:
        r["latency_ms"]["cv"] = 0.5
    comparison = compare(a, b)
    assert comparison["same_model"] is False
    warnings = comparison["warnings"]
    assert any(w.startswith("different models") and "mix model and device" in w for w in warnings)
    assert any(w.startswith("different settings (threads 1 vs 4)") for w in warnings)
    assert any(
        w.startswith("B has rows with unstable timing") and "ort-cpu fp32 b1 CV 50%" in w for w in warnings
    )
    assert all(r["unstable"] for r in comparison["rows"])
    text = render_compare(comparison)
    assert "| B/A (model AND device) |" in text and "warning: different models" in text
    assert "2.00x ⚠" in text


def test_overwrite_leaves_no_file_of_the_earlier_run(tiny_bundle: Path, tmp_path: Path) -> None:
    document = run_benchmark(
        quick_config(tiny_bundle, None, backends=("ort-cpu",), batches=(1,), cold_start_repeats=0)
    )
    first = write_report(document, tmp_path / "results")
    assert first["throughput"].is_file() and first["latency"].is_file()
    (first["json"].parent / "watch.json").write_text("{}")  # another kind of result: not ours to remove
    again = write_report({**document, "rows": []}, tmp_path / "results", overwrite=True)
    assert again["json"] == first["json"]
    assert not first["throughput"].exists() and not first["latency"].exists()  # no plot of the old rows
    assert sorted(p.name for p in first["json"].parent.iterdir()) == ["bench.json", "bench.md", "watch.json"]


def test_load_bench_refuses_other_json(tmp_path: Path) -> None:
    from benchmarks.errors import BenchInputError

    path = tmp_path / "other.json"
    path.write_text('{"schema": 3}')
    with pytest.raises(BenchInputError, match="schema"):
        load_bench(path)


def test_config_bounds(tiny_bundle: Path) -> None:
    with pytest.raises(BenchConfigError, match="--backends"):
        BenchConfig(bundle=tiny_bundle, backends=("tensorflow",))
    with pytest.raises(BenchConfigError, match="--batch"):
        BenchConfig(bundle=tiny_bundle, batches=(0,))
    with pytest.raises(BenchConfigError, match="--duration"):
        BenchConfig(bundle=tiny_bundle, duration_s=0)
    with pytest.raises(BenchConfigError, match="--iterations 9: must be within 10"):
        BenchConfig(bundle=tiny_bundle, iterations=9)


def test_make_batch_cycles_the_pool() -> None:
    pool = np.arange(3 * 2 * 2 * 1, dtype=np.uint8).reshape(3, 2, 2, 1)
    batch = make_batch(pool, 5, np.float32)
    assert batch.shape == (5, 2, 2, 1) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[3], pool[0])


def test_a_model_that_will_not_load_is_skipped_and_int8_without_accuracy_is_flagged(
    all_precision_bundle: Path,
) -> None:
    (all_precision_bundle / "model_fp16.onnx").write_bytes(b"not an onnx graph")
    write_manifest(all_precision_bundle)
    document = run_benchmark(
        quick_config(
            all_precision_bundle,
            None,
            backends=("ort-cpu",),
            batches=(1,),
            cold_start_repeats=0,
            end_to_end=False,
            accuracy=False,
        )
    )
    assert [(r["precision"], r["batch"]) for r in document["rows"]] == [("fp32", 1), ("int8", 1)]
    (skip,) = [s for s in document["skipped"] if s["backend"] == "ort-cpu"]
    assert (skip["precision"], skip["batch"]) == ("fp16", None) and "model_fp16.onnx" in skip["reason"]
    assert "ort-cpu int8 has no accuracy on test images: it is not a result" in document["warnings"]
    assert document["accuracy"] == [] and document["cold_start"] == []


def _bundle_from_run(bundle: Path, run: Path) -> None:
    """What `pneumo export bundle` records: the run folder, and the .h5's sha256 in the manifest."""
    from edge_runtime.fileio import sha256_file

    run.mkdir(parents=True)
    (run / "model.h5").write_bytes(b"the .h5 the bundle was exported from")
    (bundle / "export_report.json").write_text(json.dumps({"source": {"run": str(run)}}))
    write_manifest(bundle, extra={"source_h5_sha256": sha256_file(run / "model.h5")})


def test_a_run_retrained_since_the_export_is_not_the_keras_reference(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Same folder, same model version, another .h5: its ratios and agreement would describe another model."""
    from benchmarks.auto import find_run_for
    from benchmarks.errors import BenchInputError
    from edge_runtime.bundle import Bundle

    run = tmp_path / "runs" / "tiny"
    _bundle_from_run(tiny_bundle, run)
    assert find_run_for(tmp_path, Bundle.open(tiny_bundle)) == run  # the untouched run is found
    (run / "model.h5").write_bytes(b"retrained with --overwrite")

    assert find_run_for(tmp_path, Bundle.open(tiny_bundle)) is None
    config = quick_config(
        tiny_bundle, None, backends=("ort-cpu", "keras"), batches=(1,), cold_start_repeats=0
    )
    document = run_benchmark(config)
    (keras,) = [s for s in document["skipped"] if s["backend"] == "keras" and s["precision"] == "fp32"]
    assert "is not the .h5 this bundle was exported from" in keras["reason"]
    assert document["bundle"].get("keras_h5") in (None, "")
    with pytest.raises(BenchInputError, match="model.h5 .*not the .h5 this bundle was exported from"):
        run_benchmark(quick_config(tiny_bundle, None, keras=run, backends=("ort-cpu",), batches=(1,)))
