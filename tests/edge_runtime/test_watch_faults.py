"""The outbox becomes unusable, the inbox vanishes, the outbox is on another filesystem.

How each condition is made for real, as the tests run as root in CI and
root ignores file modes:

* read-only outbox (EROFS): a read-only bind mount over the outbox
  (needs CAP_SYS_ADMIN; skipped with the reason otherwise);
* disk full (ENOSPC): the outbox is a 1 MiB tmpfs filled with a filler file
  (same need);
* no permission (EACCES / EPERM): ``chmod 555`` when not root; as root,
  ``chattr +i`` (immutable) on ``done/``, which root cannot write either;
* a file where ``done/`` should be (ENOTDIR): works anywhere, no privilege.

Each test checks the daemon says what is wrong (errno in the log line), does
not spin (CPU time while blocked), keeps every input in the inbox, and
processes each exactly once after the condition clears.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.edge_runtime.watch_harness import (
    Daemon,
    assert_exactly_once,
    by_name,
    drop,
    inbox_files,
    mount,
    png_bytes,
    result_count,
    umount,
)


def _outage(
    daemon: Daemon,
    inbox: Path,
    outbox: Path,
    inputs: dict[str, bytes],
    errno_name: str,
    clear: Callable[[], None],
) -> None:
    """Drop files while the outbox is broken; check the log, the CPU and the inbox; clear; check recovery."""
    before = result_count(outbox)
    for i in range(3):
        name = f"during outage {i}.png"
        inputs[name] = png_bytes(200, seed=500 + i)
        drop(inbox, name, inputs[name])
    daemon.wait_until(
        lambda: any(e.get("errno") == errno_name for e in daemon.events()),
        60,
        f"a log line naming {errno_name}",
    )
    process = psutil.Process(daemon.pid)
    cpu0, wall0 = sum(process.cpu_times()[:2]), time.monotonic()
    time.sleep(2.0)
    cpu = sum(process.cpu_times()[:2]) - cpu0
    wall = time.monotonic() - wall0
    assert cpu < 0.5 * wall, f"daemon spins while the outbox is broken: {cpu:.2f} s CPU in {wall:.2f} s"
    trouble = [e for e in daemon.events() if e.get("level") == "error"]
    assert len(trouble) < 40, f"{len(trouble)} error lines in a short outage: backoff is not working"
    assert any("retrying in" in e["msg"] for e in trouble)
    # nothing was half-delivered: the inputs wait in the inbox, unchanged, and no result line was written
    assert result_count(outbox) == before
    for i in range(3):
        assert (inbox / f"during outage {i}.png").read_bytes() == inputs[f"during outage {i}.png"]
    clear()
    daemon.wait_until(
        lambda: result_count(outbox) >= len(inputs) and not inbox_files(inbox),
        90,
        "recovery after the outage",
    )
    daemon.wait_event("outbox_recovered")
    assert daemon.signal(signal.SIGTERM) == 0
    assert_exactly_once(outbox, inputs)


def _start_with_one_result(
    bundle: Path, inbox: Path, outbox: Path, inputs: dict[str, bytes], **kw: object
) -> Daemon:
    daemon = Daemon(bundle, inbox, outbox, **kw).start()  # type: ignore[arg-type]
    daemon.wait_started()
    inputs["before.png"] = png_bytes(30, seed=1)
    drop(inbox, "before.png", inputs["before.png"])
    daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the first result")
    return daemon


def test_done_folder_replaced_by_a_file_recovers(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    inbox, outbox = boxes
    inputs: dict[str, bytes] = {}
    with _start_with_one_result(tiny_bundle, inbox, outbox, inputs) as daemon:
        os.rename(outbox / "done", outbox / "done.aside")
        (outbox / "done").write_text("an operator's mistake")

        def clear() -> None:
            os.unlink(outbox / "done")
            os.rename(outbox / "done.aside", outbox / "done")

        _outage(daemon, inbox, outbox, inputs, "ENOTDIR", clear)


def test_read_only_outbox_recovers(tiny_bundle: Path, boxes: tuple[Path, Path], can_mount: None) -> None:
    inbox, outbox = boxes
    inputs: dict[str, bytes] = {}
    with _start_with_one_result(tiny_bundle, inbox, outbox, inputs) as daemon:
        assert mount("--bind", str(outbox), str(outbox)).returncode == 0
        try:
            result = mount("-o", "remount,bind,ro", str(outbox))
            assert result.returncode == 0, result.stderr
            _outage(daemon, inbox, outbox, inputs, "EROFS", lambda: umount(outbox))
        finally:
            umount(outbox)
    assert not os.path.ismount(outbox)


def test_disk_full_recovers(tiny_bundle: Path, boxes: tuple[Path, Path], can_mount: None) -> None:
    inbox, outbox = boxes
    outbox.mkdir()
    assert mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(outbox)).returncode == 0
    try:
        inputs: dict[str, bytes] = {}
        # the inbox is on another filesystem now: moves are verified copies
        with _start_with_one_result(tiny_bundle, inbox, outbox, inputs) as daemon:
            filler = outbox / "filler.bin"
            with open(filler, "wb", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

            def clear() -> None:
                filler.unlink()

            _outage(daemon, inbox, outbox, inputs, "ENOSPC", clear)
    finally:
        umount(outbox)


def test_unwritable_outbox_recovers(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    inbox, outbox = boxes
    inputs: dict[str, bytes] = {}
    done = outbox / "done"
    with _start_with_one_result(tiny_bundle, inbox, outbox, inputs) as daemon:
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(done)]).returncode != 0:
                pytest.skip("running as root and chattr +i is not available on this filesystem")
            expected = "EPERM"

            def clear() -> None:
                subprocess.run(["chattr", "-i", str(done)], check=True)
        else:
            done.chmod(0o555)
            expected = "EACCES"

            def clear() -> None:
                done.chmod(0o755)

        try:
            _outage(daemon, inbox, outbox, inputs, expected, clear)
        finally:
            subprocess.run(["chattr", "-i", str(done)], capture_output=True)
            done.chmod(0o755)


def test_vanished_inbox_recovers_when_recreated(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    inbox, outbox = boxes
    inputs: dict[str, bytes] = {}
    # a long rescan interval: after the inbox comes back only a re-armed inotify watch finds new files quickly
    config = {"rescan-seconds": 120}
    with _start_with_one_result(tiny_bundle, inbox, outbox, inputs, config=config) as daemon:
        os.rename(inbox, inbox.with_name("inbox.unmounted"))
        daemon.wait_until(
            lambda: any(e["event"] == "inbox_unavailable" for e in daemon.events()),
            60,
            "the inbox_unavailable line",
        )
        process = psutil.Process(daemon.pid)
        cpu0 = sum(process.cpu_times()[:2])
        time.sleep(2.0)
        assert sum(process.cpu_times()[:2]) - cpu0 < 1.0, "daemon spins while the inbox is missing"
        inbox.mkdir()
        daemon.wait_event("inbox_recovered")
        time.sleep(0.5)
        inputs["after.png"] = png_bytes(200, seed=2)
        drop(inbox, "after.png", inputs["after.png"])
        daemon.wait_until(lambda: result_count(outbox) >= 2, 30, "a file dropped into the recreated inbox")
        assert daemon.signal(signal.SIGTERM) == 0
    assert_exactly_once(outbox, inputs)


@pytest.fixture
def other_filesystem_inbox(tmp_path: Path) -> Iterator[Path]:
    """An inbox on /dev/shm (tmpfs) while the outbox is under tmp_path: a cross-device move."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    root = Path(tempfile.mkdtemp(prefix="pneumo-watch-", dir="/dev/shm"))
    if os.stat(root).st_dev == os.stat(tmp_path).st_dev:
        shutil.rmtree(root)
        pytest.skip("/dev/shm is on the same filesystem as the test folder")
    inbox = root / "inbox"
    inbox.mkdir()
    yield inbox
    shutil.rmtree(root, ignore_errors=True)


def test_outbox_on_another_filesystem(
    tiny_bundle: Path, tmp_path: Path, other_filesystem_inbox: Path
) -> None:
    inbox, outbox = other_filesystem_inbox, tmp_path / "outbox"
    inputs = {f"remote {i}.png": png_bytes(200 if i % 2 else 30, seed=i) for i in range(6)}
    for name, data in inputs.items():
        (inbox / name).write_bytes(data)
    target = tmp_path / "target.png"
    target.write_bytes(png_bytes(200))
    os.symlink(target, inbox / "link.png")
    (inbox / "folder.jpg").mkdir()
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_until(lambda: result_count(outbox) >= 8, 90, "all results")
        assert daemon.signal(signal.SIGTERM) == 0
    records = by_name(outbox)
    for name, data in inputs.items():
        assert (outbox / records[name]["moved_to"]).read_bytes() == data
    # not regular files are never copied across filesystems: parked in the inbox's hidden quarantine
    quarantine = inbox / ".pneumo-failed"
    assert sorted(os.listdir(quarantine)) == ["folder.jpg", "link.png"]
    assert records["link.png"]["moved_to"] == str(quarantine / "link.png")
    assert (outbox / "failed" / "link.png.error.json").exists() and target.exists()
    assert inbox_files(inbox) == [".pneumo-failed"]
    assert not [n for n in os.listdir(outbox / "done") if n.startswith(".")], "temp copies left behind"


def test_a_filling_outbox_disk_is_announced_before_it_is_full_and_once(
    tiny_bundle: Path, boxes: tuple[Path, Path], can_mount: None
) -> None:
    """Every input is kept, so a disk nobody archives fills: the operator hears of it first."""
    inbox, outbox = boxes
    outbox.mkdir()
    assert mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(outbox)).returncode == 0
    try:
        inputs: dict[str, bytes] = {}
        config = {"low-space-mib": 4}
        with _start_with_one_result(tiny_bundle, inbox, outbox, inputs, config=config) as daemon:
            assert _heartbeat(outbox)["outbox_low_space"] is False
            filler = outbox / "filler.bin"  # as months of done/ would
            filler.write_bytes(os.urandom(5 << 20))
            daemon.wait_event("outbox_low_space")
            low = next(e for e in daemon.events() if e["event"] == "outbox_low_space")
            assert low["level"] == "warning" and low["free_mib"] < 4 and low["low_space_mib"] == 4
            assert "done/ and failed/" in low["msg"]
            daemon.wait_until(lambda: _heartbeat(outbox)["outbox_low_space"] is True, 30, "the heartbeat")
            assert _heartbeat(outbox)["outbox_free_mib"] < 4
            # a warning, not a stop: inputs are still processed while there is room
            inputs["while low.png"] = png_bytes(200, seed=7)
            drop(inbox, "while low.png", inputs["while low.png"])
            daemon.wait_until(lambda: result_count(outbox) == 2, 60, "a result while space is low")
            time.sleep(1.0)  # several checks more (heartbeat-seconds 0.2): still one warning
            assert sum(e["event"] == "outbox_low_space" for e in daemon.events()) == 1
            filler.unlink()  # archived
            daemon.wait_event("outbox_space_ok")
            ok = next(e for e in daemon.events() if e["event"] == "outbox_space_ok")
            assert ok["free_mib"] >= 5
            daemon.wait_until(lambda: _heartbeat(outbox)["outbox_low_space"] is False, 30, "the heartbeat")
            assert daemon.signal(signal.SIGTERM) == 0
        assert_exactly_once(outbox, inputs)
    finally:
        umount(outbox)


def _heartbeat(outbox: Path) -> dict[str, object]:
    return json.loads((outbox / "heartbeat.json").read_text())
