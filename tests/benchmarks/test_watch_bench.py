"""The watch-daemon benchmark: stage arithmetic on fixed times, and a real daemon on a few images."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.errors import BenchInputError
from benchmarks.watch_bench import WatchBenchConfig, analyse, run_watch_bench, watch_markdown
from tests.benchmarks.test_run import labelled_folder


def test_analyse_splits_time_by_stage() -> None:
    t0 = 1_700_000_000.0
    drops = {"a.jpeg": t0, "b.jpeg": t0 + 0.010, "c.jpeg": t0 + 0.020}
    seen = {
        "a.jpeg": (
            t0 + 0.100,
            {"status": "done", "timestamp": "2023-11-14T22:13:20.060+00:00", "latency_ms": 2.0},
        ),
        "b.jpeg": (
            t0 + 0.200,
            {"status": "done", "timestamp": "2023-11-14T22:13:20.150+00:00", "latency_ms": 4.0},
        ),
    }
    result = analyse(drops, seen, first_drop=t0)
    assert (result["dropped"], result["results"], result["done"], result["missing"]) == (3, 2, 2, 1)
    assert result["wall_s"] == pytest.approx(0.2)
    assert result["throughput_ips"] == pytest.approx(10.0)
    assert result["inbox_to_result_ms"]["mean"] == pytest.approx((100.0 + 190.0) / 2)
    stages = result["stages"]
    assert stages["drop_to_inference_done_ms"]["mean"] == pytest.approx((60.0 + 140.0) / 2, abs=0.01)
    assert stages["result_written_ms"]["mean"] == pytest.approx((40.0 + 50.0) / 2, abs=0.01)
    assert stages["inference_share_ms"]["mean"] == pytest.approx(3.0)
    lines = watch_markdown(result)
    row = next(line for line in lines if line.startswith("| inbox to result line |"))
    assert row.endswith("| - |")  # p99 of 2 images is not a tail


def test_missing_image_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchInputError, match="--images"):
        run_watch_bench(
            WatchBenchConfig(bundle=tiny_bundle, images=tmp_path / "none", count=2), progress=False
        )


def test_real_daemon_on_a_few_images(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = labelled_folder(tmp_path / "images", per_class=3)
    before = sorted(p.name for p in images.rglob("*"))
    # Relative paths from a folder that is not the checkout: the daemon runs in the checkout.
    monkeypatch.chdir(tmp_path)
    result = run_watch_bench(
        WatchBenchConfig(
            bundle=Path(tiny_bundle.name), images=Path("images"), count=8, backend="ort-cpu", timeout_s=60
        ),
        progress=False,
    )
    assert (result["dropped"], result["done"], result["missing"]) == (8, 8, 0), result.get("daemon_log_tail")
    assert result["throughput_ips"] > 0
    assert result["backend"] == "ort-cpu" and result["synthetic"] is True
    assert result["repeated_files"] is True and result["unique_files"] == 6
    assert result["inbox_to_result_ms"]["min"] > 0
    assert result["daemon_exit_code"] == 0
    assert sorted(p.name for p in images.rglob("*")) == before  # the source folder is only read


def test_watch_section_in_the_main_report(tiny_bundle: Path, tmp_path: Path) -> None:
    import json

    from benchmarks.cli import main

    images = labelled_folder(tmp_path / "images", per_class=2)
    out = tmp_path / "results"
    code = main(
        [
            str(tiny_bundle),
            "--backends",
            "ort-cpu",
            "--batch",
            "1",
            "--iterations",
            "10",
            "--warmup",
            "0",
            "--cold-start-repeats",
            "0",
            "--no-e2e",
            "--watch-images",
            str(images),
            "--watch-count",
            "4",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    document = json.loads(next(out.rglob("bench.json")).read_text())
    assert document["watch"]["done"] == 4
    assert "## Watch daemon: inbox to result file" in next(out.rglob("bench.md")).read_text()


def test_a_daemon_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    images = labelled_folder(tmp_path / "images", per_class=1)
    (tmp_path / "not_a_bundle").mkdir()
    config = WatchBenchConfig(bundle=tmp_path / "not_a_bundle", images=images, count=2, startup_timeout_s=60)
    # Its last heartbeat (state "failed") is written before it exits: that is not "ready".
    with pytest.raises(BenchInputError, match=r"exited with status 1 before it was ready; daemon log: \S"):
        run_watch_bench(config, progress=False)
