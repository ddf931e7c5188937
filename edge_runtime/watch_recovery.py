"""What a crash or an outbox error left behind, put right before the daemon takes anything new.

Two things can be left:

* a claimed batch in ``OUTBOX/.pneumo/journal.json`` (``edge_runtime.journal``):
  finished with the same steps as a live batch (``Outbox.finish``), plus a
  sha256 check of every input, since any time may have passed. It waits for
  a missing inbox (a share not yet mounted at boot) up to
  ``inbox_wait_seconds``: finished without its inbox it would record
  "moved to nothing" and the images would be classified twice. A share back
  under a new device number (a reboot) is not missing: its inputs are
  recognised by size, mtime and sha256 (``edge_runtime.outbox.share_remounted``);
* the marker of an input the last process died decoding
  (``edge_runtime.decode_guard``): counted, and reported as ``decode_crash``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_runtime.decode_guard import CRASH_LIMIT, DecodeGuard, key_name
from edge_runtime.inbox import InboxUnavailableError
from edge_runtime.outbox import Outbox
from edge_runtime.watch_config import WatchConfig
from edge_runtime.watch_log import EventLog
from edge_runtime.watch_retries import InputRetries, OutboxHealth, Pauses


class CrashRecovery:
    """Finishes a claimed batch and counts a decoder death, as the outbox is prepared."""

    def __init__(
        self,
        config: WatchConfig,
        outbox: Outbox,
        outbox_health: OutboxHealth,
        decode_guard: DecodeGuard,
        retries: InputRetries,
        events: EventLog,
        counters: dict[str, int],
        pauses: Pauses,
        lock_inbox: Callable[[], None],
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.outbox_health = outbox_health
        self.decode_guard = decode_guard
        self.retries = retries
        self.events = events
        self.counters = counters
        self.pauses = pauses
        self.lock_inbox = lock_inbox
        #: when a claimed batch first found its inbox missing (monotonic), None while it is there
        self._inbox_gone_since: float | None = None

    def recover_decode_guard(self) -> None:
        """Count the input the last process died decoding, if it did, and say so. OSError if unwritable."""
        died = self.decode_guard.recover()
        if died is None:
            return
        name, deaths = key_name(died[0]), died[1]
        outcome = ": it gets a failed record instead of another try" if deaths >= CRASH_LIMIT else ""
        self.events.emit(
            logging.WARNING,
            "decode_crash",
            f"the last run died while decoding {name} ({deaths} of {CRASH_LIMIT} times{outcome}); out of "
            "memory? see MemoryMax in deploy/pneumo-watch.service",
            name=name,
            deaths=deaths,
        )

    def finish_claimed_batch(self) -> bool:
        """Finish a batch a crash or an outbox error left claimed. False while its inbox is not there."""
        try:
            claim = self.outbox.journal.read()
        except ValueError as exc:
            self.events.trouble("journal_corrupt", str(exc))
            return True
        if claim is None:
            return True
        self.retries.forget_parked()
        waited = 0.0 if self._inbox_gone_since is None else time.monotonic() - self._inbox_gone_since
        require_inbox = waited < self.config.inbox_wait_seconds
        try:
            if require_inbox:
                self.lock_inbox()
            # after a crash any time may have passed: inputs are also compared by sha256 before moving
            self.outbox.finish(
                claim,
                self.events.outbox_warning,
                stuck=self.retries.stuck,
                verify_content=True,
                require_inbox=require_inbox,
            )
        except InboxUnavailableError as exc:
            if self._inbox_gone_since is None:
                self._inbox_gone_since = time.monotonic()
            self.pauses.inbox_unavailable(exc)
            return False
        if not require_inbox:
            self.events.emit(
                logging.WARNING,
                "claim_finished_without_inbox",
                f"the inbox was not back within {self.config.inbox_wait_seconds:g} s: the interrupted batch "
                "was finished with the inputs it could not find recorded as not moved",
                batch_id=claim.batch_id,
            )
        self._inbox_gone_since = None
        self.retries.forget_parked()  # nothing is in the window yet: a scan finds them again
        self.retries.after_finish(claim)
        self.outbox_health.writable_again()
        done = sum(1 for e in claim.entries if e.status == "done")
        self.counters["processed"] += done
        self.counters["failed"] += len(claim.entries) - done
        self.counters["recovered"] += len(claim.entries)
        self.events.emit(
            logging.WARNING,
            "recovered_batch",
            f"finished a batch of {len(claim.entries)} interrupted by a crash or an outbox error",
            batch_id=claim.batch_id,
            names=[e.name for e in claim.entries],
        )
        return True
