"""Trying again: growing delays for a folder in trouble, and for one input with a problem of its own.

Two kinds of trouble are kept apart so that one bad file never stops the inbox:

* the outbox (full, read-only, unmounted), the inbox (vanished) or the
  backend failing: everything waits, with delays doubling from
  ``backoff_initial_seconds`` up to ``backoff_max_seconds`` (:class:`Backoff`,
  :class:`OutboxHealth`);
* one input that cannot be moved out of the inbox (immutable, locked) or
  read (EIO, ESTALE): only that input is parked, with the same growing
  delays, and after ``input_retries`` tries it gets a failed record, while
  the rest of the inbox goes on (:class:`InputRetries`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher
from edge_runtime.journal import Claim, JournalEntry
from edge_runtime.outbox import InputStuckError, Outbox
from edge_runtime.results import ModelStamp, failed_record
from edge_runtime.watch_config import WatchConfig
from edge_runtime.watch_log import EventLog, describe_os_error, now_iso

#: tries remembered at most; inputs retried and then vanished leave keys behind
_TRIES_REMEMBERED = 10_000


class Backoff:
    """Exponential delays: initial, x2 each failure, capped; reset on success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class OutboxHealth:
    """Whether the outbox is prepared for the next batch, and whether it was in trouble."""

    def __init__(self, backoff: Backoff, events: EventLog) -> None:
        self.backoff = backoff
        self.events = events
        #: usable, locked, and no claimed batch left unfinished
        self.ready = False
        #: a failure was reported: the next written batch says "recovered"
        self.troubled = False

    def failed(self) -> float:
        """The outbox cannot be used now: it must be prepared again. Returns the delay to wait."""
        self.ready = False
        self.troubled = True
        return self.backoff.next()

    def writable_again(self) -> None:
        """A batch was written: announce recovery once and start the delays over."""
        # not on a successful preparation: a full disk still lets folders be listed and created
        if self.troubled:
            self.troubled = False
            self.backoff.reset()
            self.events.emit(logging.INFO, "outbox_recovered", "outbox is writable again; resuming")


class InputRetries:
    """Inputs with a problem of their own: parked with growing delays, then given up as failed."""

    def __init__(
        self,
        config: WatchConfig,
        inbox: InboxWatcher,
        outbox: Outbox,
        events: EventLog,
        counters: dict[str, int],
        stamp: ModelStamp,
    ) -> None:
        self.config = config
        self.inbox = inbox
        self.outbox = outbox
        self.events = events
        self.counters = counters
        self.stamp = stamp
        #: tries so far of inputs with a problem of their own, by (name, inode, device)
        self._tries: dict[tuple[str, int, int], int] = {}
        #: inputs to park once the batch is committed: (name, delay)
        self._parked: list[tuple[str, float]] = []

    def delay(self, tries: int) -> float:
        """Seconds before try ``tries + 1``: the folder backoff's delays, per input."""
        return min(self.config.backoff_max_seconds, self.config.backoff_initial_seconds * 2 ** (tries - 1))

    def count_try(self, name: str, ino: int, dev: int) -> int | None:
        """Count one more try of an input; None when its tries are used up (give it up now)."""
        key = (name, ino, dev)
        if len(self._tries) > _TRIES_REMEMBERED:
            # months of inputs retried and then vanished stay bounded
            self._tries.clear()
        tries = self._tries.get(key, 0) + 1
        if tries >= self.config.input_retries:
            self._tries.pop(key, None)
            return None
        self._tries[key] = tries
        return tries

    def retry_later(self, cand: Candidate, reason: str) -> bool:
        """A read error that may pass: park the input (True), or give up after input_retries (False)."""
        tries = self.count_try(cand.name, cand.ino, cand.dev)
        if tries is None:
            return False
        delay = self.delay(tries)
        self.inbox.park(cand.name, delay)
        self.counters["requeued"] += 1
        self.events.emit(
            logging.WARNING,
            "input_retry",
            f"{cand.name}: {reason}; try {tries} of {self.config.input_retries}, again in {delay:g} s",
            name=cand.name,
            retry_in_s=delay,
        )
        return True

    def stuck(self, entry: JournalEntry, exc: InputStuckError, claim: Claim) -> JournalEntry | None:
        """An input that cannot be moved: leave it unclaimed for a later try, or give it up as failed.

        The ``stuck`` callback of :meth:`edge_runtime.outbox.Outbox.finish`.
        """
        errno_name, text = describe_os_error(exc, entry.source)
        tries = self.count_try(entry.name, entry.ino, entry.dev)
        if tries is not None:
            delay = self.delay(tries)
            # parked only once the batch is committed: the window still holds it as taken
            self._parked.append((entry.name, delay))
            self.events.emit(
                logging.WARNING,
                "input_stuck",
                f"{entry.name}: cannot move it out of the inbox: {text}; try {tries} of "
                f"{self.config.input_retries}, again in {delay:g} s; the other inputs go on",
                name=entry.name,
                errno=errno_name,
                retry_in_s=delay,
            )
            return None
        reason = (
            f"left in the inbox: it could not be moved out ({errno_name}: {text}) in "
            f"{self.config.input_retries} tries; it stays there unchanged and is not read again "
            "until it changes: fix the cause, then touch the file or deliver it again"
        )
        if entry.status == "failed":
            reason = f"{entry.record['reason']}; also {reason}"
        return self._failed_entry(entry, claim, reason)

    def _failed_entry(self, entry: JournalEntry, claim: Claim, reason: str) -> JournalEntry:
        """``entry`` as a failure record with nothing to move, its input left in the inbox."""
        reserved = {p for e in claim.entries if e is not entry for p in (e.target, e.result_path) if p}
        _, result_path = self.outbox.plan(entry.name, "missing", "failed", reserved, entry.id[:8])
        record = failed_record(
            self.stamp,
            result_id=entry.id,
            original_name=entry.name,
            source=entry.source,
            moved_to=None,
            result_file=self.outbox.moved_to(result_path) or result_path,
            error_kind="unmovable",
            reason=reason,
            timestamp=now_iso(),
            input_sha256=entry.sha256,
            input_bytes=entry.size if entry.sha256 else None,
        )
        return dataclasses.replace(
            entry, status="failed", target="", result_path=result_path, record=record, left_in_inbox=True
        )

    def forget_parked(self) -> None:
        """Drop the parking of a batch that is not committed (the window is rebuilt by a scan)."""
        self._parked.clear()

    def park_stuck(self) -> None:
        """After a commit: the stuck inputs wait in the window until their delay is up."""
        for name, delay in self._parked:
            self.inbox.park(name, delay)
        self._parked.clear()

    def after_finish(self, claim: Claim) -> None:
        """Bookkeeping of a finished claim: inputs left in the inbox are skipped from now on."""
        if any(e.left_in_inbox for e in claim.entries):
            self.inbox.left = self.outbox.load_left()
        for entry in claim.entries:
            self._tries.pop((entry.name, entry.ino, entry.dev), None)


class Pauses(Protocol):
    """How the daemon's parts wait out trouble; the daemon owns its state and heartbeat meanwhile."""

    def sleep(self, seconds: float) -> None:
        """Wait, keeping the heartbeat alive; returns early on a stop signal."""

    def back_off(self, seconds: float) -> None:
        """Say "backoff" in the heartbeat, then sleep."""

    def inbox_unavailable(self, exc: InboxUnavailableError) -> None:
        """Forget the window, report the inbox outage and wait with growing delays."""

    def progress(self) -> None:
        """Between the steps of a long batch: keep the heartbeat and systemd's watchdog fed."""
