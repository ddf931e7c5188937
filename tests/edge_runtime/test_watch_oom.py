"""The kernel's OOM killer, for real: an image too big for the daemon's memory limit fails alone.

The systemd unit caps the daemon with ``MemoryMax``; an image whose decoding needs more (a
40-megapixel 16-bit colour PNG takes about 500 MB to decode) gets the daemon killed by the
kernel, systemd restarts it, and the input it died on must not kill it forever.
test_watch_crash.py kills the daemon at the same point with a failpoint; here the kill is
the kernel's: the daemon runs in a memory cgroup of its own (the mechanism under
``MemoryMax``) whose limit is set from the daemon's own measured peak on ordinary images.
Skipped, with the reason, where this process cannot create a memory cgroup.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.edge_runtime.watch_harness import (
    Daemon,
    assert_exactly_once,
    drop,
    inbox_files,
    png_bytes,
    result_count,
)

MIB = 1 << 20
#: room above the daemon's measured peak on ordinary images: a restart and a batch fit in it,
#: decoding the poison image (about 500 MB more) never does
HEADROOM = 128 * MIB


class MemoryCgroup:
    """A child memory cgroup of this process's own (cgroup v1 or v2), removed at the end."""

    def __init__(self, path: Path, version: int) -> None:
        self.path, self.version = path, version

    @classmethod
    def create(cls) -> MemoryCgroup:
        name = f"pneumo-oom-{uuid.uuid4().hex[:8]}"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, own = line.split(":", 2)
            if "memory" in controllers.split(","):
                return cls._make(Path("/sys/fs/cgroup/memory") / own.lstrip("/") / name, 1)
        for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            own = next(
                (
                    line[3:]
                    for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line[:3] == "0::"
                ),
                None,
            )
            parent = root / (own or "/").lstrip("/")
            control = parent / "cgroup.subtree_control"
            if own is not None and control.exists() and "memory" in control.read_text().split():
                return cls._make(parent / name, 2)
        pytest.skip(
            "no memory cgroup controller this process may use (v1 memory, or v2 with memory delegated)"
        )

    @classmethod
    def _make(cls, path: Path, version: int) -> MemoryCgroup:
        try:
            path.mkdir()
        except OSError as exc:
            pytest.skip(f"cannot create a memory cgroup at {path}: {exc}")
        return cls(path, version)

    def join(self) -> None:
        """preexec_fn: the child process enters the cgroup before it execs the daemon."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def set_limit(self, limit: int) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no swapping out instead of dying, where the machine has swap
                swap.write_text(str(limit))
        else:
            (self.path / "memory.max").write_text(str(limit))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")

    def peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        if not (self.path / name).exists():
            pytest.skip(f"{self.path / name} is missing: no peak to set the limit from")
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        pytest.skip(f"{self.path / name} does not count OOM kills on this kernel")

    def remove(self) -> None:
        for _ in range(50):  # the last process may still be exiting
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    if not Path("/proc/self/cgroup").exists():
        pytest.skip("no /proc/self/cgroup: not Linux")
    group = MemoryCgroup.create()
    try:
        yield group
    finally:
        group.remove()


def poison_png() -> bytes:
    """6300x6300 16-bit RGB (39.7 megapixels, under the 40 M pixel limit): about 500 MB to decode."""
    x = np.arange(6300, dtype=np.uint16)
    plane = x[None, :] * np.uint16(7) + x[:, None] * np.uint16(3)
    ok, encoded = cv2.imencode(
        ".png", np.dstack([plane, plane.T, plane[::-1]]), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    assert ok
    return encoded.tobytes()


def test_an_image_that_runs_the_daemon_out_of_memory_fails_alone_after_two_oom_kills(
    tiny_bundle: Path, tmp_path: Path, memory_cgroup: MemoryCgroup
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    fast = {"quiet-seconds": 0.0}
    first = {f"before {i}.png": png_bytes(200, seed=i) for i in range(3)}
    # the daemon's peak on ordinary images, in its cgroup without a limit
    with Daemon(
        tiny_bundle, inbox, outbox, config=fast, log_name="measure", preexec_fn=memory_cgroup.join
    ) as d:
        d.wait_started()
        for name, data in first.items():
            drop(inbox, name, data)
        d.wait_until(lambda: result_count(outbox) >= len(first), 60, "the ordinary images")
        assert d.signal(signal.SIGTERM) == 0
    limit = memory_cgroup.peak() + HEADROOM
    memory_cgroup.set_limit(limit)

    poison = "huge 16-bit colour.png"
    later = {f"after {i}.png": png_bytes(30, seed=10 + i) for i in range(3)}
    huge = poison_png()
    drop(inbox, poison, huge)
    os.utime(inbox / poison, (1_000_000, 1_000_000))  # the oldest: read first after every restart
    for name, data in later.items():
        drop(inbox, name, data)
    for round_ in range(2):  # what systemd's Restart=always does after each kill
        dying = Daemon(
            tiny_bundle, inbox, outbox, config=fast, log_name=f"oom {round_}", preexec_fn=memory_cgroup.join
        ).start()
        assert dying.proc is not None
        assert dying.proc.wait(timeout=120) == -signal.SIGKILL, dying.tail()
        assert memory_cgroup.oom_kills() == round_ + 1, "killed, but not by the OOM killer"
        assert result_count(outbox) == len(first)
    with Daemon(
        tiny_bundle, inbox, outbox, config=fast, log_name="after", preexec_fn=memory_cgroup.join
    ) as d:
        total = len(first) + 1 + len(later)
        d.wait_until(lambda: result_count(outbox) >= total and not inbox_files(inbox), 120, "every result")
        crash = [e for e in d.events() if e.get("event") == "decode_crash"]
        assert d.signal(signal.SIGTERM) == 0
    assert memory_cgroup.oom_kills() == 2, "the daemon was OOM-killed again after giving the image up"
    assert crash and crash[0]["name"] == poison and crash[0]["deaths"] == 2, crash
    records = assert_exactly_once(outbox, {**first, poison: huge, **later}, failed={poison})
    assert "died 2 times while decoding this file" in records[poison]["reason"]
    assert records[poison]["moved_to"] == f"failed/{poison}"
    print(f"memory limit {limit / MIB:.0f} MiB (measured peak + {HEADROOM // MIB} MiB); 2 OOM kills")
