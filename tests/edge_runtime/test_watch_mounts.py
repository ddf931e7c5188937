"""A share that drops away and comes back, a reboot before the share is mounted, a disk remounted read-only.

Made with real mounts, not renamed folders (tests run as root in CI; each
test is skipped with the reason where mounting is not possible):

* the share: a tmpfs at ``share/`` (its own filesystem, as a server keeps it)
  bind-mounted onto ``inbox/``. "The share drops away" is ``umount -l inbox``:
  the inbox path is then the empty mount-point directory underneath, on
  another filesystem (another ``st_dev``); what is written to the server
  meanwhile lands in ``share/``. "The share is back" mounts it again;
* the outbox disk: a tmpfs mounted on ``outbox/`` and remounted ``ro`` and
  then ``rw``, as the kernel does after disk errors and an operator after
  fsck.

Every mount is undone in ``finally``, so a failing test leaves none behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher, read_input
from tests.edge_runtime.watch_harness import (
    Daemon,
    assert_exactly_once,
    inbox_files,
    is_mounted,
    jsonl_records,
    mount,
    png_bytes,
    result_count,
    sha256,
    tmpfs_under_number,
    umount,
)

BAD = {"bad 1.jpg": b"text, not an image", "bad 2.png": b""}


class Share:
    """``share/`` (a tmpfs: the server's side) bind-mounted onto ``inbox/`` (the mount point)."""

    def __init__(self, root: Path) -> None:
        self.export = root / "share"
        self.inbox = root / "inbox"

    def setup(self) -> None:
        self.export.mkdir()
        self.inbox.mkdir(exist_ok=True)
        result = mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.export))
        assert result.returncode == 0, result.stderr
        self.mount()

    def mount(self) -> None:
        result = mount("--bind", str(self.export), str(self.inbox))
        assert result.returncode == 0, result.stderr

    def unmount(self) -> None:
        umount(self.inbox)
        assert not is_mounted(self.inbox), "the share is still mounted on the inbox"

    def teardown(self) -> None:
        for path in (self.inbox, self.export):
            for _ in range(4):  # a test may have mounted the share more than once
                if not is_mounted(path):
                    break
                umount(path)


Mounted = TypeVar("Mounted", "Share", "LoopDisk")


def set_up_and_undo(mounted: Mounted, *points: Path) -> Iterator[Mounted]:
    """Fixture body: ``setup()``, the test, ``teardown()`` whatever happens; then nothing left mounted."""
    try:
        mounted.setup()
        yield mounted
    finally:
        mounted.teardown()
    assert not any(is_mounted(point) for point in points)


@pytest.fixture
def share(tmp_path: Path, can_mount: None) -> Iterator[Share]:
    share = Share(tmp_path)
    yield from set_up_and_undo(share, share.inbox, share.export)


def deliver(folder: Path, name: str, data: bytes) -> None:
    """Write under a hidden name in ``folder`` and rename it in (a rename never crosses the share)."""
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, folder / name)


def fill(folder: Path, count: int, prefix: str = "xray") -> dict[str, bytes]:
    inputs = {f"{prefix} {i:03d}.png": png_bytes(200 if i % 3 else 30, seed=i) for i in range(count)}
    inputs.update(BAD)
    for name, data in inputs.items():
        deliver(folder, name, data)
    return inputs


def assert_idle(daemon: Daemon, seconds: float = 2.0) -> None:
    """The daemon does not spin while it waits (CPU time well under the wall time)."""
    process = psutil.Process(daemon.pid)
    cpu0, wall0 = sum(process.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)
    cpu, wall = sum(process.cpu_times()[:2]) - cpu0, time.monotonic() - wall0
    assert cpu < 0.5 * wall, f"daemon spins while it waits: {cpu:.2f} s CPU in {wall:.2f} s"


def crash_with_a_claimed_batch(bundle: Path, inbox: Path, outbox: Path) -> list[str]:
    """Run until the second batch is claimed, SIGKILLed there (failpoint); the claimed names."""
    env = {"PNEUMO_WATCH_FAILPOINT": "after-claim:2"}
    config = {"quiet-seconds": 0.0}
    crashing = Daemon(bundle, inbox, outbox, "--batch", "4", config=config, env=env, log_name="crash").start()
    assert crashing.proc is not None and crashing.proc.wait(timeout=120) == -signal.SIGKILL, crashing.tail()
    claim = json.loads((outbox / ".pneumo" / "journal.json").read_text())
    names = [entry["name"] for entry in claim["entries"]]
    assert len(names) == 4 and result_count(outbox) == 4
    return names


def test_share_unmounted_mid_run_waits_and_resumes_when_mounted_back(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = {"before.png": png_bytes(30, seed=1)}
    # a long rescan interval: after the share is back only a re-armed inotify watch, or a scan the
    # daemon makes because the inbox changed, finds files quickly
    config = {"rescan-seconds": 120}
    with Daemon(tiny_bundle, inbox, outbox, config=config).start() as daemon:
        daemon.wait_started()
        deliver(inbox, "before.png", inputs["before.png"])
        daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the first result")

        share.unmount()
        daemon.wait_until(
            lambda: any(e["event"] == "inbox_unavailable" for e in daemon.events()),
            30,
            "an inbox_unavailable line for the unmounted share",
        )
        away = [e for e in daemon.events() if e["event"] == "inbox_unavailable"]
        assert "mount" in away[0]["msg"] and str(inbox) in away[0]["msg"], away[0]
        # written on the server while this machine has the share unmounted
        for i in range(3):
            name = f"while away {i}.png"
            inputs[name] = png_bytes(200, seed=10 + i)
            deliver(share.export, name, inputs[name])
        assert_idle(daemon)
        assert result_count(outbox) == 1
        # the empty mount point is not taken for the inbox: nothing is written into it
        assert os.listdir(inbox) == [], "the daemon wrote into the empty mount point"
        errors = sum(e["event"] == "inbox_unavailable" for e in daemon.events())
        assert errors < 40, f"{errors} inbox_unavailable lines in a short outage: backoff is not working"

        share.mount()
        daemon.wait_event("inbox_recovered")
        daemon.wait_until(lambda: result_count(outbox) >= 4, 30, "the files written while the share was away")
        inputs["after.png"] = png_bytes(200, seed=20)
        deliver(inbox, "after.png", inputs["after.png"])
        daemon.wait_until(lambda: result_count(outbox) >= 5, 30, "a file delivered after the share is back")
        assert not inbox_files(inbox)
        assert daemon.signal(signal.SIGTERM) == 0
    assert_exactly_once(outbox, inputs)


def test_reboot_before_the_share_is_mounted_finishes_the_claim_once_it_is(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = fill(inbox, 10)
    claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
    share.unmount()  # the machine reboots; the share is not mounted yet
    config = {"quiet-seconds": 0.0}
    with Daemon(tiny_bundle, inbox, outbox, "--batch", "4", config=config, log_name="boot").start() as daemon:
        daemon.wait_event("inbox_unavailable", count=3)
        waiting = [e for e in daemon.events() if e["event"] == "inbox_unavailable"]
        assert "another filesystem" in waiting[-1]["msg"], waiting[-1]
        assert_idle(daemon)
        # nothing was recorded as "moved to nothing", and nothing new was taken
        assert result_count(outbox) == 4
        assert (outbox / ".pneumo" / "journal.json").exists()
        assert not any(e["event"] in ("recovered_batch", "outbox_warning") for e in daemon.events())
        share.mount()
        daemon.wait_event("recovered_batch")
        recovered = next(e for e in daemon.events() if e["event"] == "recovered_batch")
        assert sorted(recovered["names"]) == sorted(claimed)
        daemon.wait_until(
            lambda: result_count(outbox) >= len(inputs) and not inbox_files(inbox), 90, "every result"
        )
        assert daemon.signal(signal.SIGTERM) == 0
    records = assert_exactly_once(outbox, inputs, failed=set(BAD))
    for name in claimed:
        assert records[name]["moved_to"], f"{name}: the claimed input was not moved"


def test_inbox_mount_started_before_the_share_waits_and_never_reads_the_empty_folder(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    """inbox-mount = true: a daemon that starts before the share is mounted (a boot where the
    network came up late) waits for it; a file left in the bare mount-point folder is not the
    share's and is neither read nor moved."""
    inbox, outbox = share.inbox, tmp_path / "outbox"
    share.unmount()
    local = png_bytes(200, seed=99)
    deliver(inbox, "under the mount point.png", local)
    inputs = fill(share.export, 6)  # on the server, waiting for this machine to mount it
    config = {"quiet-seconds": 0.0, "inbox-mount": True}
    with Daemon(tiny_bundle, inbox, outbox, "--batch", "4", config=config, log_name="boot").start() as daemon:
        daemon.wait_started()
        daemon.wait_event("inbox_unavailable", count=2)
        waiting = [e for e in daemon.events() if e["event"] == "inbox_unavailable"]
        assert "nothing is mounted on the inbox yet" in waiting[-1]["msg"], waiting[-1]
        assert_idle(daemon)
        assert result_count(outbox) == 0
        assert os.listdir(inbox) == ["under the mount point.png"], "the daemon wrote into the mount point"
        share.mount()
        daemon.wait_event("inbox_recovered")
        daemon.wait_until(lambda: not inbox_files(inbox), 90, "every input on the share")
        assert daemon.signal(signal.SIGTERM) == 0
    assert_exactly_once(outbox, inputs, failed=set(BAD))
    assert not any(e["event"] == "inbox_warning" for e in daemon.events())  # a tmpfs is no network share
    share.unmount()
    assert (inbox / "under the mount point.png").read_bytes() == local


def test_reboot_with_the_share_away_longer_than_inbox_wait_seconds(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    """What deploy/WATCH.md says of claim_finished_without_inbox: recorded as not moved, classified again later."""
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = fill(inbox, 10)
    claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
    share.unmount()
    config = {"quiet-seconds": 0.0, "inbox-wait-seconds": 1.0}
    with Daemon(tiny_bundle, inbox, outbox, "--batch", "4", config=config, log_name="boot").start() as daemon:
        daemon.wait_event("claim_finished_without_inbox")
        daemon.wait_event("recovered_batch")
        assert not (outbox / ".pneumo" / "journal.json").exists()
        gave_up = [r for r in jsonl_records(outbox) if r["original_name"] in claimed]
        assert len(gave_up) == 4 and all(r["moved_to"] is None for r in gave_up), gave_up
        assert result_count(outbox) == 8
        share.mount()
        daemon.wait_until(
            lambda: not inbox_files(inbox) and result_count(outbox) >= len(inputs) + 4, 90, "every result"
        )
        assert daemon.signal(signal.SIGTERM) == 0
    records = jsonl_records(outbox)
    counts = Counter(r["original_name"] for r in records)
    assert set(counts) == set(inputs), "an input was lost"
    assert {n for n, c in counts.items() if c > 1} == set(claimed), counts
    assert all(c <= 2 for c in counts.values()), counts
    for name in claimed:
        first, second = (r for r in records if r["original_name"] == name)
        assert first["moved_to"] is None and second["moved_to"], (first, second)
        assert (outbox / second["moved_to"]).read_bytes() == inputs[name]
    assert not inbox_files(share.export)


def test_outbox_disk_remounted_read_only_recovers_after_remount_rw(
    tiny_bundle: Path, tmp_path: Path, can_mount: None
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    assert mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(outbox)).returncode == 0
    try:
        inputs = {"before.png": png_bytes(30, seed=1)}
        with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
            daemon.wait_started()
            deliver(inbox, "before.png", inputs["before.png"])
            daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the first result")
            result = mount("-o", "remount,ro", str(outbox))
            assert result.returncode == 0, (
                f"remount ro: {result.stderr} (the daemon holds a file open for writing?)"
            )
            for i in range(3):
                name = f"during outage {i}.png"
                inputs[name] = png_bytes(200, seed=500 + i)
                deliver(inbox, name, inputs[name])
            daemon.wait_until(
                lambda: any(e.get("errno") == "EROFS" for e in daemon.events()), 60, "a log line naming EROFS"
            )
            assert_idle(daemon)
            trouble = [e for e in daemon.events() if e.get("level") == "error"]
            assert len(trouble) < 40, f"{len(trouble)} error lines in a short outage: backoff is not working"
            assert all("remount it read-write" in e["msg"] for e in trouble if e.get("errno") == "EROFS")
            # nothing half-delivered: the inputs wait in the inbox, unchanged; no result, no moved file
            assert result_count(outbox) == 1
            assert sorted(os.listdir(outbox / "done")) == ["before.png", "before.png.json"]
            for i in range(3):
                name = f"during outage {i}.png"
                assert (inbox / name).read_bytes() == inputs[name]
            result = mount("-o", "remount,rw", str(outbox))
            assert result.returncode == 0, result.stderr
            daemon.wait_until(
                lambda: result_count(outbox) >= 4 and not inbox_files(inbox), 60, "recovery after remount rw"
            )
            daemon.wait_event("outbox_recovered")
            assert daemon.signal(signal.SIGTERM) == 0
        assert_exactly_once(outbox, inputs)
    finally:
        umount(outbox)
    assert not is_mounted(outbox)


def test_a_file_of_an_unmounted_share_is_not_read_as_vanished(tmp_path: Path, share: Share) -> None:
    """Unmounted between being found and being read: the inbox is unavailable, not the file "vanished"."""
    deliver(share.inbox, "chest.png", png_bytes(200))
    st = os.lstat(share.inbox / "chest.png")
    cand = Candidate("chest.png", "file", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, 0.0, hinted=True)
    share.unmount()
    assert share.inbox.is_dir()  # the empty mount point
    with pytest.raises(InboxUnavailableError, match="mount"):
        read_input(share.inbox, cand, PreprocessContract(height=32, width=32))
    share.mount()
    assert read_input(share.inbox, cand, PreprocessContract(height=32, width=32)).outcome == "image"


def test_inbox_mount_refuses_a_folder_nothing_is_mounted_on(tmp_path: Path, share: Share) -> None:
    share.unmount()
    watcher = InboxWatcher(
        share.inbox, quiet_seconds=0.0, max_pending=4, poll_interval=0.05, rescan_seconds=1.0,
        ignore=(".*",), use_watchdog=False, require_mount=True,
    )  # fmt: skip
    with pytest.raises(InboxUnavailableError, match="nothing is mounted on the inbox yet"):
        watcher.present()
    share.mount()
    assert watcher.present().st_dev == os.stat(share.export).st_dev
    share.unmount()
    with pytest.raises(InboxUnavailableError, match="mount the share back"):
        watcher.present()


def test_inotify_is_re_armed_when_a_share_comes_back_as_the_same_device_and_inode(
    tmp_path: Path, can_mount: None
) -> None:
    """A share unmounted for real (its inotify watch dies) and mounted again often has the same
    device number and root inode (a freed device number is reused; a tmpfs or NFS root keeps its
    inode): only a watch armed anew sees files delivered after it is back."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher(
        inbox,
        quiet_seconds=0.0,
        max_pending=16,
        poll_interval=0.05,
        rescan_seconds=3600.0,  # no scan finds the file: only inotify does
        ignore=(".*",),
        use_watchdog=True,
    )
    assert mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inbox)).returncode == 0
    try:
        watcher.start()
        assert watcher.mode == "inotify", watcher.watch_error
        watcher.poll(10)
        before = os.stat(inbox)
        subprocess.run(["umount", str(inbox)], check=True, capture_output=True, timeout=30)
        with pytest.raises(InboxUnavailableError, match="mount the share back"):
            watcher.poll(10)
        assert mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inbox)).returncode == 0
        after = os.stat(inbox)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            pytest.skip("the share came back under another device number: re-armed in any case")
        assert watcher.poll(10) == []
        deliver(inbox, "after.png", png_bytes(200))
        deadline = time.monotonic() + 10
        found: list[Candidate] = []
        while not found and time.monotonic() < deadline:
            found = watcher.poll(10)
            time.sleep(0.05)
        assert [c.name for c in found] == ["after.png"], "inotify was not re-armed when the share came back"
    finally:
        watcher.stop()
        umount(inbox)


# -- a reboot that brings the share back under a new device number ---------------------------
#: inbox-wait-seconds for these tests: a claim that waited for the share would time a test out
LONG_WAIT = {"quiet-seconds": 0.0, "inbox-wait-seconds": 600}
#: a recovery of a share that is back must not wait at all: well under LONG_WAIT
PROMPT_S = 60.0


def share_back_under_a_new_device_number(share: Share) -> None:
    """The machine reboots; the share is mounted again as another filesystem.

    A CIFS or NFS mount gets an anonymous device number in mount order, and CIFS
    ``noserverino`` makes up inode numbers: here a new tmpfs mounted on the inbox, holding
    what the server has (``share/``, changed meanwhile as a test likes) copied with its mtimes.
    """
    share.unmount()
    old_dev = os.stat(share.export).st_dev  # still mounted: the new tmpfs cannot reuse its number
    result = mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(share.inbox))
    assert result.returncode == 0, result.stderr
    assert os.stat(share.inbox).st_dev != old_dev
    for i in range(8):  # other inode numbers than the first mount gave
        (share.inbox / f".filler {i}").write_bytes(b"")
        (share.inbox / f".filler {i}").unlink()
    for name in os.listdir(share.export):
        shutil.copy2(share.export / name, share.inbox / name)
        before, after = os.lstat(share.export / name), os.lstat(share.inbox / name)
        assert after.st_mtime_ns == before.st_mtime_ns, f"{name}: tmpfs lost the nanoseconds of the mtime"
        assert (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino)


def share_back_under_its_device_number(share: Share) -> None:
    """The machine reboots; the share comes back under the device number it had, with other inodes.

    Anonymous device numbers are handed out smallest free first, so a CIFS share mounted again
    often gets its old number back, and with ``noserverino`` CIFS makes its inode numbers up:
    here the server's tmpfs is unmounted (freeing its number) and a new one mounted on the
    inbox under that number, holding the server's files copied with their mtimes.
    """
    saved = {p.name: (p.read_bytes(), os.lstat(p)) for p in share.export.iterdir()}
    number = os.stat(share.export).st_dev
    share.unmount()
    umount(share.export)

    def mount_tmpfs(path: Path) -> None:
        result = mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path))
        assert result.returncode == 0, result.stderr

    tmpfs_under_number(share.inbox, number, mount_tmpfs)
    for name, (data, old) in saved.items():
        deliver(share.inbox, name, data)
        os.utime(share.inbox / name, ns=(old.st_mtime_ns, old.st_mtime_ns))
        now = os.lstat(share.inbox / name)
        assert now.st_dev == old.st_dev and now.st_ino != old.st_ino, name


def remount_warnings(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["event"] == "outbox_warning" and "new device number" in e["msg"]]


def assert_no_stall(daemon: Daemon, started: float) -> None:
    took = time.monotonic() - started
    assert took < PROMPT_S, f"recovery took {took:.0f} s: it waited for a share that was there"
    stalls = [
        e["event"]
        for e in daemon.events()
        if e["event"] in ("inbox_unavailable", "claim_finished_without_inbox")
    ]
    assert not stalls, stalls


def boot_and_finish(bundle: Path, inbox: Path, outbox: Path, results: int) -> Daemon:
    """Start the daemon after the "reboot"; it must finish the claim and reach ``results`` without a stall."""
    started = time.monotonic()
    with Daemon(bundle, inbox, outbox, "--batch", "4", config=LONG_WAIT, log_name="boot").start() as daemon:
        daemon.wait_event("recovered_batch", PROMPT_S)
        daemon.wait_until(
            lambda: result_count(outbox) >= results and not inbox_files(inbox), PROMPT_S, "every result"
        )
        assert_no_stall(daemon, started)
        assert daemon.signal(signal.SIGTERM) == 0
    return daemon


@pytest.mark.parametrize(
    ("reboot", "phrase"),
    [
        (share_back_under_a_new_device_number, "new device number"),
        (share_back_under_its_device_number, "other inode numbers"),
    ],
    ids=["new-device-number", "same-number-new-inodes"],
)
def test_reboot_with_the_share_back_finishes_the_claim_from_it_once(
    tiny_bundle: Path, tmp_path: Path, share: Share, reboot: Callable[[Share], None], phrase: str
) -> None:
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = fill(inbox, 10)
    claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
    reboot(share)
    daemon = boot_and_finish(tiny_bundle, inbox, outbox, len(inputs))
    records = assert_exactly_once(outbox, inputs, failed=set(BAD))
    assert Counter(r["original_name"] for r in jsonl_records(outbox)) == Counter(list(inputs))
    for name in claimed:
        assert (outbox / records[name]["moved_to"]).read_bytes() == inputs[name], name
    warnings = [e for e in daemon.events() if e["event"] == "outbox_warning"]
    assert [(w["names"], w["inbox"]) for w in warnings if phrase in w["msg"]] == [
        (sorted(claimed), str(inbox))
    ]
    assert len(warnings) == 1, warnings


def test_reboot_with_the_share_back_without_a_claimed_file_decides_it_at_once(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = fill(inbox, 10)
    claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
    gone = claimed[0]
    (share.export / gone).unlink()  # deleted on the server while this machine was down
    share_back_under_a_new_device_number(share)
    daemon = boot_and_finish(tiny_bundle, inbox, outbox, len(inputs))
    records = jsonl_records(outbox)
    assert Counter(r["original_name"] for r in records) == Counter(list(inputs)), "lost or duplicated"
    for record in records:
        name = record["original_name"]
        assert record["status"] == ("failed" if name in BAD else "done"), record
        if name == gone:
            assert record["moved_to"] is None, record
            continue
        assert (outbox / record["moved_to"]).read_bytes() == inputs[name], name
    assert not (outbox / ".pneumo" / "journal.json").exists()
    (warning,) = remount_warnings(daemon)
    assert warning["names"] == sorted(claimed), warning


def test_reboot_with_a_share_mounted_above_the_inbox_back_under_a_new_number_finishes_the_claim(
    tiny_bundle: Path, tmp_path: Path, can_mount: None
) -> None:
    """The share is mounted on ``mnt/`` and the inbox is its folder ``mnt/inbox``: after a reboot
    under a new device number the claimed inputs are recognised there too, at once."""
    server, mnt = tmp_path / "server", tmp_path / "mnt"
    for folder in (server, mnt):
        folder.mkdir()
    inbox, outbox = mnt / "inbox", tmp_path / "outbox"
    try:
        assert mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(server)).returncode == 0
        (server / "inbox").mkdir()
        assert mount("--bind", str(server), str(mnt)).returncode == 0
        inputs = fill(inbox, 10)
        claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
        saved = {p.name: (p.read_bytes(), os.lstat(p).st_mtime_ns) for p in inbox.iterdir()}
        umount(mnt)  # the server's tmpfs stays mounted: the new one cannot get its number
        assert mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)).returncode == 0
        assert os.stat(mnt).st_dev != os.stat(server).st_dev
        inbox.mkdir()
        for name, (data, mtime_ns) in saved.items():
            deliver(inbox, name, data)
            os.utime(inbox / name, ns=(mtime_ns, mtime_ns))
        daemon = boot_and_finish(tiny_bundle, inbox, outbox, len(inputs))
    finally:
        for path in (mnt, mnt, server):
            if is_mounted(path):
                umount(path)
    records = assert_exactly_once(outbox, inputs, failed=set(BAD))
    for name in claimed:
        assert (outbox / records[name]["moved_to"]).read_bytes() == inputs[name], name
    (warning,) = remount_warnings(daemon)
    assert warning["names"] == sorted(claimed), warning
    assert not is_mounted(mnt) and not is_mounted(server)


def test_reboot_with_a_claimed_file_replaced_on_the_share_processes_the_new_file_on_its_own(
    tiny_bundle: Path, tmp_path: Path, share: Share
) -> None:
    """Under a new device number only the same bytes with the same mtime count as the claimed input."""
    inbox, outbox = share.inbox, tmp_path / "outbox"
    inputs = fill(inbox, 10)
    claimed = crash_with_a_claimed_batch(tiny_bundle, inbox, outbox)
    other_bytes, other_mtime = claimed[0], claimed[1]
    replaced = {other_bytes: png_bytes(30, seed=777), other_mtime: inputs[other_mtime]}
    mtime_ns = os.lstat(share.export / other_bytes).st_mtime_ns
    deliver(share.export, other_bytes, replaced[other_bytes])
    os.utime(share.export / other_bytes, ns=(mtime_ns, mtime_ns))  # only the bytes differ
    later = os.lstat(share.export / other_mtime).st_mtime_ns + 5_000_000_000
    os.utime(share.export / other_mtime, ns=(later, later))  # only the mtime differs (touched)
    share_back_under_a_new_device_number(share)
    boot_and_finish(tiny_bundle, inbox, outbox, len(inputs) + 2)
    records = jsonl_records(outbox)
    counts = Counter(r["original_name"] for r in records)
    assert counts == Counter([*inputs, *replaced]), counts
    for name in replaced:
        first, second = (r for r in records if r["original_name"] == name)
        assert first["moved_to"] is None and first["input_sha256"] == sha256(inputs[name]), first
        assert second["status"] == "done" and second["input_sha256"] == sha256(replaced[name]), second
        assert (outbox / second["moved_to"]).read_bytes() == replaced[name]
    for name in set(claimed) - set(replaced):
        (record,) = (r for r in records if r["original_name"] == name)
        assert (outbox / record["moved_to"]).read_bytes() == inputs[name]
    assert not (outbox / ".pneumo" / "journal.json").exists()


class LoopDisk:
    """An ext4 image on a loop device mounted on ``inbox/``: a disk that keeps inode numbers and
    ctimes, so "mounted again" can be told apart from "replaced". Attached to a second loop device
    and mounted from there, it is the same files under another device number (an NFS share after
    a reboot)."""

    def __init__(self, root: Path) -> None:
        self.image = root / "share.img"
        self.inbox = root / "inbox"
        self.devices: list[str] = []

    def _attach(self) -> str:
        result = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            pytest.skip(f"no loop device here: {result.stderr.strip()}")
        self.devices.append(result.stdout.strip())
        return self.devices[-1]

    def setup(self) -> None:
        if shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
            pytest.skip("mkfs.ext4 and losetup are needed for a disk that keeps inodes and ctimes")
        with open(self.image, "wb") as handle:
            handle.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, timeout=60)
        self.inbox.mkdir()
        result = mount(self._attach(), str(self.inbox))
        assert result.returncode == 0, result.stderr

    def remount_under_another_number(self) -> None:
        second = self._attach()  # while the first is still attached: surely another device
        subprocess.run(["umount", str(self.inbox)], check=True, timeout=30)
        result = mount(second, str(self.inbox))
        assert result.returncode == 0, result.stderr

    def teardown(self) -> None:
        for _ in range(4):
            if not is_mounted(self.inbox):
                break
            subprocess.run(["umount", str(self.inbox)], capture_output=True, timeout=30)
        for device in self.devices:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)


@pytest.fixture
def loop_disk(tmp_path: Path, can_mount: None) -> Iterator[LoopDisk]:
    disk = LoopDisk(tmp_path)
    yield from set_up_and_undo(disk, disk.inbox)


def test_an_input_left_in_the_inbox_is_not_reread_after_the_share_comes_back_under_a_new_number(
    tiny_bundle: Path, tmp_path: Path, loop_disk: LoopDisk
) -> None:
    """A file that cannot be moved (immutable) fails once and is left; a reboot that brings the
    share back under another device number does not make it an input again."""
    inbox, outbox = loop_disk.inbox, tmp_path / "outbox"
    locked = inbox / "locked.png"
    locked.write_bytes(png_bytes(200, seed=10))
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    config = {"input-retries": 1, "quiet-seconds": 0.0}
    try:
        with Daemon(tiny_bundle, inbox, outbox, config=config, log_name="first").start() as daemon:
            daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the locked file's failure")
            assert daemon.signal(signal.SIGTERM) == 0
        before = os.stat(locked)
        loop_disk.remount_under_another_number()
        after = os.stat(locked)
        assert after.st_dev != before.st_dev
        assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
        with Daemon(tiny_bundle, inbox, outbox, config=config, log_name="after reboot").start() as daemon:
            daemon.wait_started()
            deliver(inbox, "after.png", png_bytes(30, seed=11))
            daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "the new file's result")
            time.sleep(1.5)  # several rescans: a file left in the inbox is not read again
            assert daemon.signal(signal.SIGTERM) == 0
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    counts = Counter(r["original_name"] for r in jsonl_records(outbox))
    assert counts == Counter(["locked.png", "after.png"]), counts
    left = json.loads((outbox / ".pneumo" / "left_in_inbox.json").read_text())
    assert list(left["inputs"]) == ["locked.png"]
