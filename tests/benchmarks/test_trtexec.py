"""Parsing trtexec's performance summary (format of TensorRT 8.4 - 10.x)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.trtexec import parse_performance_summary, run_trtexec

SUMMARY = """\
[08/11/2022-06:55:33] [I] === Performance summary ===
[08/11/2022-06:55:33] [I] Throughput: 233.689 qps
[08/11/2022-06:55:33] [I] Latency: min = 4.51123 ms, max = 5.53139 ms, mean = 4.54566 ms, median = 4.52756 ms, percentile(90%) = 4.6 ms, percentile(95%) = 4.7 ms, percentile(99%) = 5.51622 ms
[08/11/2022-06:55:33] [I] Enqueue Time: min = 3.5542 ms, max = 4.63188 ms, mean = 4.1058 ms, median = 4.16818 ms, percentile(99%) = 4.52371 ms
[08/11/2022-06:55:33] [I] H2D Latency: min = 0.260254 ms, max = 0.277344 ms, mean = 0.263636 ms, median = 0.263184 ms, percentile(99%) = 0.272461 ms
[08/11/2022-06:55:33] [I] GPU Compute Time: min = 4.23773 ms, max = 5.25439 ms, mean = 4.26986 ms, median = 4.25195 ms, percentile(99%) = 5.24138 ms
[08/11/2022-06:55:33] [I] D2H Latency: min = 0.00610352 ms, max = 0.0246582 ms, mean = 0.0121628 ms, median = 0.012207 ms, percentile(99%) = 0.0195312 ms
[08/11/2022-06:55:33] [I] Total Host Walltime: 3.01255 s
[08/11/2022-06:55:33] [I] Total GPU Compute Time: 3.00598 s
[08/11/2022-06:55:33] [W] * GPU compute time is unstable, with coefficient of variance = 2.9705%.
&&&& PASSED TensorRT.trtexec [TensorRT v8401]
"""


def test_parse_summary() -> None:
    summary = parse_performance_summary(SUMMARY)
    assert summary["throughput_qps"] == pytest.approx(233.689)
    assert summary["latency_ms"] == {
        "min": 4.51123,
        "max": 5.53139,
        "mean": 4.54566,
        "median": 4.52756,
        "p90": 4.6,
        "p95": 4.7,
        "p99": 5.51622,
    }
    assert summary["gpu_compute_ms"]["mean"] == pytest.approx(4.26986)
    assert summary["h2d_ms"]["p99"] == pytest.approx(0.272461)
    assert summary["host_walltime_s"] == pytest.approx(3.01255)


def test_scientific_notation_throughput() -> None:
    text = "[I] Throughput: 2.54521e+06 qps\n[I] Latency: min = 9.4 ms, max = 51.4 ms, mean = 16.5 ms, median = 11.6 ms\n"
    assert parse_performance_summary(text)["throughput_qps"] == pytest.approx(2.54521e6)


def test_output_without_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="performance summary"):
        parse_performance_summary("[E] Error[1]: engine deserialization failed\n&&&& FAILED\n")


def _fake_trtexec(folder: Path) -> Path:
    """An executable that records its argv and prints the summary, in place of the real trtexec."""
    tool = folder / "trtexec"
    tool.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        f"pathlib.Path({str(folder / 'argv.json')!r}).write_text(json.dumps(sys.argv[1:]))\n"
        f"print({SUMMARY!r})\n"
    )
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize(("dla_core", "expected"), [(None, None), (1, "--useDLACore=1")])
def test_a_dla_engine_is_timed_on_the_core_it_was_built_for(
    tmp_path: Path, dla_core: int | None, expected: str | None
) -> None:
    tool = _fake_trtexec(tmp_path)
    summary = run_trtexec(tool, tmp_path / "m.engine", 4, "input", (160, 160, 1), 1.0, 0.2, dla_core=dla_core)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert f"--loadEngine={tmp_path / 'm.engine'}" in argv and "--shapes=input:4x160x160x1" in argv
    assert [a for a in argv if a.startswith("--useDLACore")] == ([expected] if expected else [])
    assert summary["throughput_ips"] == pytest.approx(233.689 * 4)


def test_a_trtexec_that_hangs_is_a_failure_the_run_can_skip(tmp_path: Path) -> None:
    """subprocess's TimeoutExpired is no RuntimeError: uncaught, it lost every row measured before it."""
    tool = tmp_path / "trtexec"
    tool.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    tool.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"did not finish within 1 s .*by hand .*trtexec --loadEngine="):
        run_trtexec(tool, tmp_path / "m.engine", 1, "input", (160, 160, 1), 1.0, 0.0, timeout_s=1.0)
