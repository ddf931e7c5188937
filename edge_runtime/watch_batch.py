"""One batch of the watch daemon: read, infer, claim, move and record, or put back untouched.

:meth:`BatchProcessor.process` takes the complete files the inbox gave and
ends in one of four outcomes:

* ``done``: the batch was claimed in the journal and finished (inputs moved,
  result JSONs, results.jsonl and results.csv written, claim cleared);
* ``requeued``: nothing was claimed (a stop signal, the inbox vanished, every
  input was put back or parked), or the claim waits for its inbox;
* ``backend_failed``: inference raised; the inputs go back to the window;
* ``outbox_failed``: the outbox was replaced or a write failed; a claim on
  disk is finished by the next outbox preparation.

Per input, reading decides: an image, a failure with the decoder's reason,
``changed`` (not complete after all: put back), ``retry`` (a read error that
may pass: parked), or held for ``settle_seconds`` when it only looks
truncated because its writer paused. An input the daemon already died on
twice while decoding is failed without being decoded (``edge_runtime.decode_guard``);
only the decode itself is recorded for that, never the read or a stop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.contract import PreprocessContract
from edge_runtime.decode_guard import DecodeGuard, input_key
from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher, InputRead, read_input
from edge_runtime.journal import Claim, JournalEntry, OutboxLock
from edge_runtime.outbox import Failpoint, Outbox
from edge_runtime.predictor import NonFiniteOutputError, Prediction, Predictor
from edge_runtime.results import ModelStamp, done_record, failed_record
from edge_runtime.watch_config import WatchConfig
from edge_runtime.watch_log import EventLog, describe_os_error, now_iso
from edge_runtime.watch_retries import Backoff, InputRetries, OutboxHealth, Pauses


@dataclass(frozen=True)
class ModelInUse:
    """The opened model: what runs the batch, how inputs are prepared, and what results name."""

    predictor: Predictor
    contract: PreprocessContract
    stamp: ModelStamp


class BatchProcessor:
    """Turns a batch of complete inbox files into results, exactly once each."""

    def __init__(
        self,
        config: WatchConfig,
        model: ModelInUse,
        inbox: InboxWatcher,
        outbox: Outbox,
        outbox_lock: OutboxLock,
        outbox_health: OutboxHealth,
        decode_guard: DecodeGuard,
        retries: InputRetries,
        events: EventLog,
        counters: dict[str, int],
        pauses: Pauses,
        stop: threading.Event,
        failpoint: Failpoint,
    ) -> None:
        self.config = config
        self.model = model
        self.inbox = inbox
        self.outbox = outbox
        self.outbox_lock = outbox_lock
        self.outbox_health = outbox_health
        self.decode_guard = decode_guard
        self.retries = retries
        self.events = events
        self.counters = counters
        self.pauses = pauses
        self.stop = stop
        self.failpoint = failpoint
        self.backend_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        #: batches in a row whose inference raised; the daemon exits at MAX_BACKEND_FAILURES
        self.backend_failures = 0
        #: when the last batch was committed (UTC, ISO 8601), for the heartbeat
        self.last_result_at: str | None = None

    def process(self, batch: Sequence[Candidate]) -> str:
        """Read, infer and commit one batch. Returns "done", "requeued", "backend_failed" or "outbox_failed"."""
        reads = self._read_all(batch)
        if reads is None:
            return "requeued"
        if not reads:
            return "requeued"
        predictions = self._infer(reads)
        if predictions is None:
            return "backend_failed"
        if not self.outbox.root_is_current() or not self.outbox_lock.is_current():
            # unmounted or replaced since it was prepared: claim nothing, write nothing; the
            # inputs wait in the inbox while the daemon's preparation reports outbox_unavailable
            self._requeue([r.candidate.name for r in reads])
            self.outbox_health.ready = False
            return "outbox_failed"
        return self._commit(reads, predictions)

    # -- reading ----------------------------------------------------------
    def _read_all(self, batch: Sequence[Candidate]) -> list[InputRead] | None:
        """The reads to claim; None when the batch was put back (stop signal, inbox gone)."""
        reads: list[InputRead] = []
        for cand in batch:
            self.pauses.progress()  # a batch of large images may take longer than the watchdog allows
            if self.stop.is_set():
                self._requeue([c.name for c in batch])
                return None
            try:
                read = self._read_guarded(cand)
            except InboxUnavailableError as exc:
                self.pauses.inbox_unavailable(exc)
                return None
            if self._put_back(cand, read):
                continue
            if read.outcome == "retry":
                read.outcome = "rejected"  # given up after input_retries tries
            reads.append(read)
        return reads

    def _read_guarded(self, cand: Candidate) -> InputRead:
        """read_input, unless this input already killed the daemon while it was decoded."""
        key = input_key(cand.name, cand.size, cand.mtime_ns, cand.ino, cand.dev)
        deaths = self.decode_guard.given_up(key)
        if deaths:
            reason = (
                f"the daemon died {deaths} times while decoding this file (out of memory? see MemoryMax "
                "in deploy/pneumo-watch.service); it is not decoded again"
            )
            return InputRead(cand, str(self.config.inbox / cand.name), "rejected", reason=reason, kind="file")
        return read_input(
            self.config.inbox, cand, self.model.contract, self._reading, decoding=lambda: self._decoding(key)
        )

    def _reading(self) -> None:
        """After each MiB read: progress for the watchdog (a slow share is not a hang)."""
        self.failpoint.hit("reading")  # tests: killed reading the bytes, as by the watchdog on a hung share
        self.pauses.progress()

    @contextlib.contextmanager
    def _decoding(self, key: str) -> Iterator[None]:
        """The decode of one input, recorded while it runs: a process that dies inside it (the OOM
        killer, a codec crash) is counted against that input at the next start. Only the decode:
        a stop signal or a watchdog kill during a hung read is no fault of the file."""
        with contextlib.suppress(OSError):  # best effort: a full outbox disk must not stop reading
            self.decode_guard.decoding(key)
        try:
            self.failpoint.hit("decoding")  # tests: the process dies on this input, as under the OOM killer
            yield
        finally:
            with contextlib.suppress(OSError):
                self.decode_guard.clear()

    def _put_back(self, cand: Candidate, read: InputRead) -> bool:
        """True when the input is not part of this batch after all: changed, parked or held."""
        if read.outcome == "changed":
            self.inbox.requeue(cand.name)
            self.counters["requeued"] += 1
            return True
        if read.outcome == "retry" and self.retries.retry_later(cand, read.reason):
            return True
        if read.outcome == "rejected" and read.maybe_incomplete and self.inbox.settle(cand):
            self.counters["requeued"] += 1
            self.events.emit(
                logging.INFO,
                "input_held",
                f"{cand.name}: {read.reason}; never signalled complete, so held until it has not "
                f"changed for {self.config.settle_seconds:g} s (its writer may only have paused)",
                name=cand.name,
            )
            return True
        return False

    # -- inference --------------------------------------------------------
    def _infer(self, reads: list[InputRead]) -> dict[int, Prediction] | None:
        """Predictions by ``id(read)`` of the decoded images; None when inference failed (requeued)."""
        images = [r for r in reads if r.outcome == "image"]
        if not images:
            return {}
        try:
            batch_array = np.stack([r.image for r in images if r.image is not None])
            outputs = self.model.predictor.predict(batch_array, [r.source for r in images])
        except NonFiniteOutputError as exc:
            # The model ran but gave no number for these inputs: retrying cannot help, and
            # requeueing would stop the inbox behind them. They fail alone; the rest are results.
            outputs = exc.results
            for read in images:
                if read.source in exc.failed:
                    read.outcome, read.reason, read.image = "rejected", exc.failed[read.source], None
            images = [r for r in images if r.outcome == "image"]
        except Exception as exc:  # noqa: BLE001 - a failing device must not lose inputs: requeue and back off
            self.backend_failures += 1
            self._requeue([r.candidate.name for r in reads])
            delay = self.backend_backoff.next()
            self.events.trouble(
                "inference_failed",
                f"inference failed: {type(exc).__name__}: {exc}; retrying in {delay:g} s",
            )
            self.pauses.sleep(delay)
            return None
        self.backend_failures = 0
        self.backend_backoff.reset()
        by_source = {p.source: p for p in outputs}
        return {id(r): by_source[r.source] for r in images}

    # -- claiming and committing ------------------------------------------
    def _commit(self, reads: list[InputRead], predictions: dict[int, Prediction]) -> str:
        self.retries.forget_parked()
        try:
            claim = self._claim(reads, predictions)  # stats done/ and failed/ for free names
            self.outbox.journal.write(claim)
            self.failpoint.hit("after-claim")
            self.outbox.finish(claim, self.events.outbox_warning, self.failpoint, stuck=self.retries.stuck)
        except InboxUnavailableError as exc:
            # the claim is on disk and waits for the inbox; the outbox preparation finishes it then
            self.outbox_health.ready = False
            self.pauses.inbox_unavailable(exc)
            return "requeued"
        except OSError as exc:
            # The claim may be on disk; the outbox preparation finishes it before anything new.
            self.inbox.forget_all()
            delay = self.outbox_health.failed()
            name, text = describe_os_error(exc, str(self.config.outbox))
            self.events.trouble(
                "outbox_write_failed",
                f"cannot write results: {text}; retrying in {delay:g} s",
                errno=name,
                path=exc.filename,
                retry_in_s=delay,
            )
            self.pauses.back_off(delay)
            return "outbox_failed"
        self._committed(claim)
        return "done"

    def _requeue(self, names: Sequence[str]) -> None:
        for name in names:
            self.inbox.requeue(name)

    def _claim(self, reads: Sequence[InputRead], predictions: dict[int, Any]) -> Claim:
        """The journal record of the batch: every input's target, result file and full record."""
        reserved: set[str] = set()
        entries = [self._entry(read, predictions, reserved) for read in reads]
        return Claim(
            batch_id=uuid.uuid4().hex,
            jsonl_offset=self.outbox.jsonl.size(),
            csv_offset=self.outbox.csv.size(),
            entries=entries,
        )

    def _entry(self, read: InputRead, predictions: dict[int, Any], reserved: set[str]) -> JournalEntry:
        cand = read.candidate
        result_id = uuid.uuid4().hex
        status = "done" if read.outcome == "image" else "failed"
        kind = read.kind or cand.kind
        target, result_path = self.outbox.plan(cand.name, kind, status, reserved, result_id[:8])
        moved_to = self.outbox.moved_to(target)
        result_file = self.outbox.moved_to(result_path) or result_path
        if status == "done":
            prediction = predictions[id(read)]
            prediction.input_sha256 = read.sha256
            record = done_record(
                prediction,
                result_id=result_id,
                original_name=cand.name,
                moved_to=moved_to,
                result_file=result_file,
                input_bytes=read.size,
            )
        else:
            record = failed_record(
                self.model.stamp,
                result_id=result_id,
                original_name=cand.name,
                source=read.source,
                moved_to=moved_to,
                result_file=result_file,
                error_kind=kind,
                reason=read.reason,
                timestamp=now_iso(),
                input_sha256=read.sha256,
                input_bytes=read.size if read.sha256 else None,
            )
        return JournalEntry(
            id=result_id,
            name=cand.name,
            kind=kind,
            status=status,
            source=read.source,
            target=target,
            result_path=result_path,
            record=record,
            ino=cand.ino,
            dev=cand.dev,
            size=cand.size,
            mtime_ns=cand.mtime_ns,
            sha256=read.sha256,
        )

    def _committed(self, claim: Claim) -> None:
        """Counters, the window and one log line per input, once the claim is finished."""
        self.outbox_health.writable_again()
        self.counters["batches"] += 1
        self.last_result_at = now_iso()
        self.retries.after_finish(claim)
        self.retries.park_stuck()
        for entry in claim.entries:
            self.inbox.done(entry.name)
            self._report(entry)

    def _report(self, entry: JournalEntry) -> None:
        record = entry.record
        if entry.status == "done":
            self.counters["processed"] += 1
            self.events.emit(
                logging.INFO,
                "result",
                f"{entry.name}: {record['label']} p={record['probability']:.3f} "
                f"(threshold {record['threshold']:.3f}, model {record['model_version']})"
                + (" [SYNTHETIC]" if record.get("synthetic") else "")
                + f" -> {record['moved_to']}",
                id=entry.id,
                name=entry.name,
                label=record["label"],
                probability=record["probability"],
                moved_to=record["moved_to"],
            )
        else:
            self.counters["failed"] += 1
            self.events.emit(
                logging.WARNING,
                "failed_input",
                f"{entry.name}: {record['reason']} -> {record['moved_to'] or 'nothing to move'}",
                id=entry.id,
                name=entry.name,
                reason=record["reason"],
                moved_to=record["moved_to"],
            )
