"""The inbox of the watch daemon: finding complete files, and reading them without trusting them.

Discovery (:class:`InboxWatcher`) combines two sources:

* inotify through watchdog, for speed: a file renamed into the inbox
  (``moved_to``) or closed after writing (``close_write``, unless
  ``trust_close_write`` is off) is complete at once; a created file is only
  noted;
* scans of the folder (``os.scandir``), for certainty: at start (what was
  already there), every ``rescan_seconds`` (events can be dropped, and
  inotify sees nothing of writes made by another machine on a network
  share), and every ``poll_interval`` when inotify is unavailable. A file
  found this way is complete once its size, mtime and inode held still for
  ``quiet_seconds``, measured on this machine's monotonic clock (a writer's
  clock may be wrong).

Memory is bounded: at most ``max_pending`` candidates are tracked. When the
window is full, discovery pauses: events beyond it are dropped and a rescan
is scheduled, and a scan keeps only the oldest files (by mtime, through a
bounded heap) that fit. A flood of 10,000 files therefore costs a window of
``max_pending`` small records, never a 10,000-item list.

A file created in the inbox (inotify ``created``) and not yet closed is
still being written: it waits for ``close_write`` (or a rename), or, when
none comes, until it has held still for ``settle_seconds``. A file that was
never signalled complete and fails to decode as truncated or corrupt is not
failed at once either (the writer may only have paused): it is held until
unchanged for ``settle_seconds`` (:meth:`InboxWatcher.settle`).

Ignored: names matching ``ignore`` (hidden files, ``*.part``, ``*.tmp``,
``*.crdownload``...), the daemon's own ``.pneumo-*`` names (whatever
``ignore`` says), inputs the daemon had to leave in the inbox (while they
are unchanged), and sub-folders, except a folder named like an image, which
is reported as a failure. A sub-folder holding files is reported once
(:attr:`InboxWatcher.new_subfolders`) and its files counted, since they are
never processed. Everything else is a candidate; the file's content, not
its extension, decides whether it is an image.

Reading (:func:`read_input`) never follows a symlink, never opens a fifo or
device, reads the bytes once (so the sha256 is of exactly what was decoded)
and refuses the result if the file changed while it was read. A read error
that may pass (EIO, ESTALE, a network share timing out) is reported as
``retry``, not as a failed input.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import heapq
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import EdgeError, ImageDecodeError
from edge_runtime.fileio import Progress
from edge_runtime.preprocess import MAX_FILE_BYTES, apply_contract, decode_bytes, is_image_name

Clock = Callable[[], float]
#: names the daemon itself makes in the inbox (lock, quarantine, probes): never inputs
OWN_PREFIX = ".pneumo-"
#: read errors that may pass: the input is tried again later instead of failed
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.EAGAIN,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOLCK,
        errno.EBUSY,
    }
)
#: files counted per ignored sub-folder at most (a scan stays bounded)
_SUBFOLDER_COUNT_LIMIT = 10_000


class InboxUnavailableError(EdgeError):
    """The inbox folder is missing, not a folder, or cannot be listed."""


@dataclass
class Candidate:
    """A file being watched until it is complete."""

    name: str
    kind: str
    size: int
    mtime_ns: int
    ino: int
    dev: int
    #: monotonic time since which size, mtime and inode have not changed
    stable_since: float
    #: complete without waiting: renamed in, or closed after writing
    hinted: bool = False
    #: taken into the batch in hand
    taken: bool = False
    #: inotify saw it created and not yet closed: still being written
    open_write: bool = False
    #: monotonic time before which it is not tried (held, or parked after an error)
    not_before: float = 0.0

    @property
    def signature(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ino, self.dev)


def entry_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


class _Hints:
    """watchdog handler: turns events into (name, event) pairs in a bounded queue.

    Events: "moved" (renamed in: complete), "closed" (closed after writing),
    "created" (being written).
    """

    def __init__(self, inbox: Path, capacity: int, wake: threading.Event) -> None:
        self.inbox = os.path.abspath(inbox)
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=capacity)
        self.overflowed = threading.Event()
        self.wake = wake

    def _put(self, path: Any, kind: str) -> None:
        path = os.fsdecode(path)
        if not path or os.path.dirname(os.path.abspath(path)) != self.inbox:
            return
        try:
            self.queue.put_nowait((os.path.basename(path), kind))
        except queue.Full:
            self.overflowed.set()  # a rescan will find it
        self.wake.set()

    def dispatch(self, event: Any) -> None:
        """Called on watchdog's thread for every event; must stay O(1)."""
        kind = event.event_type
        if kind == "moved":
            self._put(event.dest_path, "moved")
        elif kind in ("closed", "created"):
            self._put(event.src_path, kind)


class InboxWatcher:
    """Bounded window of candidate files and the logic that decides when one is complete."""

    def __init__(
        self,
        inbox: Path,
        *,
        quiet_seconds: float,
        max_pending: int,
        poll_interval: float,
        rescan_seconds: float,
        ignore: tuple[str, ...],
        use_watchdog: bool = True,
        trust_close_write: bool = True,
        settle_seconds: float = 60.0,
        require_mount: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        self.inbox = Path(inbox)
        #: a filesystem must be mounted on the inbox before it is used (``inbox-mount = true``)
        self.require_mount = require_mount
        self.quiet_seconds = quiet_seconds
        self.settle_seconds = settle_seconds
        self.trust_close_write = trust_close_write
        self.max_pending = max_pending
        self.poll_interval = poll_interval
        self.rescan_seconds = rescan_seconds
        self.ignore = ignore
        self.use_watchdog = use_watchdog
        self.clock = clock
        self.wake = threading.Event()
        self.pending: dict[str, Candidate] = {}
        #: files seen by the last scan that did not fit in the window
        self.beyond_window = 0
        #: the backlog when the window was dropped, reported until the next scan
        self._backlog_before_forget: int | None = None
        self.mode = "polling"
        self.watch_error = ""
        #: inputs the daemon could not remove from the inbox: skipped while their signature holds
        self.left: dict[str, tuple[int, int, int, int, int]] = {}
        #: set when ``left`` lost entries (the file changed or went); the daemon saves it
        self.left_changed = False
        #: sub-folders holding files, and how many files (at most a bound each), as of the last scan
        self.subfolders: dict[str, int] = {}
        #: sub-folders seen holding files for the first time, for the daemon to report once
        self.new_subfolders: list[tuple[str, int]] = []
        self._reported_subfolders: set[str] = set()
        self._hints = _Hints(self.inbox, max(64, max_pending), self.wake)
        self._observer: Any = None
        self._next_scan = 0.0
        self._last_scan = -1e9
        self._more_waiting = False
        self._inbox_id: tuple[int, int] | None = None
        #: the inbox has been seen as a mount point (a share): from then on it must be one
        self._was_mount_point = False

    # -- watchdog -------------------------------------------------------
    def start(self) -> None:
        """Start inotify if asked and possible; otherwise say why and poll."""
        if not self.use_watchdog:
            self.mode, self.watch_error = "polling", "inotify disabled (--no-watchdog)"
            return
        self.stop()
        try:
            self._observer = self._make_observer()
            self.mode, self.watch_error = "inotify", ""
        except Exception as exc:  # noqa: BLE001 - any watchdog failure (no inotify, watch limit, import) means: poll
            self._observer = None
            self.mode, self.watch_error = (
                "polling",
                f"inotify unavailable ({exc}); polling every {self.poll_interval:g} s",
            )
        try:
            st = os.stat(self.inbox)
            self._inbox_id = (st.st_dev, st.st_ino)
        except OSError:
            self._inbox_id = None

    def _make_observer(self) -> Any:
        from watchdog.events import FileSystemEventHandler

        hints = self._hints

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                hints.dispatch(event)

        if sys.platform.startswith("linux"):
            from watchdog.observers.inotify import InotifyObserver

            # full events: a rename from outside the inbox arrives as a move, not a create
            observer: Any = InotifyObserver(generate_full_events=True)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        observer.schedule(Handler(), str(self.inbox), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:  # noqa: BLE001 - stopping a dead observer must not stop the daemon
                pass

    def present(self) -> os.stat_result:
        """The inbox folder's stat; InboxUnavailableError when it is missing, not a folder, or its share is gone.

        A share unmounted from the inbox leaves the empty mount-point folder behind: it exists,
        but it is not the inbox, and whatever is written into it is hidden once the share is back.
        So once the inbox has been a mount point it must stay one (mounted again, on any device),
        and with ``require_mount`` it must be one from the start.
        """
        try:
            st = os.stat(self.inbox)
        except OSError as exc:
            self._lost()
            raise InboxUnavailableError(
                f"{self.inbox}: inbox is missing ({exc.strerror or exc}); create or mount it"
            ) from exc
        if not stat.S_ISDIR(st.st_mode):
            self._lost()
            raise InboxUnavailableError(
                f"{self.inbox}: inbox is not a folder; replace it with the inbox folder"
            )
        if self._is_mount_point(st):
            self._was_mount_point = True
        elif self.require_mount and not self._was_mount_point:
            self._lost()
            raise InboxUnavailableError(
                f"{self.inbox}: nothing is mounted on the inbox yet (inbox-mount = true: it is a share "
                f"mounted on this folder, which is now on the filesystem of {self.inbox.parent}); mount "
                "the share: inputs wait, and nothing is read from or written into the empty folder"
            )
        elif self._was_mount_point:
            self._lost()
            raise InboxUnavailableError(
                f"{self.inbox}: the share mounted on the inbox is gone (the folder is now the empty "
                f"mount point, on the filesystem of {self.inbox.parent}); mount the share back: inputs "
                "wait, and nothing is read from or written into the mount point (to use a local folder "
                "there instead, restart the service)"
            )
        return st

    def _is_mount_point(self, st: os.stat_result) -> bool:
        """Another filesystem is mounted on the inbox (its device is not its parent folder's)."""
        try:
            return st.st_dev != os.stat(self.inbox.parent).st_dev
        except OSError:
            return False

    def _lost(self) -> None:
        # inotify is re-armed once the inbox is back: the watch may have died with the old
        # folder or share (IN_UNMOUNT), even when the same device and inode come back
        self._inbox_id = None

    def _check_inbox(self) -> None:
        """Raise when the inbox is gone; re-arm inotify when it came back, was replaced, or the observer died."""
        st = self.present()
        if not self.use_watchdog:
            return
        alive = self._observer is not None and self._observer.is_alive()
        if (st.st_dev, st.st_ino) != self._inbox_id or (self.mode == "inotify" and not alive):
            self.start()

    # -- discovery ------------------------------------------------------
    def ignored(self, name: str) -> bool:
        if name.startswith(OWN_PREFIX):
            return True  # the lock file, quarantine and probes, even with a custom ignore list
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)

    def _is_left(self, name: str, st: os.stat_result) -> bool:
        """An input left in the inbox, unchanged: never read again. Changed or replaced: forgotten."""
        sig = self.left.get(name)
        if sig is None:
            return False
        # size, mtime and ctime, not the inode and device: a share mounted again after a reboot
        # comes back under another device number (and, CIFS noserverino, other inodes) while the
        # server keeps the times; a file replaced or fixed (chattr -i) has a new ctime anyway
        if (sig[0], sig[1], sig[4]) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return True
        del self.left[name]  # fixed (chattr -i changes ctime), touched or delivered again: an input
        self.left_changed = True
        return False

    def _stat_candidate(self, name: str, now: float) -> Candidate | None:
        try:
            st = os.lstat(self.inbox / name)
        except OSError:
            return None
        kind = entry_kind(st.st_mode)
        if kind == "dir" and not is_image_name(name):
            return None
        if self._is_left(name, st):
            return None
        return Candidate(name, kind, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, now)

    def _count_subfolder(self, name: str) -> int:
        """Files directly inside a sub-folder that the daemon does not process (bounded)."""
        count = 0
        try:
            with os.scandir(self.inbox / name) as it:
                for entry in it:
                    if not self.ignored(entry.name) and not entry.is_dir(follow_symlinks=False):
                        count += 1
                        if count >= _SUBFOLDER_COUNT_LIMIT:
                            break
        except OSError:
            return 0
        return count

    def _note_subfolder(self, name: str, subfolders: dict[str, int]) -> None:
        count = self._count_subfolder(name)
        if not count:
            return
        subfolders[name] = count
        if name not in self._reported_subfolders:
            self._reported_subfolders.add(name)
            self.new_subfolders.append((name, count))

    def _scan_entries(self) -> Iterator[tuple[int, str, os.stat_result]]:
        subfolders: dict[str, int] = {}
        seen_left: set[str] = set()
        try:
            with os.scandir(self.inbox) as it:
                for entry in it:
                    if self.ignored(entry.name):
                        continue
                    if entry.name in self.left:
                        seen_left.add(entry.name)
                    if entry.name in self.pending:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode) and not is_image_name(entry.name):
                        self._note_subfolder(entry.name, subfolders)
                        continue
                    if self._is_left(entry.name, st):
                        continue
                    yield (st.st_mtime_ns, entry.name, st)
        except OSError as exc:
            raise InboxUnavailableError(
                f"{self.inbox}: inbox cannot be listed ({exc.strerror or exc})"
            ) from exc
        self.subfolders = subfolders
        gone = set(self.left) - seen_left
        for name in gone:  # removed from the inbox by someone: nothing to skip any more
            del self.left[name]
        self.left_changed = self.left_changed or bool(gone)

    def scan(self, now: float) -> int:
        """Add the oldest unseen entries that fit in the window; return how many were added."""
        self._last_scan = now
        self._next_scan = now + (self.rescan_seconds if self.mode == "inotify" else self.poll_interval)
        self._hints.overflowed.clear()
        free = self.max_pending - len(self.pending)
        waiting = 0

        def counted() -> Iterator[tuple[int, str, os.stat_result]]:
            nonlocal waiting
            for item in self._scan_entries():
                waiting += 1
                yield item

        oldest = heapq.nsmallest(max(0, free), counted(), key=lambda item: (item[0], item[1]))
        if free <= 0:
            for _ in counted():
                pass
        for _, name, st in oldest:
            self.pending[name] = Candidate(
                name, entry_kind(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, now
            )
        self._more_waiting = waiting > len(oldest)
        self.beyond_window = waiting - len(oldest)
        self._backlog_before_forget = None
        return len(oldest)

    @property
    def backlog(self) -> int:
        """Files known to be waiting: the window plus what the last scan could not fit.

        While the window is dropped (outbox or inbox trouble, no scans), the count from before.
        """
        if self._backlog_before_forget is not None:
            return self._backlog_before_forget
        return len(self.pending) + self.beyond_window

    def _apply_event(self, cand: Candidate, event: str) -> None:
        """What an inotify event says about completeness."""
        if event == "moved":
            cand.hinted, cand.open_write, cand.not_before = True, False, 0.0
        elif event == "closed":
            # closed: no longer being written; complete at once only if close_write is trusted
            cand.hinted, cand.open_write = cand.hinted or self.trust_close_write, False
            if cand.hinted:
                cand.not_before = 0.0
        elif event == "created" and not cand.hinted:
            cand.open_write = True  # being written: wait for close_write, or settle_seconds

    def _drain_hints(self, now: float) -> None:
        while True:
            try:
                name, event = self._hints.queue.get_nowait()
            except queue.Empty:
                return
            if self.ignored(name):
                continue
            known = self.pending.get(name)
            if known is not None:
                if known.taken:
                    continue
                fresh = self._stat_candidate(name, now)
                if fresh is None:
                    continue
                if fresh.signature != known.signature:
                    known.size, known.mtime_ns, known.ino, known.dev = (
                        fresh.size,
                        fresh.mtime_ns,
                        fresh.ino,
                        fresh.dev,
                    )
                    known.stable_since = now
                    known.not_before = 0.0
                self._apply_event(known, event)
            elif len(self.pending) < self.max_pending:
                fresh = self._stat_candidate(name, now)
                if fresh is not None:
                    self._apply_event(fresh, event)
                    self.pending[name] = fresh
            else:
                self._more_waiting = True

    def _scan_due(self, now: float) -> bool:
        if now >= self._next_scan or self._hints.overflowed.is_set():
            return True
        # a flood: refill as the window drains, but not more often than 4 times a second
        return (
            self._more_waiting
            and len(self.pending) <= self.max_pending // 2
            and now - self._last_scan >= 0.25
        )

    def _refresh(self, now: float) -> None:
        """Re-stat candidates whose quiet period is up; drop the ones that vanished."""
        for name, cand in list(self.pending.items()):
            if cand.taken or cand.hinted or now - cand.stable_since < self.quiet_seconds:
                continue
            fresh = self._stat_candidate(name, now)
            if fresh is None:
                del self.pending[name]  # vanished before it was complete: never an input
                continue
            if fresh.signature != cand.signature:
                cand.size, cand.mtime_ns, cand.ino, cand.dev, cand.kind = (
                    fresh.size,
                    fresh.mtime_ns,
                    fresh.ino,
                    fresh.dev,
                    fresh.kind,
                )
                cand.stable_since = now
                cand.not_before = 0.0  # it is being written again: a new quiet period decides

    def _ready_at(self, cand: Candidate) -> float:
        """Monotonic time from which the candidate counts as complete."""
        if cand.hinted:
            at = cand.stable_since
        elif cand.open_write:
            # created and not closed: the writer may only have paused; wait for close_write
            at = cand.stable_since + max(self.quiet_seconds, self.settle_seconds)
        else:
            at = cand.stable_since + self.quiet_seconds
        return max(at, cand.not_before)

    def _is_ready(self, cand: Candidate, now: float) -> bool:
        return not cand.taken and now >= self._ready_at(cand)

    def poll(self, limit: int) -> list[Candidate]:
        """Up to ``limit`` complete candidates, oldest first; marks them taken. Raises InboxUnavailableError."""
        now = self.clock()
        self._check_inbox()
        self._drain_hints(now)
        if self._scan_due(now):
            self.scan(now)
        self._refresh(now)
        ready = [c for c in self.pending.values() if self._is_ready(c, now)]
        ready.sort(key=lambda c: (c.mtime_ns, c.name))
        batch = ready[:limit]
        for cand in batch:
            cand.taken = True
        return batch

    def next_wakeup(self) -> float:
        """Seconds until something may become ready without an event."""
        now = self.clock()
        waits = [self._next_scan - now, self.poll_interval]
        waits += [self._ready_at(c) - now for c in self.pending.values() if not c.taken]
        return max(0.01, min(waits))

    def done(self, name: str) -> None:
        """The input has a result (or was claimed): stop tracking it."""
        self.pending.pop(name, None)

    def requeue(self, name: str) -> None:
        """Not complete after all (changed while read): wait for a new quiet period."""
        cand = self.pending.get(name)
        if cand is not None:
            cand.taken = False
            cand.hinted = False
            cand.not_before = 0.0
            cand.stable_since = self.clock()
            fresh = self._stat_candidate(name, cand.stable_since)
            if fresh is None:
                del self.pending[name]
            else:
                cand.size, cand.mtime_ns, cand.ino, cand.dev = (
                    fresh.size,
                    fresh.mtime_ns,
                    fresh.ino,
                    fresh.dev,
                )

    def park(self, name: str, delay: float) -> None:
        """Try again in ``delay`` seconds (a transient read error, an input that could not be moved)."""
        cand = self.pending.get(name)
        if cand is not None:
            cand.taken = False
            cand.not_before = self.clock() + delay

    def settle(self, cand: Candidate) -> bool:
        """Hold an input that failed to decode as truncated or corrupt but was never signalled complete.

        Returns True when it is held (back in the window, tried again when
        unchanged for ``settle_seconds``, or after a new quiet period if it
        changed), False when it has held still that long: then it is really
        broken, and fails.
        """
        if cand.hinted:
            return False
        now = self.clock()
        fresh = self._stat_candidate(cand.name, now)
        if fresh is None:
            return False  # gone: reading it again would only say "vanished"
        if fresh.signature != cand.signature:
            self.requeue(cand.name)
            return True
        until = cand.stable_since + self.settle_seconds
        if now >= until:
            return False
        cand.taken = False
        cand.not_before = until
        return True

    def forget_all(self) -> None:
        """Drop the window (after an outbox or inbox error); the next scan rebuilds it."""
        if self._backlog_before_forget is None:
            self._backlog_before_forget = self.backlog
        self.pending.clear()
        self.beyond_window = 0
        self._next_scan = 0.0
        while True:
            try:
                self._hints.queue.get_nowait()
            except queue.Empty:
                break


# -- reading ---------------------------------------------------------------
@dataclass
class InputRead:
    """What reading one candidate gave: an image, a refusal with its reason, or "not complete yet"."""

    candidate: Candidate
    source: str
    outcome: str  # "image", "rejected", "changed" or "retry" (a read error that may pass)
    image: np.ndarray | None = None
    sha256: str = ""
    size: int = 0
    reason: str = ""
    kind: str = ""
    #: a decode failure an unfinished write also gives (truncated, corrupt, empty)
    maybe_incomplete: bool = False


def _rejected(
    cand: Candidate, source: str, kind: str, reason: str, sha: str = "", size: int = 0
) -> InputRead:
    return InputRead(cand, source, "rejected", sha256=sha, size=size, reason=reason, kind=kind)


def _os_failure(cand: Candidate, source: str, what: str, exc: OSError, size: int = 0) -> InputRead:
    """A read error: ``retry`` when it may pass (EIO, ESTALE...), else the input fails with it."""
    reason = f"cannot {what} file: {exc.strerror or exc}"
    if exc.errno in TRANSIENT_ERRNOS:
        return InputRead(cand, source, "retry", size=size, reason=reason, kind="file")
    return _rejected(cand, source, "file", reason, size=size)


def _require_inbox_of(inbox: Path, cand: Candidate) -> None:
    """InboxUnavailableError unless ``inbox`` is still the folder ``cand`` was found in.

    Called when the candidate's file is missing: a share unmounted under the inbox leaves the
    empty mount point, a folder on another filesystem, and the file is not "vanished" then.
    """
    try:
        st = os.stat(inbox)
    except OSError:
        raise InboxUnavailableError(f"{inbox}: inbox disappeared while reading; create or mount it") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InboxUnavailableError(
            f"{inbox}: inbox is not a folder any more; replace it with the inbox folder"
        )
    if st.st_dev != cand.dev:
        raise InboxUnavailableError(
            f"{inbox}: inbox is now on another filesystem than when {cand.name} was found in it "
            "(a share unmounted?); mount it back: the input waits"
        )


def _unchanged(path: Path, cand: Candidate) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == cand.signature


def read_input(
    inbox: Path,
    cand: Candidate,
    contract: PreprocessContract,
    progress: Progress | None = None,
    decoding: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> InputRead:
    """Read, hash and decode one candidate with the one preprocessing implementation.

    ``progress`` is called after every MiB read: a large file on a slow share is progress for
    the daemon's watchdog, not a hang. ``decoding()`` is entered around the decode alone (not
    the read): the daemon records there which input a native decoder crash would be blamed on.

    Raises InboxUnavailableError when the inbox itself is gone, or its share was
    unmounted (a file is not "vanished" because its share is away).
    """
    path = inbox / cand.name
    source = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _require_inbox_of(inbox, cand)
        return _rejected(cand, source, "missing", "file vanished before it could be read")
    except OSError as exc:
        return _os_failure(cand, source, "examine", exc)
    kind = entry_kind(st.st_mode)
    if (st.st_ino, st.st_dev) != (cand.ino, cand.dev) or kind != cand.kind:
        return InputRead(cand, source, "changed")
    if kind != "dir" and (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
        # changed since it was judged complete: its claim would name another file's size and mtime
        return InputRead(cand, source, "changed")
    if kind == "link":
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return _rejected(
            cand,
            source,
            "link",
            f"symbolic link (to {target!r}): links are never followed; copy the image itself into the inbox",
        )
    if kind == "dir":
        return _rejected(cand, source, "dir", "a folder named like an image, not an image file")
    if kind == "other":
        return _rejected(cand, source, "other", "not a regular file (a fifo, socket or device)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        _require_inbox_of(inbox, cand)
        return _rejected(cand, source, "missing", "file vanished before it could be read")
    except OSError as exc:
        return _os_failure(cand, source, "open", exc, st.st_size)
    try:
        before = os.fstat(fd)
        if (before.st_ino, before.st_dev) != (cand.ino, cand.dev) or not stat.S_ISREG(before.st_mode):
            return InputRead(cand, source, "changed")
        if before.st_size > MAX_FILE_BYTES:
            return _rejected(
                cand,
                source,
                "file",
                f"file is {before.st_size:,} bytes, over the {MAX_FILE_BYTES:,} byte limit",
                size=before.st_size,
            )
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if progress is not None:
                progress()
        after = os.fstat(fd)
    except OSError as exc:
        return _os_failure(cand, source, "read", exc, st.st_size)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    signature = (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev)
    if (before.st_size, before.st_mtime_ns) != (
        after.st_size,
        after.st_mtime_ns,
    ) or signature != cand.signature:
        return InputRead(cand, source, "changed")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with decoding():
            image = apply_contract(decode_bytes(data, name=cand.name), contract)
    except ImageDecodeError as exc:
        if not _unchanged(path, cand):
            return InputRead(cand, source, "changed")  # written to after it was read: not complete
        failed = _rejected(cand, source, "file", exc.reason, sha, len(data))
        failed.maybe_incomplete = exc.maybe_incomplete
        return failed
    except Exception as exc:  # noqa: BLE001 - a hostile file must fail alone, never stop the daemon
        return _rejected(cand, source, "file", f"decoder error: {type(exc).__name__}: {exc}", sha, len(data))
    return InputRead(cand, source, "image", image=image, sha256=sha, size=len(data), kind="file")
