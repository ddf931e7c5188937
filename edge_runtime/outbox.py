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
      .pneumo/outbox.json   this outbox's random id: recognises it when its disk is remounted
      .pneumo/left_in_inbox.json  inputs that could not be removed from the inbox (left, not re-read)

Inputs are moved, never deleted or overwritten. On one filesystem a move is
``rename`` (atomic). Across filesystems (an inbox on a network share) a
regular file is copied to a temp name, fsynced, read back and compared by
sha256, renamed into place and fsynced, and only then unlinked from the
inbox. Anything that is not a regular file (a symlink, a folder named like an
image, a fifo) is only ever renamed, never followed or copied: into
``failed/`` on the same filesystem, otherwise into ``INBOX/.pneumo-failed/``
(hidden, so never read again), and its error JSON says where it went.

Names are planned to fit: an input name whose result JSON name would
exceed the filesystem's name limit (255 bytes) is shortened, keeping its
extension and adding ``~`` and 8 characters of the result id. A result JSON
whose name another file took after its input was moved is written under a new
name (``NAME.json`` -> ``NAME (2).json``, its record's ``result_file``), never over it.

The outbox is never created behind the daemon's back: its root is created
(never its parents) only at the first preparation of a process; after that
the root must be the same folder (device and inode; or, after a remount,
the same ``.pneumo/outbox.json`` id), otherwise the outbox counts as
unavailable and inputs wait. No write here creates a parent folder.

An input that cannot be moved while both folders are writable (an immutable
or locked file, a name the filesystem refuses) raises :class:`InputStuckError`
for that input alone; the daemon retries it later or gives up on it, and the
rest of the batch goes on.

:meth:`Outbox.finish` performs the steps of a claim in order (move, per-image
JSON, results.jsonl, results.csv, clear the journal); each step first checks
whether it already happened, so running it again after a crash at any point
completes the batch without duplicating anything.

A network share gets a new device number (and, with CIFS ``noserverino``, new
inode numbers) each time it is mounted. A recovery therefore also accepts,
once the inbox is evidently that share mounted again (:func:`share_remounted`),
a regular file at the claimed path with the claimed size, mtime and sha256.
The same proof is accepted on the claimed filesystem itself when the inode
number changed: a ``noserverino`` share can come back under the device number
it had, since anonymous numbers are reused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from edge_runtime.fileio import Progress, fsync_dir, sha256_file
from edge_runtime.inbox import InboxUnavailableError
from edge_runtime.journal import STATE_DIR, Claim, Journal, JournalEntry
from edge_runtime.mountinfo import read_mount_of
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
OUTBOX_ID_FILE = "outbox.json"
LEFT_FILE = "left_in_inbox.json"
#: longest file name in bytes on Linux filesystems (ext4, xfs, btrfs, tmpfs, CIFS); some have less
NAME_MAX = 255
#: an "extension" longer than this is part of the name, not an extension to keep
_MAX_SUFFIX_BYTES = 16
#: errnos of a rename that can concern one input alone (immutable or locked file, refused name);
#: whether they do is decided by probing both folders (:meth:`Outbox._classify`)
_ENTRY_ERRNOS = frozenset(
    {errno.EPERM, errno.EACCES, errno.EBUSY, errno.ETXTBSY, errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP}
)
#: what a failpoint may send: a crash (SIGKILL) or a stop signal
_FAILPOINT_SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
_COPY_PREFIX = ".pneumo-copy-"
_PROBE_PREFIX = ".pneumo-probe-"
_CHUNK = 1 << 20

Warn = Callable[[str, dict[str, object]], None]
#: an input left in the inbox as last seen: size, mtime_ns, inode, device, ctime_ns (the
#: inbox watcher compares size and times only: inode and device change when a share is remounted)
LeftSignature = tuple[int, int, int, int, int]


class InputStuckError(OSError):
    """One input cannot be moved out of the inbox although both folders are writable.

    Carries the errno of the failed rename; the inbox and the outbox are fine,
    so only this input waits (or is given up), never the whole inbox.
    """


#: decides about an input that cannot be moved: None (try later) or the entry to finish instead
Stuck = Callable[[JournalEntry, InputStuckError, Claim], "JournalEntry | None"]


class OutboxReplacedError(OSError):
    """The outbox path is now another folder (disk unmounted, folder replaced): never written into."""


class InboxGoneError(InboxUnavailableError):
    """A claimed batch cannot be finished while its inbox is missing or unmounted: the claim waits."""


def left_signature(st: os.stat_result) -> LeftSignature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def _nbytes(name: str) -> int:
    return len(os.fsencode(name))


def _split_name(name: str) -> tuple[str, str]:
    stem, suffix = os.path.splitext(name)
    if not stem or _nbytes(suffix) > _MAX_SUFFIX_BYTES:
        return name, ""
    return stem, suffix


def fit_name(stem: str, suffix: str, marker: str, status: str, tag: str, limit: int) -> str:
    """``stem + marker + suffix`` if it and its result JSON name fit in ``limit`` bytes.

    Otherwise the stem is cut (whole characters, so UTF-8 stays valid) and
    ``~TAG`` added: the extension survives for whoever opens the file, and
    the tag (from the result id) keeps cut names distinct.
    """
    return _fit(stem, suffix, marker, tag, limit - _nbytes(result_file_name("", status)))


def _fit(stem: str, suffix: str, marker: str, tag: str, limit: int) -> str:
    """``stem + marker + suffix`` in ``limit`` bytes, the stem cut and ``~TAG`` added when too long."""
    name = stem + marker + suffix
    if _nbytes(name) <= limit:
        return name
    keep = f"~{tag}{marker}{suffix}"
    budget = limit - _nbytes(keep)
    cut = stem
    while cut and _nbytes(cut) > budget:
        cut = cut[:-1]
    return cut + keep


class Failpoint:
    """Fault injection for crash tests: SIGKILL the process (or send it a stop signal) at a named step.

    ``spec`` is ``STEP``, ``STEP:N`` (the N-th time that step is reached,
    default 1) or ``STEP:N:SIGNAL`` (``SIGTERM`` or ``SIGINT`` instead of
    ``SIGKILL``: a ``systemctl stop`` landing exactly there); the daemon reads it
    from ``PNEUMO_WATCH_FAILPOINT``. Steps: ``reading`` (each MiB of an input
    read, before it is decoded), ``decoding`` (an input about to be decoded),
    ``after-claim``, ``after-rename`` (an input just renamed into place, before
    anything after it reaches the journal), ``after-move``, ``after-result-json``,
    ``torn-jsonl`` (half of the batch's lines written), ``after-jsonl``, ``torn-csv``,
    ``after-csv``.
    An empty spec never fires. It exists so tests can stop the real daemon between
    any two durable steps instead of hoping a timed ``kill -9`` lands there.
    """

    def __init__(self, spec: str = "") -> None:
        name, _, rest = spec.partition(":")
        count, _, signame = rest.partition(":")
        self.name = name.strip()
        self.remaining = int(count) if count.strip() else 1
        if self.name and self.remaining < 1:
            raise ValueError(f"failpoint count must be >= 1: {spec!r}")
        signame = signame.strip().upper() or "SIGKILL"
        if signame not in _FAILPOINT_SIGNALS:
            raise ValueError(f"failpoint signal must be one of {', '.join(_FAILPOINT_SIGNALS)}: {spec!r}")
        self.signal = signal.Signals[signame]

    def wants(self, step: str) -> bool:
        """True when reaching ``step`` now should kill the process."""
        if self.name != step:
            return False
        self.remaining -= 1
        return self.remaining == 0

    def hit(self, step: str) -> None:
        if self.wants(step):
            self.fire()

    def fire(self) -> None:
        os.kill(os.getpid(), self.signal)


def _no_progress() -> None:
    pass


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` (a symlinked inbox is its target, as the inbox watcher sees it); None when missing."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _result_written(entry: JournalEntry) -> bool:
    """This input's result JSON is at its path already (a finish run again after a crash).

    False for anything else there (another file, a fifo): it is never replaced; the JSON is written
    under a new name instead (:meth:`Outbox._rename_taken_results`).
    """
    st = _lstat(Path(entry.result_path))
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    try:
        with open(entry.result_path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("id") == entry.id


def _copy_of_the_input(entry: JournalEntry, st: os.stat_result) -> bool:
    """Another inode of the claimed filesystem: maybe the original renumbered, maybe a copy.

    Its bytes are the input's, so it may take the input's result; but beside a verified copy
    in the outbox it is never unlinked, since it may be a file someone delivered again.
    """
    return bool(entry.dev) and st.st_dev == entry.dev and st.st_ino != entry.ino


def mount_point_of(inbox: Path) -> Path:
    """The folder the inbox's filesystem is mounted on (the inbox, or a folder above it).

    The inbox itself (as the inbox watcher takes it, symlinks resolved) when the mount table
    cannot say, or says the root filesystem: then its parent is the folder to compare with.
    """
    real = Path(os.path.realpath(inbox))
    entry = read_mount_of(real)
    if entry is None or entry.mount_point == Path("/") or not real.is_relative_to(entry.mount_point):
        return real
    return entry.mount_point


def share_remounted(entry_dev: int, inbox_dev: int, parent_dev: int) -> bool:
    """Is the inbox a share mounted again, under a new device number, since the input was claimed?

    CIFS and NFS get an anonymous device number at mount time, in mount order, so after a
    reboot the same share often comes back with another ``st_dev`` (and, with CIFS
    ``noserverino``, other inode numbers). ``parent_dev`` is the device of the folder holding
    the share's mount point (:func:`mount_point_of`): the inbox's parent when the share is
    mounted on the inbox, the parent of ``/mnt/share`` for a share mounted there holding
    ``/mnt/share/inbox``. The evidence, all three needed:

    * ``entry_dev != inbox_dev``: the inbox is not the filesystem the input was claimed on;
    * ``inbox_dev != parent_dev``: a filesystem is mounted on the inbox (or above it) now, so
      it is not the empty mount point of a share not mounted yet (that one waits);
    * ``entry_dev != parent_dev``: the input was not on the parent's filesystem either, so the
      inbox was not a plain local folder then, now hidden under something mounted over it
      (its files are still there underneath: that waits too).

    This only says where the input may be; whether a file is it is decided by its bytes
    (:func:`_same_content`).
    """
    return bool(entry_dev) and entry_dev not in (inbox_dev, parent_dev) and inbox_dev != parent_dev


def _same_content(
    entry: JournalEntry, st: os.stat_result, path: Path, progress: Progress | None = None
) -> bool:
    """A regular file with the claimed input's size, mtime and sha256, whatever its inode and device.

    Only used once the share is known to have been remounted: there the inode and device
    numbers say nothing, and size, mtime (to the nanosecond) and the sha256 of the bytes that
    were inferred still tell the claimed file from another one of that name.
    """
    if entry.kind != "file" or not entry.sha256 or not stat.S_ISREG(st.st_mode):
        return False
    if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return False
    try:
        return sha256_file(path, progress) == entry.sha256
    except OSError:
        return False


def _same_input(
    entry: JournalEntry,
    st: os.stat_result,
    path: Path,
    verify_content: bool,
    progress: Progress | None = None,
) -> bool:
    """Is the file at ``path`` (stat ``st``) the input of ``entry``?

    The inode alone is not enough: a file deleted and replaced can reuse it,
    and a file overwritten in place keeps it. Size and mtime catch those; a
    recovery after a crash (any amount of time may have passed) also checks
    the sha256 of the bytes that were inferred.
    """
    if (st.st_ino, st.st_dev) != (entry.ino, entry.dev):
        return False
    if entry.kind == "dir":
        return True  # a folder's mtime changes with its content; it is failed whatever it holds
    if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return False
    if verify_content and entry.kind == "file" and entry.sha256:
        try:
            return sha256_file(path, progress) == entry.sha256
        except OSError:
            return False
    return True


class Outbox:
    """Where results go, and the one place that moves inputs out of the inbox."""

    def __init__(self, root: Path, inbox: Path, progress: Progress | None = None) -> None:
        self.root = Path(root)
        self.inbox = Path(inbox)
        #: called after every input moved and every MiB hashed or copied (the daemon's watchdog ping)
        self.progress: Progress = progress or _no_progress
        self.done = self.root / DONE_DIR
        self.failed = self.root / FAILED_DIR
        self.state_dir = self.root / STATE_DIR
        self.jsonl = AppendLog(self.root / RESULTS_JSONL, "jsonl")
        self.csv = AppendLog(self.root / RESULTS_CSV, "csv")
        self.journal = Journal(self.state_dir)
        self.id_path = self.state_dir / OUTBOX_ID_FILE
        self.left_path = self.state_dir / LEFT_FILE
        #: (st_dev, st_ino) of the root as first prepared; None until then
        self.root_id: tuple[int, int] | None = None
        self.outbox_id = ""
        self._name_max: dict[str, int] = {}
        #: names of claimed inputs decided by the share-remount rule in the current finish
        self._remount_decided: list[str] = []
        #: names of claimed inputs found under another inode of their filesystem, by content
        self._content_decided: list[str] = []

    def ensure_layout(self) -> None:
        """Check the root is ours, create the sub-folders; raise OSError (with errno) when unusable."""
        self._ensure_root()
        for folder in (self.done, self.failed, self.state_dir):
            try:
                folder.mkdir(exist_ok=True)  # the root was verified: never parents
            except FileExistsError as exc:
                raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(folder)) from exc
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(folder))
            self.probe(folder)
        if self.root_id is None:
            self.outbox_id = self._read_outbox_id() or self._create_outbox_id()
            st = os.stat(self.root)
            self.root_id = (st.st_dev, st.st_ino)

    @staticmethod
    def probe(folder: Path) -> None:
        """Create and remove a file: a real create reports the true errno (EROFS, EACCES, EPERM...)."""
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)

    def _ensure_root(self) -> None:
        if self.root_id is None:
            # First preparation by this process: create the root if missing, but not its
            # parents: a missing parent is usually a disk that is not mounted yet.
            try:
                self.root.mkdir(exist_ok=True)
            except FileExistsError as exc:
                raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(self.root)) from exc
        st = os.stat(self.root)  # ENOENT: unmounted or removed; never recreated after the first time
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "exists but is not a folder", str(self.root))
        if self.root_id is None or (st.st_dev, st.st_ino) == self.root_id:
            return
        if self.outbox_id and self._read_outbox_id() == self.outbox_id:
            # the same outbox back under a new device number (a USB disk remounted): adopt it
            self.root_id = (st.st_dev, st.st_ino)
            return
        raise OutboxReplacedError(
            errno.ENODEV,
            "the outbox folder is not the one this daemon started with (disk unmounted, or the "
            "folder replaced); nothing is written into it",
            str(self.root),
        )

    def root_is_current(self) -> bool:
        """The root is the folder first prepared (a cheap stat; False before the first preparation)."""
        if self.root_id is None:
            return False
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.root_id

    def _read_outbox_id(self) -> str:
        try:
            value = json.loads(self.id_path.read_text(encoding="utf-8")).get("outbox_id", "")
        except (OSError, ValueError, AttributeError):
            return ""
        return value if isinstance(value, str) else ""

    def _create_outbox_id(self) -> str:
        value = uuid.uuid4().hex
        write_json_files([(self.id_path, {"outbox_id": value})])
        return value

    # -- inputs left in the inbox -------------------------------------------
    def load_left(self) -> dict[str, LeftSignature]:
        """Inputs that could not be removed from the inbox, by name (not read again while unchanged)."""
        try:
            data = json.loads(self.left_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        left: dict[str, LeftSignature] = {}
        for name, sig in (data.get("inputs") or {}).items() if isinstance(data, dict) else ():
            if isinstance(sig, list) and len(sig) == 5 and all(isinstance(v, int) for v in sig):
                left[name] = (sig[0], sig[1], sig[2], sig[3], sig[4])
        return left

    def save_left(self, left: dict[str, LeftSignature]) -> None:
        write_json_files([(self.left_path, {"inputs": {name: list(sig) for name, sig in left.items()}})])

    def _remember_left(self, entries: list[JournalEntry], verify_content: bool) -> None:
        left = self.load_left()
        for entry in entries:
            source = Path(entry.source)
            st = _lstat(source)
            if st is not None and self._identifies(entry, st, source, verify_content):
                left[entry.name] = left_signature(st)  # as it is now: maybe under a new device number
        self.save_left(left)

    def remove_stale_temp_files(self) -> int:
        """Temp files of writes and copies interrupted by a crash (only names this package makes)."""
        folders = (self.root, self.done, self.failed)
        removed = sum(remove_stale_temp_files(folder) for folder in (*folders, self.state_dir))
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

    def name_max(self, folder: Path) -> int:
        """The longest file name (bytes) ``folder``'s filesystem takes, at most NAME_MAX."""
        key = str(folder)
        if key not in self._name_max:
            try:
                self._name_max[key] = min(NAME_MAX, os.pathconf(folder, "PC_NAME_MAX"))
            except (OSError, ValueError):
                self._name_max[key] = NAME_MAX
        return self._name_max[key]

    def _free(self, folder: Path, candidate: str, status: str, folded: set[str]) -> bool:
        """``candidate`` and its JSON are unused on disk and not among ``folded`` (case-folded) paths."""
        json_name = result_file_name(candidate, status)
        if str(folder / candidate).casefold() in folded or str(folder / json_name).casefold() in folded:
            return False
        try:
            return _lstat(folder / candidate) is None and _lstat(folder / json_name) is None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            # the filesystem takes less than it said (eCryptfs: 143): learn it, plan shorter names
            self._name_max[str(folder)] = max(32, min(self.name_max(folder), _nbytes(json_name)) - 1)
            return False

    def unique_name(self, folder: Path, name: str, status: str, reserved: set[str], tag: str) -> str:
        """``name``, else ``stem (2).ext``, ``stem (3).ext``...: free for both the input and its JSON.

        Every candidate fits the name limit with its JSON (:func:`fit_name`). ``reserved`` (paths
        planned for other inputs) is compared case-folded: on a case-insensitive outbox (exFAT,
        CIFS) ``IMG1.JPG`` and ``img1.jpg`` are one file.
        """
        folded = {path.casefold() for path in reserved}
        stem, suffix = _split_name(name)
        for n in range(1, 1000):
            marker = "" if n == 1 else f" ({n})"
            candidate = fit_name(stem, suffix, marker, status, tag, self.name_max(folder))
            if self._free(folder, candidate, status, folded):
                return candidate
        return fit_name(stem, suffix, f"-{tag}", status, tag, self.name_max(folder))

    def unique_result_name(self, folder: Path, name: str, reserved: set[str], tag: str) -> str:
        """A free name for a result JSON whose name another file took: ``a.png (2).json``...

        Only the JSON is renamed (its input keeps its name, and ``result_file`` says where the
        JSON is), so no candidate can look like the JSON of another input name. Candidates fit
        the name limit; ``reserved`` is compared case-folded, as in :meth:`unique_name`.
        """
        folded = {path.casefold() for path in reserved}
        stem, suffix = _split_name(name)
        for n in range(2, 1000):
            candidate = _fit(stem, suffix, f" ({n})", tag, self.name_max(folder))
            if str(folder / candidate).casefold() not in folded and self._unused(folder / candidate):
                return candidate
        return _fit(stem, suffix, f"-{tag}", tag, self.name_max(folder))

    def _unused(self, path: Path) -> bool:
        try:
            return _lstat(path) is None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            # the filesystem takes less than it said (see _free): learn it, plan shorter names
            folder = path.parent
            self._name_max[str(folder)] = max(32, min(self.name_max(folder), _nbytes(path.name)) - 1)
            return False

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

    def _share_remounted(self, entry: JournalEntry) -> bool:
        """:func:`share_remounted` for the inbox as it is now, and the folder its filesystem is
        mounted on: the inbox itself, or a folder above it (a share on /mnt/share holding the inbox)."""
        st = _stat(self.inbox)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
        parent = _stat(mount_point_of(self.inbox).parent)
        return parent is not None and share_remounted(entry.dev, st.st_dev, parent.st_dev)

    def _identifies(self, entry: JournalEntry, st: os.stat_result, path: Path, verify_content: bool) -> bool:
        """Is the file at ``path`` (stat ``st``) the input of ``entry``?

        The same file (:func:`_same_input`); or a regular file with the same size, mtime and
        sha256 (:func:`_same_content`) either under another inode of the same filesystem, or,
        in a recovery (``verify_content``) once the inbox share is back under a new device
        number, anywhere on it. Folders, links and entries without a sha256 have no such
        proof: they are never matched by content.
        """
        if _same_input(entry, st, path, verify_content, self.progress):
            return True
        if _copy_of_the_input(entry, st):
            # one filesystem, another inode: CIFS ``noserverino`` makes inode numbers up at each
            # mount, and a reboot can hand the share the device number it had (anonymous numbers
            # are reused, smallest first); or a copy of the input with its bytes and mtime
            if not _same_content(entry, st, path, self.progress):
                return False
            self._content_decided.append(entry.name)
            return True
        if not (verify_content and st.st_dev != entry.dev and self._share_remounted(entry)):
            return False
        if not _same_content(entry, st, path, self.progress):
            return False
        self._remount_decided.append(entry.name)
        return True

    def _require_inbox(self, entry: JournalEntry) -> None:
        """InboxGoneError when the inbox is missing, or not on the filesystem ``entry`` was claimed on.

        Except when that filesystem is the inbox share back under a new device number
        (:func:`share_remounted`): then the inbox is there, and the input is not in it.
        """
        st = _stat(self.inbox)
        if st is None:
            raise InboxGoneError(
                f"{self.inbox}: inbox is missing, so the claimed input {entry.name} cannot be found; "
                "the interrupted batch is finished when the inbox is back"
            )
        if not entry.dev or st.st_dev == entry.dev:
            return
        if self._share_remounted(entry):
            self._remount_decided.append(entry.name)
            return
        raise self._elsewhere(entry)

    def _elsewhere(self, entry: JournalEntry) -> InboxGoneError:
        return InboxGoneError(
            f"{self.inbox}: inbox is on another filesystem than when {entry.name} was claimed (a share "
            "not mounted yet, or something mounted over it?); the interrupted batch is finished when "
            "it is back"
        )

    def finish(
        self,
        claim: Claim,
        warn: Warn,
        failpoint: Failpoint | None = None,
        stuck: Stuck | None = None,
        verify_content: bool = False,
        require_inbox: bool = True,
    ) -> None:
        """Complete every step of ``claim`` that has not happened yet, then clear the journal.

        Raises :class:`InboxGoneError` (the journal untouched) while the inbox is not there.
        ``stuck`` decides about an input that cannot be moved (:class:`InputStuckError`):
        it returns None to leave the input in the inbox unclaimed (tried again later),
        or the entry to finish instead (a failure record, nothing to move). Without it
        the error propagates. ``verify_content``: also compare sha256 before moving
        (a recovery after a crash).
        """
        failpoint = failpoint or Failpoint()
        self._remount_decided = []
        self._content_decided = []
        touched: set[Path] = set()
        kept: list[JournalEntry] = []
        changed = False
        for entry in claim.entries:
            self.progress()
            before = (entry.target, entry.left_in_inbox)
            try:
                touched.update(self._move(entry, claim, warn, verify_content, require_inbox, failpoint))
            except InputStuckError as exc:
                if stuck is None:
                    raise
                replacement = stuck(entry, exc, claim)
                changed = True
                if replacement is None:
                    continue
                entry = replacement
            changed = changed or (entry.target, entry.left_in_inbox) != before
            kept.append(entry)
        if self._remount_decided:
            warn(
                "the inbox is a share mounted again under a new device number since this batch was "
                "claimed (a reboot or remount): its inputs were recognised by name, size, mtime and "
                "sha256, and those no longer in it recorded as not moved; nothing to do",
                {"inbox": str(self.inbox), "names": sorted(set(self._remount_decided))},
            )
        if self._content_decided:
            warn(
                "claimed inputs are now other files of the same name (other inode numbers: a share "
                "that makes them up, such as CIFS noserverino, mounted again, or a copy): each was "
                "recognised by its size, mtime and sha256 and moved once; nothing to do",
                {"inbox": str(self.inbox), "names": sorted(set(self._content_decided))},
            )
        if changed:
            # what was decided about stuck or replaced inputs holds if we crash from here on
            claim.entries = kept
            self.journal.write(claim)
        for folder in touched:
            fsync_dir(folder)
        failpoint.hit("after-move")
        pending = [e for e in claim.entries if not _result_written(e)]
        for entry in pending:
            Path(entry.result_path).parent.mkdir(exist_ok=True)  # done/ or failed/ of a verified root
        self._rename_taken_results(pending, claim, warn)
        # never over another file: one that takes a JSON's name between the check above and its
        # write stops the batch (outbox_write_failed names it); the retry renames that JSON
        write_json_files([(Path(e.result_path), e.record) for e in pending], replace=False)
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
        left = [e for e in claim.entries if e.left_in_inbox]
        if left:
            self._remember_left(left, verify_content)
        self.journal.clear()

    def _is_ours(self, entry: JournalEntry, st: os.stat_result, target: Path) -> bool:
        if _same_input(entry, st, target, verify_content=False):
            return True
        # a verified cross-filesystem copy: same size and content as what was read
        return (
            entry.kind == "file"
            and stat.S_ISREG(st.st_mode)
            and st.st_size == entry.size
            and bool(entry.sha256)
            and sha256_file(target, self.progress) == entry.sha256
        )

    def _writable(self, folder: Path) -> bool:
        try:
            self.probe(folder)
        except OSError:
            return False
        return True

    def _classify(self, exc: OSError, source: Path, target: Path) -> OSError:
        """``exc`` as InputStuckError when it concerns this input alone: both folders take new files."""
        if exc.errno in _ENTRY_ERRNOS and self._writable(source.parent) and self._writable(target.parent):
            return InputStuckError(exc.errno or 0, exc.strerror or str(exc), str(source))
        return exc

    def _move(
        self,
        entry: JournalEntry,
        claim: Claim,
        warn: Warn,
        verify_content: bool = False,
        require_inbox: bool = True,
        failpoint: Failpoint | None = None,
    ) -> set[Path]:
        """Move one input to its target unless that already happened; return folders to fsync.

        When the inbox no longer holds the input (gone, replaced, changed), the
        entry is updated to say nothing was moved; a new file of that name is
        processed on its own later. When the inbox itself is gone, or is another
        filesystem than the input's (a share not mounted yet), nothing is decided:
        :class:`InboxGoneError`, and the claim waits (``require_inbox=False``
        decides anyway, after the caller has waited long enough). A share mounted
        again under a new device number is the inbox (:func:`share_remounted`): a
        recovery recognises its inputs by size, mtime and sha256, and decides at once
        about those that are not there.
        """
        if not entry.target:
            return set()
        source, target = Path(entry.source), Path(entry.target)
        at_target = _lstat(target)
        at_source = _lstat(source)
        source_is_entry = at_source is not None and self._identifies(entry, at_source, source, verify_content)
        if at_target is not None and self._is_ours(entry, at_target, target):
            if (
                at_source is not None
                and source_is_entry
                and not _copy_of_the_input(entry, at_source)
                and not _same_file(at_source, at_target)
            ):
                # crash between a verified copy and the unlink of the inbox original. Compared with
                # the original itself, not with entry.dev: after a reboot the share has a new number
                # and the outbox may even have the one the share had (anonymous numbers are reused)
                self._unlink_copied(source, entry, warn)
                return {source.parent}
            return set()
        if at_source is None and require_inbox:
            self._require_inbox(entry)
        elif (
            require_inbox
            and not source_is_entry
            and at_source is not None
            and entry.dev
            and at_source.st_dev != entry.dev
            and not self._share_remounted(entry)
        ):
            # another filesystem than the claim's, and not the share back: one mounted over a
            # plain inbox folder (or above it) hides the input underneath, so wait as for a gone inbox
            raise self._elsewhere(entry)
        if (
            not source_is_entry
            and at_source is not None
            and require_inbox
            and not verify_content
            and at_source.st_dev != entry.dev
            and self._share_remounted(entry)
        ):
            # live batch, share remounted between the claim and the move: only the recovery's
            # sha256 check can tell the input from a new file, so the claim waits for it
            raise InboxGoneError(
                f"{self.inbox}: the inbox share was mounted again under a new device number while "
                f"{entry.name} was being moved; the batch is finished at once by the recovery step, "
                "which compares each input's sha256"
            )
        if not source_is_entry:
            warn(
                "input left the inbox, or was replaced or changed, before it was moved; its result "
                "stands without the file, and a new file of that name is processed on its own",
                {"name": entry.name, "id": entry.id, "expected_at": str(target)},
            )
            entry.target = ""
            entry.record["moved_to"] = None
            return set()
        if at_target is not None or self._result_name_taken(entry):
            target = self._retarget(entry, claim, warn)
        target.parent.mkdir(exist_ok=True)  # done/ or failed/ of a verified root; never parents
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise self._classify(exc, source, target) from exc
            if entry.kind != "file":
                quarantine = self.inbox / QUARANTINE_DIR
                quarantine.mkdir(exist_ok=True)
                parked = quarantine / self.unique_name(
                    quarantine, entry.name, entry.status, set(), entry.id[:8]
                )
                try:
                    os.rename(source, parked)
                except OSError as exc2:
                    raise self._classify(exc2, source, parked) from exc2
                warn(
                    "not a regular file: parked inside the inbox, not copied",
                    {"name": entry.name, "at": str(parked)},
                )
                return {quarantine, source.parent}
            try:
                self._copy_verified(source, target, entry, warn)
            except OSError as exc2:
                raise self._classify(exc2, source, target) from exc2
            self._unlink_copied(source, entry, warn)
        else:
            if failpoint is not None:
                failpoint.hit("after-rename")  # tests: the journal must already name where it went
        return {target.parent, source.parent}

    @staticmethod
    def _result_name_taken(entry: JournalEntry) -> bool:
        """Its result JSON's name is taken before the input is moved: by another file, since this
        input's own JSON is written only after its move."""
        return Path(entry.target).parent == Path(entry.result_path).parent and (
            _lstat(Path(entry.result_path)) is not None
        )

    def _retarget(self, entry: JournalEntry, claim: Claim, warn: Warn) -> Path:
        """A new name for an input whose claimed name (or its JSON's) was taken after the claim.

        The entry, its record and the journal name it before the input is moved, so a crash
        right after the rename finds the input where the journal says, and the results name
        this input's files, never the other ones.
        """
        claimed = Path(entry.target)
        reserved = {p for e in claim.entries if e is not entry for p in (e.target, e.result_path) if p}
        unique = self.unique_name(claimed.parent, claimed.name, entry.status, reserved, entry.id[:8])
        target = claimed.with_name(unique)
        if claimed.parent == Path(entry.result_path).parent:  # else a link parked in the inbox
            entry.result_path = str(claimed.parent / result_file_name(unique, entry.status))
        entry.target = str(target)
        entry.record["moved_to"] = self.moved_to(entry.target)
        entry.record["result_file"] = self.moved_to(entry.result_path) or entry.result_path
        self.journal.write(claim)
        warn(
            "target name was taken after the claim; moved to a new name",
            {"name": entry.name, "id": entry.id, "claimed": str(claimed), "moved_to": str(target)},
        )
        return target

    def _rename_taken_results(self, pending: list[JournalEntry], claim: Claim, warn: Warn) -> None:
        """A new name for each result JSON whose name another file took after its input was moved.

        That file is never replaced, and the batch goes on rather than stopping the whole inbox
        until someone removes it. The journal names the new JSON before it is written, as in
        :meth:`_retarget`, so a recovery after a crash finds it there instead of renaming it again.
        """
        taken = [e for e in pending if _lstat(Path(e.result_path)) is not None]
        if not taken:
            return
        reserved = {p for e in claim.entries for p in (e.target, e.result_path) if p}
        renamed: list[tuple[JournalEntry, Path]] = []
        for entry in taken:
            claimed = Path(entry.result_path)
            unique = self.unique_result_name(claimed.parent, claimed.name, reserved, entry.id[:8])
            entry.result_path = str(claimed.with_name(unique))
            entry.record["result_file"] = self.moved_to(entry.result_path) or entry.result_path
            reserved.add(entry.result_path)
            renamed.append((entry, claimed))
        self.journal.write(claim)
        for entry, claimed in renamed:
            warn(
                "result JSON name was taken by another file after the claim; that file is left as it "
                "is and the result written under a new name",
                {
                    "name": entry.name,
                    "id": entry.id,
                    "claimed": str(claimed),
                    "result_file": entry.result_path,
                },
            )

    def _unlink_copied(self, source: Path, entry: JournalEntry, warn: Warn) -> None:
        """Remove the inbox original of a verified copy; an original that cannot go is left, not re-read."""
        try:
            os.unlink(source)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in _ENTRY_ERRNOS or not self._writable(source.parent):
                raise
            entry.left_in_inbox = True
            warn(
                "copied to the outbox and verified, but the original cannot be removed from the inbox "
                "(immutable or locked); it is left there and not read again while unchanged",
                {"name": entry.name, "id": entry.id, "errno": errno.errorcode.get(exc.errno or 0, "")},
            )

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
                    self.progress()
                fout.flush()
                os.fsync(fout.fileno())
            try:
                shutil.copystat(source, tmp, follow_symlinks=False)
            except OSError:
                pass
            if sha256_file(tmp, self.progress) != digest.hexdigest():
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
