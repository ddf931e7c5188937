"""Cold-start children, run for real in fresh processes: READY right after the first inference,
memory read with the model loaded, teardown after the parent stopped its clock."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.coldstart import _READY_LINE, _RESULT_PREFIX, ColdStartSpec, _one_child, measure_cold_start


@dataclass(frozen=True)
class _ScriptSpec(ColdStartSpec):
    """A real fresh process running ``script`` instead of the cold-start child: hangs and floods on demand."""

    script: str = ""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def _script_spec(tmp_path: Path, script: str) -> _ScriptSpec:
    return _ScriptSpec(kind="edge", backend="ort-cpu", precision="fp32", bundle=tmp_path, script=script)


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


@pytest.mark.parametrize("ready_first", [False, True], ids=["hangs-before-ready", "hangs-after-ready"])
def test_a_hung_child_is_killed_at_the_time_limit(tmp_path: Path, ready_first: bool) -> None:
    # A TensorRT engine build or a GPU hang on a Jetson: the benchmark must report it, not wait for ever.
    pid_file = tmp_path / "child.pid"
    script = (
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "sys.stderr.write('building engine\\n'); sys.stderr.flush()\n"
        + (f"print({_READY_LINE!r}, flush=True)\n" if ready_first else "")
        + "time.sleep(120)\n"
    )
    began = time.monotonic()
    run = _one_child(_script_spec(tmp_path, script), timeout_s=5.0)
    # A bound, not a timing: without the limit this call returns after the child's 120 s sleep.
    assert time.monotonic() - began < 60
    assert run["error"].startswith("fresh process did not finish within 5 s and was killed"), run
    assert "building engine" in run["error"]  # the last stderr lines say where it was stuck
    # Killed and reaped: a live child or a zombie would still answer signal 0.
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.timeout(120)
def test_a_child_flooding_stderr_before_its_result_completes(tmp_path: Path) -> None:
    # TensorRT / TensorFlow warnings: far more than a pipe holds (~64 KB), written before READY.
    script = (
        "import sys\n"
        "sys.stderr.write(('W warning from the stack ' * 4 + '\\n') * 3000); sys.stderr.flush()\n"
        f"print({_READY_LINE!r}, flush=True)\n"
        f"print({_RESULT_PREFIX!r} + '{{\"peak_rss_mb\": 12.5}}', flush=True)\n"
    )
    run = _one_child(_script_spec(tmp_path, script), timeout_s=60.0)
    assert "error" not in run, run
    assert run["peak_rss_mb"] == 12.5 and run["cold_start_s"] > 0 and run["ready_seen_monotonic"] > 0
