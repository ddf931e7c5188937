"""Crash safety of the watch daemon: a write-ahead record of the batch in hand.

The daemon turns a batch of inbox files into results in five visible steps
(move the input, write the per-image JSON, append to ``results.jsonl``,
append to ``results.csv``, forget the batch). A ``kill -9`` or power cut can
stop it between any two of them, so before the first step it writes a
*claim*: one JSON file, ``OUTBOX/.pneumo/journal.json``, written atomically
(temp file, fsync, rename, fsync of the folder), that holds for every input

* its identity in the inbox (name, inode, device, size, mtime, sha256 of the
  bytes that were read), so a later file of the same name is never mistaken
  for it;
* where it goes (``done/`` or ``failed/`` under a unique name) and where its
  JSON goes;
* the complete result record, so finishing after a crash writes exactly what
  would have been written, without running the model again;
* the sizes of ``results.jsonl`` and ``results.csv`` before the batch, so
  only the tail the batch may have appended is examined for its ids.

Every step is idempotent given the claim (see ``edge_runtime.outbox``): on
start, and after any outbox error, a claim left behind is finished, then
removed. Only one claim exists at a time (the daemon claims the next batch
only after removing the previous one), so "every input ends with exactly
one result" reduces to "a claimed batch is finished exactly once", and an
input that was never claimed is still in the inbox and simply processed.

A second daemon on the same outbox would break that reasoning, so the
outbox is locked (``flock`` on ``.pneumo/lock``) while the daemon runs. A
second daemon on the same inbox (with another outbox) would read and report
the same files, so the inbox is locked too (``INBOX/.pneumo-inbox.lock``, a
hidden name the inbox scanner never treats as an input).

The claim is written with ``edge_runtime.results.write_json_files``, which
never creates folders: a claim must not recreate an unmounted outbox on the
disk underneath it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeError
from edge_runtime.fileio import fsync_dir
from edge_runtime.results import write_json_files

STATE_DIR = ".pneumo"
JOURNAL_FILE = "journal.json"
LOCK_FILE = "lock"
INBOX_LOCK_FILE = ".pneumo-inbox.lock"
JOURNAL_SCHEMA = 1


class OutboxBusyError(EdgeError):
    """Another daemon holds the outbox lock."""


class InboxBusyError(OutboxBusyError):
    """Another daemon holds the inbox lock (a subclass: both mean "another daemon is running")."""


@dataclass
class JournalEntry:
    """One input of the claimed batch: who it is, where it goes, what its result says."""

    id: str
    name: str
    #: "file", "link", "dir", "other" (fifo, socket, device) or "missing" (vanished; nothing to move)
    kind: str
    #: "done" or "failed"
    status: str
    #: absolute inbox path when it was read
    source: str
    #: absolute path it is moved to; "" when there is nothing to move
    target: str
    #: absolute path of the per-image result JSON
    result_path: str
    record: dict[str, Any]
    ino: int = 0
    dev: int = 0
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    #: the input could not be removed from the inbox and stays there; the daemon must not read it again
    left_in_inbox: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalEntry:
        return cls(**data)


@dataclass
class Claim:
    """The batch in hand, as written to the journal before any visible step."""

    batch_id: str
    jsonl_offset: int
    csv_offset: int
    entries: list[JournalEntry] = field(default_factory=list)
    created: str = ""
    schema: int = JOURNAL_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        if not isinstance(data, dict):
            raise ValueError(f"a journal is a JSON object, not {type(data).__name__}")
        if data.get("schema") != JOURNAL_SCHEMA:
            raise ValueError(f"journal schema {data.get('schema')!r} is not {JOURNAL_SCHEMA}")
        entries = [JournalEntry.from_dict(e) for e in data["entries"]]
        return cls(
            batch_id=str(data["batch_id"]),
            jsonl_offset=int(data["jsonl_offset"]),
            csv_offset=int(data["csv_offset"]),
            entries=entries,
            created=str(data.get("created", "")),
        )


class Journal:
    """The claim file in ``STATE_DIR`` of the outbox."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / JOURNAL_FILE

    def write(self, claim: Claim) -> None:
        """Make the claim durable before anything of the batch becomes visible."""
        if not claim.created:
            claim.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        # atomic (temp file, fsync, rename, fsync of the folder) and never creates the state folder
        write_json_files([(self.path, claim.to_dict())])

    def read(self) -> Claim | None:
        """The unfinished claim, or None. A claim that cannot be parsed is moved aside and reported.

        Atomic writes mean a torn claim cannot happen through a crash; an
        unreadable one means disk corruption or a hand edit, so it is kept
        (renamed) for a person to inspect and a ValueError says where.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Claim.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            aside = self._aside_name()
            os.replace(self.path, aside)
            fsync_dir(self.state_dir)
            raise ValueError(f"{self.path}: unreadable journal ({exc}); kept as {aside}") from exc

    def _aside_name(self) -> Path:
        """A name no earlier kept journal has: two in one second, or a clock set back, keep both."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"journal.corrupt-{stamp}.json")
        n = 1
        while aside.exists():  # no race: only the daemon holding the outbox lock gets here
            n += 1
            aside = self.path.with_name(f"journal.corrupt-{stamp}-{n}.json")
        return aside

    def clear(self) -> None:
        """Forget the finished batch (durably, so it is not finished twice after a power cut)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.state_dir)


class FileLock:
    """An exclusive ``flock`` on one file; the file records the holder's pid.

    The lock file is never deleted (deleting a lock file lets two holders
    lock two different files), and it is created in an existing folder only.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def busy_error(self, holder: str) -> OutboxBusyError:
        return OutboxBusyError(f"{self.path}: another pneumo edge watch (pid {holder}) holds this lock")

    def acquire(self) -> None:
        if self._fd is not None:
            return
        # Held read-only: a file open for writing for months makes 'mount -o remount,ro' of the
        # disk fail ("mount point is busy"), as an operator does to protect a failing disk.
        try:
            self._fd = self._locked(os.O_RDONLY)
        except OSError:
            # Some filesystems refuse an exclusive lock through a read-only descriptor (NFS turns
            # flock into a POSIX write lock: EBADF; network and FUSE filesystems vary): the lock
            # matters more than the remount, so take it the old way. A real problem (no folder,
            # no permission) fails again here, with its own errno.
            self._fd = self._locked(os.O_RDWR)
            self._write_pid(self._fd)
            return
        self._write_pid(None)

    def _locked(self, mode: int) -> int:
        """A descriptor of the lock file holding the exclusive flock; busy_error if another holds it."""
        import fcntl

        fd = os.open(self.path, mode | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise self.busy_error(holder) from exc
        except OSError:
            os.close(fd)
            raise
        return fd

    def _write_pid(self, fd: int | None) -> None:
        """Record the holder's pid (only for the "held by" message); through ``fd``, or a short-lived one."""
        # A full or read-only disk must not cost the lock; an fd leaked here would hold the flock
        # and turn every later start into "busy". The short-lived descriptor is only used where
        # the lock is a real flock: closing it does not release a POSIX lock that is not there.
        try:
            writer = fd if fd is not None else os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            os.ftruncate(writer, 0)
            os.pwrite(writer, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        finally:
            if writer != fd:
                os.close(writer)

    def is_current(self) -> bool:
        """Held, and on the file that is at ``path`` now (not on one removed or on an unmounted disk)."""
        if self._fd is None:
            return False
        try:
            current = os.stat(self.path)
            mine = os.fstat(self._fd)
        except OSError:
            return False
        return (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)

    def ensure(self) -> None:
        """Hold the lock on the lock file that is there now (the folder may have been replaced)."""
        if self._fd is not None:
            if self.is_current():
                return
            self.release()
        self.acquire()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OutboxLock(FileLock):
    """``STATE_DIR/lock`` of the outbox: one daemon per outbox."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(Path(state_dir) / LOCK_FILE)

    def busy_error(self, holder: str) -> OutboxBusyError:
        return OutboxBusyError(
            f"{self.path}: another pneumo edge watch (pid {holder}) is using this outbox; "
            "stop it first, or give each daemon its own outbox"
        )


class InboxLock(FileLock):
    """``INBOX/.pneumo-inbox.lock``: one daemon per inbox, whatever its outbox."""

    def __init__(self, inbox: Path) -> None:
        super().__init__(Path(inbox) / INBOX_LOCK_FILE)

    def busy_error(self, holder: str) -> OutboxBusyError:
        return InboxBusyError(
            f"{self.path}: another pneumo edge watch (pid {holder}) is watching this inbox; "
            "two daemons on one inbox would both report the same files: stop it first"
        )
