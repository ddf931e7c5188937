"""The outbox of the watch daemon: its layout, unique names, moving inputs, finishing a claimed batch.

Layout::

    OUTBOX/
      done/NAME             the input, moved here (never copied and left, never re-encoded)
      done/NAME.json        its result (probability, label, threshold, model, ...)
      failed/NAME           an input that could not be read, moved here
      failed/NAME.error.json  why (the decoder's reason), with the same id scheme
      results.jsonl         one line per input, done or failed (edge_runtime.results)
      results.csv           the same, main columns
      heartbeat.json        daemon liveness and counters (unless --heartbeat moves it)
      watch_config.json     the resolved settings of the running daemon
      .pneumo/journal.json  the claimed batch (edge_runtime.journal); absent when idle
      .pneumo/lock          held by the running daemon

Inputs are moved, never deleted or overwritten. On one filesystem a move is
``rename`` (atomic). Across filesystems (an inbox on a network share) a
regular file is copied to a temp name, fsynced, read back and compared by
sha256, renamed into place and fsynced, and only then unlinked from the
inbox. Anything that is not a regular file (a symlink, a folder named like an
image, a fifo) is only ever renamed, never followed or copied: into
``failed/`` on the same filesystem, otherwise into ``INBOX/.pneumo-failed/``
(hidden, so never read again), and its error JSON says where it went.

:meth:`Outbox.finish` performs the steps of a claim in order (move, per-image
JSON, results.jsonl, results.csv, clear the journal); each step first checks
whether it already happened, so running it again after a crash at any point
completes the batch without duplicating anything.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge_runtime.fileio import fsync_dir, sha256_file
from edge_runtime.journal import STATE_DIR, Claim, Journal, JournalEntry
from edge_runtime.results import (
    RESULTS_CSV,
    RESULTS_JSONL,
    AppendLog,
    remove_stale_temp_files,
    result_file_name,
    write_json_files,
)

DONE_DIR = "done"
FAILED_DIR = "failed"
QUARANTINE_DIR = ".pneumo-failed"
CONFIG_FILE = "watch_config.json"
_COPY_PREFIX = ".pneumo-copy-"
_PROBE_PREFIX = ".pneumo-probe-"
_CHUNK = 1 << 20

Warn = Callable[[str, dict[str, object]], None]


class Failpoint:
    """Fault injection for crash tests: SIGKILL the process at a named step.

    ``spec`` is ``STEP`` or ``STEP:N`` (the N-th time that step is reached,
    default 1); the daemon reads it from ``PNEUMO_WATCH_FAILPOINT``. Steps:
    ``after-claim``, ``after-move``, ``after-result-json``, ``torn-jsonl``
    (half of the batch's lines written), ``after-jsonl``, ``torn-csv``,
    ``after-csv``. An empty spec never fires. It exists so tests can stop
    the real daemon between any two durable steps instead of hoping a timed
    ``kill -9`` lands there.
    """

    def __init__(self, spec: str = "") -> None:
        name, _, count = spec.partition(":")
        self.name = name.strip()
        self.remaining = int(count) if count.strip() else 1
        if self.name and self.remaining < 1:
            raise ValueError(f"failpoint count must be >= 1: {spec!r}")

    def wants(self, step: str) -> bool:
        """True when reaching ``step`` now should kill the process."""
        if self.name != step:
            return False
        self.remaining -= 1
        return self.remaining == 0

    def hit(self, step: str) -> None:
        if self.wants(step):
            self.fire()

    @staticmethod
    def fire() -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class Outbox:
    """Where results go, and the one place that moves inputs out of the inbox."""

    def __init__(self, root: Path, inbox: Path) -> None:
        self.root = Path(root)
        self.inbox = Path(inbox)
        self.done = self.root / DONE_DIR
        self.failed = self.root / FAILED_DIR
        self.state_dir = self.root / STATE_DIR
        self.jsonl = AppendLog(self.root / RESULTS_JSONL, "jsonl")
        self.csv = AppendLog(self.root / RESULTS_CSV, "csv")
        self.journal = Journal(self.state_dir)

    def ensure_layout(self) -> None:
        """Create the folders; raise OSError (with errno) when the outbox is unusable."""
        for folder in (self.root, self.done, self.failed, self.state_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except FileExistsError as exc:
                raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(folder)) from exc
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(folder))
            # a real create, not os.access: it reports the true errno (EROFS, EACCES, EPERM...)
            fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=folder)
            os.close(fd)
            os.unlink(probe)

    def remove_stale_temp_files(self) -> int:
        """Temp files of writes and copies interrupted by a crash (only names this package makes)."""
        folders = (self.root, self.done, self.failed)
        removed = sum(remove_stale_temp_files(folder) for folder in folders)
        ours = [(folder, _COPY_PREFIX, ".tmp") for folder in folders] + [
            (folder, _PROBE_PREFIX, "") for folder in folders
        ]
        ours.append(
            (self.state_dir, f".{self.journal.path.name}.", ".tmp")
        )  # fileio.atomic_write_json's temp names
        for folder, prefix, suffix in ours:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if (
                    entry.name.startswith(prefix)
                    and entry.name.endswith(suffix)
                    and entry.is_file(follow_symlinks=False)
                ):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except OSError:
                        pass
        return removed

    def same_filesystem(self, folder: Path) -> bool:
        try:
            return os.stat(self.inbox).st_dev == os.stat(folder).st_dev
        except OSError:
            return True

    def _free(self, folder: Path, candidate: str, status: str, reserved: set[str]) -> bool:
        json_name = result_file_name(candidate, status)
        return (
            str(folder / candidate) not in reserved
            and str(folder / json_name) not in reserved
            and _lstat(folder / candidate) is None
            and _lstat(folder / json_name) is None
        )

    def unique_name(self, folder: Path, name: str, status: str, reserved: set[str], tag: str) -> str:
        """``name``, else ``stem (2).ext``, ``stem (3).ext``...: free for both the input and its JSON."""
        stem, suffix = os.path.splitext(name)
        if not stem:
            stem, suffix = name, ""
        if self._free(folder, name, status, reserved):
            return name
        for n in range(2, 1000):
            candidate = f"{stem} ({n}){suffix}"
            if self._free(folder, candidate, status, reserved):
                return candidate
        return f"{stem}-{tag}{suffix}"

    def plan(self, name: str, kind: str, status: str, reserved: set[str], tag: str) -> tuple[str, str]:
        """(target path or "", result JSON path) for one input; reserves both names."""
        folder = self.done if status == "done" else self.failed
        unique = self.unique_name(folder, name, status, reserved, tag)
        result_path = folder / result_file_name(unique, status)
        target = "" if kind == "missing" else str(folder / unique)
        if kind not in ("file", "missing") and not self.same_filesystem(folder):
            # never copy what is not a regular file: park it inside the inbox's filesystem
            quarantine = self.inbox / QUARANTINE_DIR
            target = str(quarantine / self.unique_name(quarantine, name, status, reserved, tag))
        reserved.update({str(result_path), str(folder / unique), target})
        return target, str(result_path)

    def moved_to(self, target: str) -> str | None:
        """How a record names the moved input: relative to the outbox when inside it."""
        if not target:
            return None
        path = Path(target)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def finish(self, claim: Claim, warn: Warn, failpoint: Failpoint | None = None) -> None:
        """Complete every step of ``claim`` that has not happened yet, then clear the journal."""
        failpoint = failpoint or Failpoint()
        touched: set[Path] = set()
        for entry in claim.entries:
            touched.update(self._move(entry, warn))
        for folder in touched:
            fsync_dir(folder)
        failpoint.hit("after-move")
        pending = [
            (Path(e.result_path), e.record) for e in claim.entries if _lstat(Path(e.result_path)) is None
        ]
        for path, _ in pending:
            path.parent.mkdir(parents=True, exist_ok=True)
        write_json_files(pending)
        failpoint.hit("after-result-json")
        for log, offset, step in (
            (self.jsonl, claim.jsonl_offset, "jsonl"),
            (self.csv, claim.csv_offset, "csv"),
        ):
            present = log.repair_tail(offset)
            data = log.encode([e.record for e in claim.entries if e.id not in present])
            if data and failpoint.wants(f"torn-{step}"):
                log.write_bytes(data[: len(data) // 2])
                failpoint.fire()
            if data:
                log.write_bytes(data)
            failpoint.hit(f"after-{step}")
        self.journal.clear()

    def _is_ours(self, entry: JournalEntry, st: os.stat_result, target: Path) -> bool:
        if (st.st_ino, st.st_dev) == (entry.ino, entry.dev):
            return True
        # a verified cross-filesystem copy: same size and content as what was read
        return (
            entry.kind == "file"
            and stat.S_ISREG(st.st_mode)
            and st.st_size == entry.size
            and bool(entry.sha256)
            and sha256_file(target) == entry.sha256
        )

    def _move(self, entry: JournalEntry, warn: Warn) -> set[Path]:
        """Move one input to its target unless that already happened; return folders to fsync."""
        if not entry.target:
            return set()
        source, target = Path(entry.source), Path(entry.target)
        at_target = _lstat(target)
        at_source = _lstat(source)
        source_is_entry = at_source is not None and (at_source.st_ino, at_source.st_dev) == (
            entry.ino,
            entry.dev,
        )
        if at_target is not None and self._is_ours(entry, at_target, target):
            if source_is_entry and at_target.st_dev != entry.dev:
                # crash between a verified copy and the unlink of the inbox original
                os.unlink(source)
                return {source.parent}
            return set()
        if not source_is_entry:
            warn(
                "input left the inbox before it was moved; its result stands without the file",
                {"name": entry.name, "id": entry.id, "expected_at": str(target)},
            )
            return set()
        if at_target is not None:
            old = target
            target = target.with_name(
                self.unique_name(target.parent, target.name, entry.status, set(), entry.id[:8])
            )
            warn(
                "target name was taken after the claim; moved to a new name",
                {"name": entry.name, "id": entry.id, "claimed": str(old), "moved_to": str(target)},
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            if entry.kind != "file":
                quarantine = self.inbox / QUARANTINE_DIR
                quarantine.mkdir(exist_ok=True)
                parked = quarantine / self.unique_name(
                    quarantine, entry.name, entry.status, set(), entry.id[:8]
                )
                os.rename(source, parked)
                warn(
                    "not a regular file: parked inside the inbox, not copied",
                    {"name": entry.name, "at": str(parked)},
                )
                return {quarantine, source.parent}
            self._copy_verified(source, target, entry, warn)
        return {target.parent, source.parent}

    def _copy_verified(self, source: Path, target: Path, entry: JournalEntry, warn: Warn) -> None:
        """Cross-filesystem move of a regular file: copy, fsync, verify, rename, and only then unlink."""
        tmp = target.with_name(f"{_COPY_PREFIX}{entry.id}.tmp")
        digest = hashlib.sha256()
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with os.fdopen(src_fd, "rb") as fin, open(tmp, "wb") as fout:
                for chunk in iter(lambda: fin.read(_CHUNK), b""):
                    digest.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            try:
                shutil.copystat(source, tmp, follow_symlinks=False)
            except OSError:
                pass
            if sha256_file(tmp) != digest.hexdigest():
                raise OSError(errno.EIO, "copy read back with a different sha256", str(target))
            os.rename(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(target.parent)
        if digest.hexdigest() != entry.sha256:
            warn(
                "input changed after it was read; the moved file differs from what was inferred",
                {
                    "name": entry.name,
                    "id": entry.id,
                    "read_sha256": entry.sha256,
                    "moved_sha256": digest.hexdigest(),
                },
            )
        os.unlink(source)
