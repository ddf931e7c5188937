"""A flood of 10,000 files: every one processed exactly once, memory and the pending window bounded.

Half the files are in the inbox when the daemon starts (the scan path), the
other half are renamed in while it works (the inotify path, overflowing the
bounded hint queue, so the rescans have to catch up). The daemon's RSS is
sampled with psutil the whole time; the rate is printed, not asserted
(performance lives in ``pneumo bench watch``). ``PNEUMO_FLOOD_FILES`` changes the
count (the 10,000 default takes about a minute here).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.edge_runtime.watch_harness import (
    Daemon,
    assert_exactly_once,
    inbox_files,
    png_bytes,
    result_count,
)

FLOOD_FILES = int(os.environ.get("PNEUMO_FLOOD_FILES", "10000"))
RSS_LIMIT_MB = 400
MAX_PENDING = 512
TIME_LIMIT_S = 420


@pytest.mark.slow
def test_flood_of_files_bounded_memory_exactly_once(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox, outbox, staging = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    inputs = {f"flood {i:05d}.png": png_bytes(200 if i % 2 else 40, seed=i) for i in range(FLOOD_FILES)}
    names = sorted(inputs)
    half = len(names) // 2
    for name in names[:half]:
        (inbox / name).write_bytes(inputs[name])
    for name in names[half:]:
        (staging / name).write_bytes(inputs[name])

    peak_rss = 0
    peak_window = 0
    stop_sampling = threading.Event()
    heartbeat = outbox / "heartbeat.json"

    def sample(pid: int) -> None:
        nonlocal peak_rss, peak_window
        process = psutil.Process(pid)
        while not stop_sampling.is_set():
            try:
                peak_rss = max(peak_rss, process.memory_info().rss)
                beat = json.loads(heartbeat.read_text())
                peak_window = max(peak_window, beat["counters"]["window"])
            except (psutil.Error, OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)

    started = time.monotonic()
    config = {"max-pending": MAX_PENDING, "heartbeat-seconds": 0.5}
    with Daemon(tiny_bundle, inbox, outbox, "--batch", "64", config=config).start() as daemon:
        sampler = threading.Thread(target=sample, args=(daemon.pid,), daemon=True)
        sampler.start()
        daemon.wait_started(120)
        for name in names[half:]:
            os.rename(staging / name, inbox / name)
        dropped = time.monotonic()
        daemon.wait_until(
            lambda: result_count(outbox) >= FLOOD_FILES,
            TIME_LIMIT_S,
            f"{FLOOD_FILES} results",
            allow_exit=False,
        )
        elapsed = time.monotonic() - started
        assert daemon.signal(signal.SIGTERM) == 0
        stop_sampling.set()
        sampler.join(timeout=5)
    assert_exactly_once(outbox, inputs)
    assert inbox_files(inbox) == []
    rate = FLOOD_FILES / elapsed
    print(
        f"\nflood: {FLOOD_FILES} files in {elapsed:.1f} s ({rate:.0f}/s; rename-in took {dropped - started:.1f} s), "
        f"peak RSS {peak_rss / 2**20:.0f} MiB, peak window {peak_window}"
    )
    assert 0 < peak_rss < RSS_LIMIT_MB * 2**20, f"peak RSS {peak_rss / 2**20:.0f} MiB"
    assert 0 < peak_window <= MAX_PENDING, f"peak window {peak_window} (0: the heartbeat was never read)"
