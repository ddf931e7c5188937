"""Cold-start children, run for real in fresh processes: READY right after the first inference,
memory read with the model loaded, teardown after the parent stopped its clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.coldstart import ColdStartSpec, _one_child, measure_cold_start


def _check_order(run: dict[str, object]) -> None:
    assert "error" not in run, run
    # The child wrote READY (where the parent stops its clock) before it began to close, so
    # cold_start_s holds no teardown; the parent saw that line after it was written (one system clock).
    assert 0 < run["ready_written_monotonic"] <= run["close_started_monotonic"]  # type: ignore[operator]
    assert run["ready_written_monotonic"] - 1.0 <= run["ready_seen_monotonic"]  # type: ignore[operator]
    # The model answered once more after the memory readings: they were taken with it loaded.
    assert run["memory_read_while_loaded"] is True
    assert run["teardown_s"] >= 0  # type: ignore[operator]
    assert run["peak_rss_mb"] > 10  # type: ignore[operator]


def test_edge_child_reads_memory_loaded_and_closes_after_ready(tiny_bundle: Path) -> None:
    spec = ColdStartSpec(kind="edge", backend="ort-cpu", precision="fp32", bundle=tiny_bundle)
    run = _one_child(spec, timeout_s=120)
    _check_order(run)
    assert run["gpu_memory_mb"] is None and run["gpu_memory_note"] == "CPU backend"
    assert 0 < run["first_inference_s"] < run["cold_start_s"]

    summary = measure_cold_start(spec, repeats=2, timeout_s=120)
    assert summary["repeats"] == 2 and summary["memory_read_while_loaded"] is True
    assert summary["teardown_s"] >= 0 and summary["peak_rss_mb"] > 10


@pytest.mark.tf
def test_keras_child_keeps_its_model_until_memory_is_read(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from tests.benchmarks.test_keras_row import save_keras_twin

    run_folder = save_keras_twin(tmp_path / "run", tiny_bundle)
    spec = ColdStartSpec(
        kind="keras",
        backend="keras",
        precision="fp32",
        bundle=tiny_bundle,
        h5=run_folder / "model.h5",
        threads=1,
    )
    run = _one_child(spec, timeout_s=300)
    _check_order(run)
    assert 0 < run["first_inference_s"] < run["cold_start_s"]
