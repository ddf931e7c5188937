"""edge_runtime.inbox in-process: which files count as complete, in what order, and how they are read.

Real files in tmp_path and a fake monotonic clock (the watcher takes one, so
quiet and settle periods are stepped, not slept). inotify is off except where
a test feeds the events watchdog would deliver into the hint queue.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.inbox import (
    Candidate,
    InboxUnavailableError,
    InboxWatcher,
    entry_kind,
    read_input,
)
from edge_runtime.preprocess import MAX_FILE_BYTES
from tests.edge_runtime.watch_harness import png_bytes

CONTRACT = PreprocessContract(height=32, width=32)


def _watcher(inbox: Path, clock: list[float], **kw: object) -> InboxWatcher:
    settings: dict = {
        "quiet_seconds": 2.0,
        "max_pending": 4,
        "poll_interval": 1.0,
        "rescan_seconds": 5.0,
        "ignore": (".*", "*.part"),
        "use_watchdog": False,
    }
    settings.update(kw)
    return InboxWatcher(inbox, clock=lambda: clock[0], **settings)


def _write(path: Path, data: bytes = b"x", mtime_s: int | None = None) -> Path:
    path.write_bytes(data)
    if mtime_s is not None:
        os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def _names(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands]


# -- discovery ---------------------------------------------------------------
def test_entry_kind_names_every_kind_of_inbox_entry(tmp_path: Path) -> None:
    _write(tmp_path / "f.png")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "f.png", tmp_path / "l.png")
    os.mkfifo(tmp_path / "p.png")
    kinds = {name: entry_kind(os.lstat(tmp_path / name).st_mode) for name in ("f.png", "d", "l.png", "p.png")}
    assert kinds == {"f.png": "file", "d": "dir", "l.png": "link", "p.png": "other"}


def test_window_is_bounded_oldest_first_and_waits_for_quiet(tmp_path: Path) -> None:
    for i in range(10):
        path = tmp_path / f"f{i}.png"
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (tmp_path / "skip.png.part").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    clock = [100.0]
    watcher = _watcher(tmp_path, clock)
    assert watcher.poll(limit=10) == []  # seen, not yet quiet
    assert sorted(watcher.pending) == ["f0.png", "f1.png", "f2.png", "f3.png"]
    assert watcher.backlog == 10
    (tmp_path / "f1.png").write_bytes(b"xy")  # still being written
    clock[0] += 2.5
    ready = watcher.poll(limit=10)
    assert [c.name for c in ready] == ["f0.png", "f2.png", "f3.png"]
    for cand in ready:
        watcher.done(cand.name)
    clock[0] += 2.5
    assert [c.name for c in watcher.poll(limit=10)] == ["f1.png"]
    assert len(watcher.pending) <= 4


def test_ready_files_come_oldest_first_then_by_name_up_to_the_limit(tmp_path: Path) -> None:
    _write(tmp_path / "b.png", mtime_s=1000)
    _write(tmp_path / "a.png", mtime_s=1000)
    _write(tmp_path / "old.png", mtime_s=500)
    _write(tmp_path / "new.png", mtime_s=2000)
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0)
    first = watcher.poll(limit=3)
    assert _names(first) == ["old.png", "a.png", "b.png"]
    assert all(c.taken for c in first)
    # taken candidates are not handed out again while the batch is in hand
    assert _names(watcher.poll(limit=3)) == ["new.png"]
    assert watcher.poll(limit=3) == []


def test_backlog_is_still_reported_while_the_window_is_dropped(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}.png").write_bytes(b"x")
    watcher = _watcher(tmp_path, [100.0])
    watcher.poll(limit=10)
    assert watcher.backlog == 10
    watcher.forget_all()  # an outbox outage: no scans until it is back
    assert watcher.pending == {} and watcher.backlog == 10, "the heartbeat must not say 0 waiting"
    (tmp_path / "f0.png").unlink()
    watcher.poll(limit=10)  # the next scan counts again
    assert watcher.backlog == 9


def test_a_file_that_vanishes_before_it_is_quiet_is_never_an_input(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock)
    _write(tmp_path / "brief.png")
    assert watcher.poll(limit=4) == [] and "brief.png" in watcher.pending
    (tmp_path / "brief.png").unlink()
    clock[0] += 2.5
    assert watcher.poll(limit=4) == []
    assert "brief.png" not in watcher.pending


def test_created_file_waits_for_close_write_up_to_the_settle_time(tmp_path: Path) -> None:
    clock = [100.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.5, settle_seconds=10.0)
    (tmp_path / "open.png").write_bytes(b"half")
    watcher._hints.queue.put(("open.png", "created"))  # what inotify reports for a new file
    assert watcher.poll(limit=4) == []
    clock[0] += 5.0  # far past the quiet period: still open for writing
    assert watcher.poll(limit=4) == []
    watcher._hints.queue.put(("open.png", "closed"))
    assert [c.name for c in watcher.poll(limit=4)] == ["open.png"]
    # without a close, the settle time is the upper limit
    (tmp_path / "never closed.png").write_bytes(b"x")
    watcher._hints.queue.put(("never closed.png", "created"))
    assert watcher.poll(limit=4) == []
    clock[0] += 10.5
    assert [c.name for c in watcher.poll(limit=4)] == ["never closed.png"]


def test_a_rename_into_the_inbox_is_complete_at_once(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=30.0)
    _write(tmp_path / "renamed.png")
    watcher._hints.queue.put(("renamed.png", "moved"))
    assert _names(watcher.poll(limit=4)) == ["renamed.png"]


def test_close_write_waits_for_quiet_when_it_is_not_trusted(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=3.0, trust_close_write=False)
    _write(tmp_path / "closed.png")
    watcher._hints.queue.put(("closed.png", "closed"))  # an uploader that closes between chunks
    assert watcher.poll(limit=4) == []
    clock[0] += 3.5
    assert _names(watcher.poll(limit=4)) == ["closed.png"]


def test_daemons_own_names_are_never_inputs(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0, ignore=())
    for name in (".pneumo-inbox.lock", ".pneumo-probe-x", "image.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [c.name for c in watcher.poll(limit=8)] == ["image.png"]
    assert watcher.ignored(".pneumo-anything") and not watcher.ignored("image.png")


def test_ignore_patterns_match_whole_names_case_sensitively(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path, [0.0], ignore=("*.part", ".*", "*~"))
    assert watcher.ignored("scan.png.part") and watcher.ignored(".hidden.png") and watcher.ignored("a.png~")
    assert not watcher.ignored("scan.PART.png") and not watcher.ignored("scan.png.PART")


def test_subfolders_are_reported_once_and_counted_a_folder_named_like_an_image_is_an_input(
    tmp_path: Path,
) -> None:
    (tmp_path / "batch2").mkdir()
    for i in range(3):
        _write(tmp_path / "batch2" / f"img{i}.png")
    _write(tmp_path / "batch2" / ".hidden")  # ignored names are not counted
    (tmp_path / "empty").mkdir()
    (tmp_path / "weird.png").mkdir()
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0)
    ready = watcher.poll(limit=4)
    assert [(c.name, c.kind) for c in ready] == [("weird.png", "dir")]
    assert watcher.subfolders == {"batch2": 3}
    assert watcher.new_subfolders == [("batch2", 3)]
    watcher.new_subfolders.clear()  # the daemon reports them, then clears the list
    clock[0] += 10.0
    watcher.poll(limit=4)
    assert watcher.new_subfolders == [] and watcher.subfolders == {"batch2": 3}


# -- putting inputs back -------------------------------------------------------
def test_requeue_restarts_the_quiet_period_with_the_new_size(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock)
    path = _write(tmp_path / "growing.png", b"half")
    clock[0] += 2.5
    watcher.poll(limit=4)
    clock[0] += 2.5
    (cand,) = watcher.poll(limit=4)
    path.write_bytes(b"the whole file")  # the reader saw it change: not complete after all
    watcher.requeue(cand.name)
    assert watcher.pending["growing.png"].size == len(b"the whole file")
    assert watcher.poll(limit=4) == []
    clock[0] += 2.5
    assert _names(watcher.poll(limit=4)) == ["growing.png"]


def test_requeue_of_a_vanished_file_forgets_it(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path, [0.0], quiet_seconds=0.0)
    path = _write(tmp_path / "gone.png")
    (cand,) = watcher.poll(limit=4)
    path.unlink()
    watcher.requeue(cand.name)
    assert watcher.pending == {}


def test_a_parked_input_waits_its_delay_and_the_wakeup_says_when(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0, poll_interval=60.0, rescan_seconds=60.0)
    _write(tmp_path / "eio.png")
    (cand,) = watcher.poll(limit=4)
    watcher.park(cand.name, 8.0)
    assert watcher.poll(limit=4) == []
    assert watcher.next_wakeup() == pytest.approx(8.0)
    clock[0] += 8.0
    assert _names(watcher.poll(limit=4)) == ["eio.png"]


def test_settle_holds_an_unsignalled_broken_file_until_it_held_still(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=1.0, settle_seconds=20.0)
    path = _write(tmp_path / "cut.png", png_bytes(200)[:40])
    watcher.poll(limit=4)
    clock[0] += 1.5
    (cand,) = watcher.poll(limit=4)
    assert watcher.settle(cand) is True  # the writer may only have paused
    assert not cand.taken and watcher.poll(limit=4) == []
    clock[0] += 20.0  # unchanged for settle_seconds: really broken
    (again,) = watcher.poll(limit=4)
    assert watcher.settle(again) is False
    # a file that changed meanwhile is put back for a new quiet period
    path.write_bytes(png_bytes(200))
    assert watcher.settle(again) is True and watcher.pending["cut.png"].size == len(png_bytes(200))


def test_settle_never_holds_a_file_signalled_complete_or_gone(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0)
    _write(tmp_path / "renamed.png")
    watcher._hints.queue.put(("renamed.png", "moved"))
    (renamed,) = watcher.poll(limit=4)
    assert watcher.settle(renamed) is False  # its writer said it was complete
    path = _write(tmp_path / "gone.png")
    clock[0] += 1.0  # the next scan finds it
    (gone,) = watcher.poll(limit=4)
    path.unlink()
    assert watcher.settle(gone) is False


# -- inputs left in the inbox ----------------------------------------------------
def _left_signature(path: Path) -> tuple[int, int, int, int, int]:
    st = os.lstat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def test_an_input_left_in_the_inbox_is_skipped_until_it_changes(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0)
    path = _write(tmp_path / "immutable.png")
    watcher.left = {"immutable.png": _left_signature(path)}
    assert watcher.poll(limit=4) == [] and not watcher.left_changed
    os.utime(path, ns=(5 * 10**18, 5 * 10**18))  # the operator touched it after fixing the cause
    clock[0] += 10.0
    assert _names(watcher.poll(limit=4)) == ["immutable.png"]
    assert watcher.left == {} and watcher.left_changed


def test_a_left_input_removed_from_the_inbox_is_forgotten(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path, [0.0], quiet_seconds=0.0)
    watcher.left = {"taken away.png": (1, 2, 3, 4, 5)}
    watcher.poll(limit=4)
    assert watcher.left == {} and watcher.left_changed


# -- the inbox itself ----------------------------------------------------------
def test_missing_inbox_raises(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path / "absent", [0.0])
    with pytest.raises(InboxUnavailableError, match="missing"):
        watcher.poll(limit=4)


def test_an_inbox_that_is_a_file_raises_and_says_what_to_do(tmp_path: Path) -> None:
    _write(tmp_path / "inbox")
    watcher = _watcher(tmp_path / "inbox", [0.0])
    with pytest.raises(InboxUnavailableError, match=r"inbox is not a folder; replace it"):
        watcher.poll(limit=4)


def test_inotify_mode_and_why_not(tmp_path: Path) -> None:
    polling = _watcher(tmp_path, [0.0])
    polling.start()
    assert polling.mode == "polling" and "--no-watchdog" in polling.watch_error
    watching = _watcher(tmp_path, [0.0], use_watchdog=True)
    watching.start()
    try:
        assert watching.mode == "inotify" and watching.watch_error == ""
    finally:
        watching.stop()


# -- reading -------------------------------------------------------------------
def _candidate(path: Path, kind: str = "file") -> Candidate:
    st = os.lstat(path)
    return Candidate(path.name, kind, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, 0.0, hinted=True)


def test_an_image_is_read_once_hashed_and_decoded_with_the_contract(tmp_path: Path) -> None:
    data = png_bytes(200, seed=7)
    path = _write(tmp_path / "chest.png", data)
    read = read_input(tmp_path, _candidate(path), CONTRACT)
    assert read.outcome == "image" and read.kind == "file" and read.source == str(path)
    assert read.sha256 == hashlib.sha256(data).hexdigest() and read.size == len(data)
    assert read.image is not None and read.image.shape == (32, 32, 1)
    assert path.read_bytes() == data  # reading never changes the input


def test_a_large_file_reports_progress_after_every_mib_and_reads_the_same(tmp_path: Path) -> None:
    """The daemon's watchdog ping rides on these calls: a large file on a slow share is progress."""
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    data = cv2.imencode(".png", noise)[1].tobytes()  # incompressible: over 3 MiB
    path = _write(tmp_path / "large.png", data)
    calls: list[None] = []
    read = read_input(tmp_path, _candidate(path), CONTRACT, lambda: calls.append(None))
    assert len(calls) == math.ceil(len(data) / (1 << 20)) >= 3
    plain = read_input(tmp_path, _candidate(path), CONTRACT)
    assert read.outcome == plain.outcome == "image" and read.sha256 == plain.sha256
    assert read.image is not None and plain.image is not None and np.array_equal(read.image, plain.image)


def test_content_not_the_name_decides_the_format(tmp_path: Path) -> None:
    path = _write(tmp_path / "FROM SCANNER", png_bytes(30))  # no extension at all
    assert read_input(tmp_path, _candidate(path), CONTRACT).outcome == "image"


@pytest.mark.parametrize(
    ("data", "reason", "maybe_incomplete"),
    [
        (b"", "empty file (0 bytes)", True),
        (png_bytes(200)[:60], "corrupt or truncated png", True),
        (b"hello, not an image", "not an image", False),
    ],
)
def test_a_broken_file_is_rejected_with_the_decoders_reason(
    tmp_path: Path, data: bytes, reason: str, maybe_incomplete: bool
) -> None:
    path = _write(tmp_path / "bad.png", data)
    read = read_input(tmp_path, _candidate(path), CONTRACT)
    assert read.outcome == "rejected" and read.kind == "file" and reason in read.reason
    assert read.maybe_incomplete is maybe_incomplete
    assert read.sha256 == hashlib.sha256(data).hexdigest()  # the failure names what was read


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    secret = _write(tmp_path.parent / f"{tmp_path.name}-secret.png", png_bytes(200))
    inbox = tmp_path
    os.symlink(secret, inbox / "link.png")
    read = read_input(inbox, _candidate(inbox / "link.png", "link"), CONTRACT)
    assert read.outcome == "rejected" and read.kind == "link"
    assert repr(str(secret)) in read.reason and "never followed" in read.reason
    assert read.sha256 == "" and read.image is None


def test_a_folder_and_a_fifo_are_rejected_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # opening a fifo for reading would block forever
    folder = read_input(tmp_path, _candidate(tmp_path / "folder.png", "dir"), CONTRACT)
    fifo = read_input(tmp_path, _candidate(tmp_path / "pipe.png", "other"), CONTRACT)
    assert (folder.outcome, folder.kind) == ("rejected", "dir") and "folder" in folder.reason
    assert (fifo.outcome, fifo.kind) == ("rejected", "other") and "fifo" in fifo.reason


def test_a_file_over_the_size_limit_is_rejected_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    read = read_input(tmp_path, _candidate(path), CONTRACT)
    assert read.outcome == "rejected" and f"{MAX_FILE_BYTES + 1:,} bytes" in read.reason
    assert read.size == MAX_FILE_BYTES + 1 and read.sha256 == ""


def test_file_changed_after_discovery_is_not_read_as_complete(tmp_path: Path) -> None:
    path = tmp_path / "growing.png"
    path.write_bytes(png_bytes(200)[:50])
    cand = _candidate(path)
    path.write_bytes(png_bytes(200))
    assert read_input(tmp_path, cand, CONTRACT).outcome == "changed"


def test_a_file_replaced_under_the_same_name_is_another_input(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.png", png_bytes(200))
    cand = _candidate(path)
    _write(tmp_path / "other", png_bytes(200))
    os.rename(tmp_path / "other", path)  # same size and content, another inode
    assert read_input(tmp_path, cand, CONTRACT).outcome == "changed"


def test_file_vanished_between_discovery_and_reading(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    path.write_bytes(png_bytes(200))
    cand = _candidate(path)
    path.unlink()
    read = read_input(tmp_path, cand, CONTRACT)
    assert read.outcome == "rejected" and read.kind == "missing" and "vanished" in read.reason
    path.write_bytes(png_bytes(200))
    os.rename(tmp_path, tmp_path.with_name("moved away"))
    with pytest.raises(InboxUnavailableError):
        read_input(tmp_path, cand, CONTRACT)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(errno.EIO, "retry"), (errno.ESTALE, "retry"), (errno.EACCES, "rejected")],
)
def test_a_read_error_that_may_pass_is_retried_others_fail_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, outcome: str
) -> None:
    path = _write(tmp_path / "share.png", png_bytes(200))
    cand = _candidate(path)

    def failing_read(fd: int, n: int) -> bytes:
        # a disk or network share fault cannot be produced on tmp_path; the OS call is replaced
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "read", failing_read)
    read = read_input(tmp_path, cand, CONTRACT)
    assert read.outcome == outcome and read.kind == "file"
    assert read.reason == f"cannot read file: {os.strerror(code)}"
    assert stat.S_ISREG(os.lstat(path).st_mode)  # the input is untouched either way
