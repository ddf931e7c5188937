"""Run the real ``pneumo edge watch`` daemon as a subprocess and check its outbox.

Nothing here imitates the daemon: tests start ``python -m edge_runtime.pneumo_cli
edge watch ...`` exactly as an operator would, drop files into a real
folder, and read what the daemon wrote. Waits poll with a deadline instead of
sleeping a fixed time, and the deadlines are generous because CI runs on two
shared cores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# Fast settings so tests do not wait seconds for quiet periods and backoffs.
FAST_CONFIG = {
    "quiet-seconds": 0.3,
    "poll-interval": 0.1,
    "rescan-seconds": 0.5,
    "heartbeat-seconds": 0.2,
    "backoff-initial-seconds": 0.1,
    "backoff-max-seconds": 0.4,
    # a file never signalled complete that fails to decode is held this long (default 60 s)
    "settle-seconds": 1.0,
}


#: pixel values of the tiny model's clear PNEUMONIA and NORMAL images
BRIGHT, DARK = 220, 25


def png_bytes(value: int, size: int = 40, seed: int | None = None) -> bytes:
    """A small grayscale PNG; bright (value > 127) -> PNEUMONIA, dark -> NORMAL with the tiny model.

    ``seed`` adds a unique pixel so that every file has its own sha256.
    """
    image = np.full((size, size), value, np.uint8)
    if seed is not None:
        image[0, :4] = np.frombuffer(int(seed).to_bytes(4, "big"), np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def drop(inbox: Path, name: str, data: bytes) -> Path:
    """Deliver a file the polite way: write beside the inbox, then rename it in."""
    staging = inbox.parent / (inbox.name + ".staging")
    staging.mkdir(exist_ok=True)
    tmp = staging / name
    tmp.write_bytes(data)
    target = inbox / name
    os.rename(tmp, target)
    return target


class Daemon:
    """One ``pneumo edge watch`` process with its stderr captured to a file."""

    def __init__(
        self,
        bundle: Path,
        inbox: Path,
        outbox: Path,
        *extra: str,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        log_name: str = "daemon",
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.bundle, self.inbox, self.outbox = bundle, inbox, outbox
        self.work = outbox.parent
        settings = {**FAST_CONFIG, **(config or {})}
        self.config_path = self.work / f"{log_name}-config.json"
        self.config_path.write_text(json.dumps(settings))
        self.args = [
            sys.executable,
            "-m",
            "edge_runtime.pneumo_cli",
            "edge",
            "watch",
            str(bundle),
            "--inbox",
            str(inbox),
            "--outbox",
            str(outbox),
            "--config",
            str(self.config_path),
            *extra,
        ]
        # not the failpoint of another test, nor the systemd notification socket of whatever runs pytest
        private = {"PNEUMO_WATCH_FAILPOINT", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
        inherited = {k: v for k, v in os.environ.items() if k not in private}
        self.env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
        self.log_path = self.work / f"{log_name}.log"
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=log, stderr=log, preexec_fn=self.preexec_fn
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float, what: str, allow_exit: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not allow_exit and not self.running():
                raise AssertionError(
                    f"daemon exited ({self.proc and self.proc.returncode}) before {what}:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.tail()}")

    def wait_event(self, event: str, timeout: float = 60, count: int = 1) -> None:
        self.wait_until(
            lambda: sum(e.get("event") == event for e in self.events()) >= count,
            timeout,
            f"log event {event}",
        )

    def wait_started(self, timeout: float = 90) -> Daemon:
        self.wait_event("started", timeout)
        return self

    def signal(self, sig: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Daemon:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``mount ARGS`` (tests run as root in CI); the caller checks the return code."""
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def umount(path: Path) -> None:
    """Lazy unmount: what a share that drops away does to files still open on it. Never raises."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def is_mounted(path: Path) -> bool:
    """Something is mounted on ``path`` (also a bind mount within one filesystem, unlike os.path.ismount)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        # field 5 is the mount point, with spaces and such escaped as octal
        points = {line.split()[4].encode().decode("unicode_escape") for line in handle}
    return target in points


def inbox_files(inbox: Path) -> list[str]:
    """What is in the inbox besides the daemon's own lock file (``.pneumo-inbox.lock``)."""
    return sorted(name for name in os.listdir(inbox) if name != ".pneumo-inbox.lock")


def jsonl_records(outbox: Path) -> list[dict[str, Any]]:
    """Every line of results.jsonl; a torn or unparseable line fails the test."""
    path = outbox / "results.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "results.jsonl ends with a torn line"
    return [json.loads(line) for line in data.splitlines()]


def csv_rows(outbox: Path) -> list[dict[str, str]]:
    path = outbox / "results.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def result_count(outbox: Path) -> int:
    path = outbox / "results.jsonl"
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def by_name(outbox: Path) -> dict[str, dict[str, Any]]:
    return {r["original_name"]: r for r in jsonl_records(outbox)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_exactly_once(
    outbox: Path, inputs: dict[str, bytes], failed: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Every input has exactly one result line (JSONL and CSV), one moved file and one JSON; nothing else.

    ``inputs`` maps original name -> the bytes that were dropped. Returns the
    records by name.
    """
    failed = set(failed)
    records = jsonl_records(outbox)
    names = Counter(r["original_name"] for r in records)
    duplicated = {n: c for n, c in names.items() if c > 1}
    assert not duplicated, f"duplicated results: {duplicated}"
    assert set(names) == set(inputs), (
        f"lost: {sorted(set(inputs) - set(names))[:10]}, unexpected: {sorted(set(names) - set(inputs))[:10]}"
    )
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    rows = csv_rows(outbox)
    assert sorted(r["id"] for r in rows) == sorted(ids), "results.csv and results.jsonl disagree"
    done_files = set(os.listdir(outbox / "done"))
    failed_files = set(os.listdir(outbox / "failed"))
    expected_done: set[str] = set()
    expected_failed: set[str] = set()
    for record in records:
        name = record["original_name"]
        status = "failed" if name in failed else "done"
        assert record["status"] == status, f"{name}: {record['status']} ({record.get('reason')})"
        moved = record["moved_to"]
        assert moved == f"{status}/{Path(moved).name}", moved
        target = outbox / moved
        assert target.exists() or target.is_symlink(), f"{name}: {moved} missing"
        assert (outbox / record["result_file"]).exists()
        if status == "done":
            assert target.read_bytes() == inputs[name], f"{name}: moved file differs from the input"
            assert record["input_sha256"] == sha256(inputs[name])
            assert json.loads((outbox / record["result_file"]).read_text()) == record
            expected_done |= {Path(moved).name, Path(record["result_file"]).name}
        else:
            expected_failed |= {Path(moved).name, Path(record["result_file"]).name}
    assert done_files == expected_done, f"stray files in done/: {sorted(done_files ^ expected_done)[:10]}"
    assert failed_files == expected_failed, (
        f"stray files in failed/: {sorted(failed_files ^ expected_failed)[:10]}"
    )
    assert not (outbox / ".pneumo" / "journal.json").exists(), "a claimed batch was left unfinished"
    return {r["original_name"]: r for r in records}


def tmpfs_under_number(path: Path, number: int, mount_tmpfs: Callable[[Path], None]) -> None:
    """Mount tmpfs on ``path`` (``mount_tmpfs``) until it gets device ``number``, freed just before.

    The kernel hands out anonymous device numbers smallest free first, as after a reboot a
    share gets back the number it had; a smaller number freed meanwhile is taken by a mount
    that stays stacked under ``path`` (the caller unmounts ``path`` until nothing is left).
    Then a few files are made and removed, since tmpfs numbers inodes per mount from the same
    start: what is written next has other inode numbers than the old mount gave.
    """
    for _ in range(16):
        mount_tmpfs(path)
        if os.stat(path).st_dev == number:
            break
    else:
        # Another mount on this host (a container starting, a tmpfs) took the number in between:
        # the situation under test could not be made, which says nothing about the daemon.
        pytest.skip(f"the kernel did not hand device number {number} out again (taken by another mount)")
    for i in range(64):
        (path / f".filler {i}").write_bytes(b"")
        (path / f".filler {i}").unlink()
