"""The outbox state files: the locks that keep one daemon per inbox and per outbox."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edge_runtime.journal import FileLock, Journal, OutboxBusyError


def test_a_lock_taken_on_a_full_disk_is_held_not_leaked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    lock = FileLock(tmp_path / ".lock")
    with monkeypatch.context() as patched:
        patched.setattr(os, "ftruncate", disk_full)
        lock.acquire()  # the pid cannot be written: the lock still holds
    assert lock.held
    with pytest.raises(OutboxBusyError):
        FileLock(tmp_path / ".lock").acquire()
    lock.release()
    again = FileLock(tmp_path / ".lock")
    again.acquire()  # no descriptor leaked by the first: the next start gets it
    assert again.held
    again.release()


def test_unreadable_journals_are_each_kept_aside_never_one_over_another(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    kept = []
    for garbage in (b'{"batch_id": "torn', b"\x00" * 16, b"[]"):  # within one second: one stamp
        journal.path.write_bytes(garbage)
        with pytest.raises(ValueError, match="unreadable journal") as caught:
            journal.read()
        kept.append(Path(str(caught.value).rsplit("kept as ", 1)[1]))
    assert len(set(kept)) == 3
    assert [k.read_bytes() for k in kept] == [b'{"batch_id": "torn', b"\x00" * 16, b"[]"]
    assert not journal.path.exists() and journal.read() is None
