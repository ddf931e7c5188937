"""``pneumo bench`` through its main(): exit codes, files written, --json, --compare, --auto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.cli import main
from tests.benchmarks.test_run import labelled_folder
from tests.conftest import REPO

QUICK = [
    "--iterations",
    "10",
    "--warmup",
    "0",
    "--batch",
    "1",
    "--cold-start-repeats",
    "0",
    "--bootstrap",
    "10",
    "--quiet",
]


def test_bench_writes_results_and_prints_json(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = labelled_folder(tmp_path / "test", per_class=2)
    out = tmp_path / "results"
    code = main(
        [str(tiny_bundle), "--data", str(data), "--backends", "ort-cpu,trt", "-o", str(out), "--json", *QUICK]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["rows"][0]["backend"] == "ort-cpu"
    assert any(s["backend"] == "trt" and s["reason"] for s in document["skipped"])
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["bench.json", "bench.md", "latency.png", "throughput.png"]
    assert "pneumo bench --compare" in captured.err  # the next command
    assert document["command"].startswith("pneumo bench ")


def test_compare_two_results(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    for _ in range(2):
        assert main([str(tiny_bundle), "--backends", "ort-cpu", "--no-e2e", "-o", str(out), *QUICK]) == 0
    first, second = sorted(out.rglob("bench.json"))
    capsys.readouterr()
    assert main(["--compare", str(first), str(second)]) == 0
    text = capsys.readouterr().out
    assert "| ort-cpu | fp32 | 1 |" in text and "B/A" in text
    assert main(["--compare", str(first), str(second), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["rows"][0]["b_over_a"] > 0
    assert comparison["same_model"] is True and isinstance(comparison["warnings"], list)

    other = json.loads(second.read_text())
    other["bundle"]["model_version"], other["bundle"]["model_sha256"] = "other-model", "f" * 64
    second.write_text(json.dumps(other))
    assert main(["--compare", str(first), str(second), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["same_model"] is False
    assert any("B/A ratios mix model and device" in w for w in comparison["warnings"])
    assert main(["--compare", str(first), str(second)]) == 0
    assert "B/A (model AND device)" in capsys.readouterr().out


def test_usage_errors_exit_2(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "BUNDLE" in capsys.readouterr().err
    assert main([str(tiny_bundle), "--backends", "tflite"]) == 2
    assert "--backends" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bundle), "--iterations", "3", "--duration", "2"])
    assert exc.value.code == 2
    assert main([str(tiny_bundle), "--iterations", "1"]) == 2  # one call: CV 0 and p99 = the call
    assert "--iterations 1: must be within 10" in capsys.readouterr().err


def test_a_bad_watch_setting_is_refused_before_the_benchmark(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    missing = tmp_path / "no-images"
    base = [str(tiny_bundle), "--backends", "ort-cpu", "-o", str(out), *QUICK, "--watch-images", str(missing)]
    assert main([*base, "--watch-count", "0"]) == 2
    assert "--watch-count" in capsys.readouterr().err
    assert main([*base, "--watch-count", "4"]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "image folder not found" in err
    assert not out.exists()  # refused before anything was measured or written


@pytest.mark.parametrize("blocked", [False, True], ids=["plain", "sigterm-blocked-by-parent"])
def test_sigterm_cleans_up_like_ctrl_c(tiny_bundle: Path, tmp_path: Path, blocked: bool) -> None:
    """``timeout 60 pneumo bench ...`` must not leave /tmp/pneumo-bench-*/ behind, also when the
    parent started it with SIGTERM blocked (an inherited mask once left it running after SIGTERM)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # PYTHONFAULTHANDLER: if it ever hangs after SIGTERM, SIGABRT makes it print every thread's stack
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    argv = [
        sys.executable,
        "-m",
        "edge_runtime.pneumo_cli",
        "bench",
        str(tiny_bundle),
        "--backends",
        "ort-cpu",
    ]
    argv += ["--batch", "1", "--duration", "600", "--warmup", "0", "--cold-start-repeats", "0"]
    argv += ["--no-e2e", "--no-trtexec", "-o", str(tmp_path / "out"), "--quiet"]

    def block_sigterm() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=block_sigterm if blocked else None,
    )
    try:
        deadline = time.monotonic() + 120  # a wait for the run to start, not a timing
        while (
            not list(scratch.glob("pneumo-bench-*")) and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert list(scratch.glob("pneumo-bench-*")), "the benchmark never made its scratch folder"
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"still running 60 s after SIGTERM; its stacks at SIGABRT:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err  # what Ctrl-C gives
    assert "interrupted" in err
    assert list(scratch.glob("pneumo-*")) == []


def test_a_file_name_as_results_root_is_refused_before_the_run(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    for argv in (
        [str(tiny_bundle), "-o", str(out / "bench.json")],
        ["watch", str(tiny_bundle), "--images", str(tmp_path), "-o", str(out / "watch.md")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "results root folder" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # nothing measured, nothing written


def test_failures_exit_1_with_the_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "no-bundle"), *QUICK]) == 1
    assert "no-bundle" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["--compare", str(bad), str(bad)]) == 1
    assert "bad.json" in capsys.readouterr().err


def test_auto_without_a_bundle_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--auto", "-o", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "make demo" in err and "pneumo export bundle" in err
    assert not (tmp_path / "out").exists()


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "pneumo bench --auto" in capsys.readouterr().out
