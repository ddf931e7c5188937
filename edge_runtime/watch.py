"""``pneumo edge watch``: the headless daemon that turns inbox images into results, unattended for months.

One loop on the main thread (watchdog's observer thread only passes hints):

1. make sure the outbox is usable, hold its lock, and finish a batch a crash
   left in the journal (``edge_runtime.journal``, ``edge_runtime.outbox``);
2. ask the inbox for up to ``batch`` complete files (``edge_runtime.inbox``);
   with nothing ready, sleep until an event, a quiet period ending, or the
   next scan;
3. read and decode each file (the one preprocessing implementation), run the
   decodable ones through the backend as one batch;
4. claim the batch in the journal, then move inputs, write per-image JSONs,
   append to results.jsonl and results.csv, and clear the claim.

Failure handling, so that an operator can leave it alone:

* a bad input fails alone: it goes to ``failed/`` with the decoder's reason;
  one that only looks broken because its writer paused (truncated, never
  signalled complete) is held for ``settle_seconds`` first;
* a problem of one input (it cannot be moved: immutable or locked; a read
  error that may pass: EIO, ESTALE) parks that input alone and retries it
  with growing delays; after ``input_retries`` tries it fails with the reason,
  while the rest of the inbox goes on;
* an outbox that is full, read-only, unwritable or missing, and an inbox that
  vanished, are logged once per attempt with what to do, and retried with
  exponential backoff (``backoff_initial_seconds`` doubling up to
  ``backoff_max_seconds``); the daemon never spins and never exits for them.
  An outbox that was unmounted or replaced is never recreated or written
  into: inputs wait until the same outbox is back;
* a second daemon on the same outbox or the same inbox refuses to start;
* the backend failing five batches in a row ends the process with status 1, so
  the service manager restarts it with a fresh device context;
* SIGTERM / SIGINT: a batch whose results are being written is finished, a
  batch still being read is put back, and the process exits 0.

Logs go to stderr, one JSON object a line (``ts``, ``level``, ``event``,
``msg`` and fields), which journald stores as is. A heartbeat file (atomic
JSON) says every few seconds that the daemon lives and what it has done.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edge_runtime import __version__
from edge_runtime.backends.base import Backend
from edge_runtime.bundle import ONNX_FOR_PRECISION, Bundle
from edge_runtime.contract import PreprocessContract
from edge_runtime.decode_guard import CRASH_LIMIT, DecodeGuard, input_key, key_name
from edge_runtime.errors import EdgeError
from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher, InputRead, read_input
from edge_runtime.journal import (
    Claim,
    InboxBusyError,
    InboxLock,
    JournalEntry,
    OutboxBusyError,
    OutboxLock,
)
from edge_runtime.outbox import CONFIG_FILE, Failpoint, InputStuckError, Outbox, OutboxReplacedError
from edge_runtime.predictor import NonFiniteOutputError, Predictor
from edge_runtime.results import ModelStamp, done_record, failed_record, write_json_files
from edge_runtime.watch_config import WatchConfig, WatchConfigError, load_config_file, resolve_config

FAILPOINT_ENV = "PNEUMO_WATCH_FAILPOINT"
LOGGER_NAME = "pneumo.watch"
MAX_BACKEND_FAILURES = 5

# What an operator should do about each errno, said in the log line.
ERRNO_ADVICE = {
    errno.ENOSPC: "the disk is full: free space",
    errno.EDQUOT: "the disk quota is used up: raise it or free space",
    errno.EFBIG: "a file size limit was hit: check ulimit -f and the filesystem",
    errno.EROFS: "the filesystem is read-only: remount it read-write (check dmesg for disk errors)",
    errno.EACCES: "permission denied: give the service user write access",
    errno.EPERM: "operation not permitted: check ownership and immutable flags (lsattr)",
    errno.ENOTDIR: "a file is where a folder is expected: remove or rename it",
    errno.ENOENT: "the folder does not exist: create it or mount the disk",
    errno.EIO: "input/output error: check the disk (dmesg)",
    errno.ENODEV: "mount the outbox disk back (to use a new, empty folder instead, restart the service)",
    errno.ENAMETOOLONG: "a file name is too long for this filesystem",
    errno.EBUSY: "the file is in use or locked by another program",
}


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: ts, level, event, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        # ASCII escapes keep undecodable file names from breaking the stream
        return json.dumps(data, ensure_ascii=True, default=str)


class _WatchdogShutdownNoise(logging.Filter):
    """Drop the error watchdog 7 logs when its observer stops during a blocking read (harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def json_logger(level: str, stream: Any = None) -> logging.Logger:
    """The daemon's logger writing JSON lines to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    # on the handler: a logger's own filters do not see records propagated from its children
    handler.addFilter(_WatchdogShutdownNoise())
    # watchdog logs through the logging module too; keep its lines JSON as well
    for name, lowest in ((LOGGER_NAME, level.upper()), ("watchdog", "WARNING")):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(lowest)
        logger.propagate = False
    return logging.getLogger(LOGGER_NAME)


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


def describe_os_error(exc: OSError, default_where: str = "") -> tuple[str, str]:
    """(errno name, sentence) for an OSError, with what to do about it."""
    name = errno.errorcode.get(exc.errno or 0, "E?")
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p) or default_where
    advice = ERRNO_ADVICE.get(exc.errno or 0, "")
    text = f"{exc.strerror or exc}" + (f" ({where})" if where else "") + (f"; {advice}" if advice else "")
    return name, text


class WatchDaemon:
    """The daemon's state and loop; ``run()`` returns the process exit status."""

    def __init__(
        self,
        config: WatchConfig,
        logger: logging.Logger,
        failpoint: Failpoint | None = None,
        install_signals: bool = True,
    ) -> None:
        self.config = config
        self.log = logger
        self.failpoint = failpoint or Failpoint()
        self.install_signals = install_signals
        self.stop = threading.Event()
        self.outbox = Outbox(config.outbox, config.inbox)
        self.lock = OutboxLock(self.outbox.state_dir)
        self.inbox_lock = InboxLock(config.inbox)
        self.inbox = InboxWatcher(
            config.inbox,
            quiet_seconds=config.quiet_seconds,
            max_pending=config.max_pending,
            poll_interval=config.poll_interval,
            rescan_seconds=config.rescan_seconds,
            ignore=config.ignore,
            use_watchdog=config.watchdog,
            trust_close_write=config.trust_close_write,
            settle_seconds=config.settle_seconds,
        )
        self.outbox_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self.inbox_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self.backend_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self.counters = {"processed": 0, "failed": 0, "batches": 0, "recovered": 0, "requeued": 0}
        self.state = "starting"
        self.started = _now_iso()
        self.last_error: dict[str, str] | None = None
        self.last_result_at: str | None = None
        self.stamp: ModelStamp | None = None
        self.predictor: Predictor | None = None
        self.contract: PreprocessContract | None = None
        self._outbox_ready = False
        self._outbox_trouble = False
        self._outbox_prepared_once = False
        self.decode_guard = DecodeGuard(self.outbox.state_dir)
        self._hangups = 0
        self._hangups_logged = 0
        #: when a claimed batch first found its inbox missing (monotonic), None while it is there
        self._inbox_gone_since: float | None = None
        self._inbox_trouble = False
        self._backend_failures = 0
        self._next_beat = 0.0
        self._heartbeat_error = ""
        self._heartbeat_in_outbox = config.heartbeat_path.is_relative_to(config.outbox)
        self._signals_seen: list[str] = []
        #: tries so far of inputs with a problem of their own, by (name, inode, device)
        self._tries: dict[tuple[str, int, int], int] = {}
        #: inputs to park once the batch is committed: (name, delay)
        self._parked: list[tuple[str, float]] = []

    # -- logging --------------------------------------------------------
    def _emit(self, level: int, event: str, msg: str, **fields: Any) -> None:
        self.log.log(level, msg, extra={"event": event, "fields": fields})

    def _trouble(self, event: str, msg: str, **fields: Any) -> None:
        self.last_error = {"time": _now_iso(), "event": event, "message": msg}
        self._emit(logging.ERROR, event, msg, **fields)

    def _warn(self, msg: str, fields: dict[str, object]) -> None:
        self._emit(logging.WARNING, "outbox_warning", msg, **fields)

    # -- heartbeat ------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started": self.started,
            "last_beat": _now_iso(),
            "state": self.state,
            "counters": {
                **self.counters,
                "pending": self.inbox.backlog,
                "window": len(self.inbox.pending),
                "subfolders": len(self.inbox.subfolders),
                "in_subfolders": sum(self.inbox.subfolders.values()),
                "left_in_inbox": len(self.inbox.left),
            },
            "inbox": str(self.config.inbox),
            "outbox": str(self.config.outbox),
            "watch_mode": self.inbox.mode,
            "backend": self.stamp.backend if self.stamp else None,
            "precision": self.stamp.precision if self.stamp else self.config.precision,
            "model_version": self.stamp.model_version if self.stamp else None,
            "model_sha256": self.stamp.model_sha256 if self.stamp else None,
            "synthetic": self.stamp.synthetic if self.stamp else None,
            "last_result_at": self.last_result_at,
            "last_error": self.last_error,
        }

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + self.config.heartbeat_seconds
        try:
            if self._heartbeat_in_outbox:
                if self.outbox.root_id is not None and not self.outbox.root_is_current():
                    # never write into an unmounted or replaced outbox (that is the wrong disk)
                    raise OutboxReplacedError(errno.ENODEV, "outbox unavailable", str(self.config.outbox))
                # the outbox root may be created at the first start only, never its parents
                self.config.heartbeat_path.parent.mkdir(exist_ok=True)
            else:
                self.config.heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_files([(self.config.heartbeat_path, self.heartbeat())])
            self._heartbeat_error = ""
        except OSError as exc:
            path = self.config.heartbeat_path
            name, text = describe_os_error(OSError(exc.errno, exc.strerror), str(path))
            if name != self._heartbeat_error:  # once per kind of problem, not every beat
                self._heartbeat_error = name
                self._emit(
                    logging.WARNING, "heartbeat_failed", f"cannot write the heartbeat: {text}", errno=name
                )

    def _sleep(self, seconds: float) -> None:
        """Wait without spinning, keeping the heartbeat alive; returns early on a stop signal."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, self.config.heartbeat_seconds))
            self._beat()

    # -- signals --------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # only flags here: logging from a signal handler can deadlock
        self._signals_seen.append(signal.Signals(signum).name)
        self.stop.set()
        self.inbox.wake.set()

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self._hangups += 1  # logged by the loop: logging from a signal handler can deadlock

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # SIGHUP's default kills without cleanup, and systemd does not restart a service that
        # SIGHUP stopped; a closed terminal or a stray 'reload' must not stop the clinic's inbox.
        signal.signal(signal.SIGHUP, self._on_hangup)

    # -- startup --------------------------------------------------------
    def open_model(self) -> tuple[Bundle, Backend] | None:
        from edge_runtime.backends.select import create_backend

        config = self.config
        try:
            bundle = Bundle.open(config.bundle)
            backend = create_backend(
                bundle,
                backend=config.backend,
                precision=config.precision,
                threads=config.threads,
                dla_core=config.dla_core,
            )
            backend.open()
        except EdgeError as exc:
            self._trouble("startup_failed", f"cannot load the model: {exc}", bundle=str(config.bundle))
            return None
        except Exception as exc:  # noqa: BLE001 - a runtime's own exception types (onnxruntime, TensorRT) vary
            self._trouble(
                "startup_failed",
                f"cannot load the model: {type(exc).__name__}: {exc}",
                bundle=str(config.bundle),
            )
            return None
        # the ONNX file the backend runs or its engine was built from
        model_sha = bundle.file_sha256(ONNX_FOR_PRECISION.get(backend.precision, ONNX_FOR_PRECISION["fp32"]))
        self.predictor = Predictor(backend, bundle.info, model_sha)
        self.contract = bundle.contract
        self.stamp = ModelStamp(
            model_version=bundle.info.model_version,
            model_sha256=model_sha,
            backend=backend.name,
            precision=backend.precision,
            threshold=bundle.info.threshold,
            synthetic=bundle.info.synthetic,
        )
        return bundle, backend

    def prepare_outbox(self) -> bool:
        """Outbox usable, locked, and no batch left unfinished. False (logged) when not yet."""
        try:
            self.outbox.ensure_layout()
            self.lock.ensure()
            if not self._outbox_prepared_once:
                self.inbox.left = self.outbox.load_left()
                self._recover_decode_guard()
                removed = self.outbox.remove_stale_temp_files()
                if removed:
                    self._emit(logging.INFO, "cleanup", f"removed {removed} temp files of interrupted writes")
                settings = {"config": self.config.to_dict(), "version": __version__, "started": self.started}
                write_json_files([(self.outbox.root / CONFIG_FILE, {**settings, "pid": os.getpid()})])
                self._outbox_prepared_once = True
            if not self._finish_claimed_batch():
                return False
        except OutboxBusyError:
            raise
        except OSError as exc:
            name, text = describe_os_error(exc, str(self.config.outbox))
            delay = self.outbox_backoff.next()
            self._outbox_trouble = True
            self._trouble(
                "outbox_unavailable",
                f"cannot use the outbox: {text}; retrying in {delay:g} s",
                errno=name,
                path=exc.filename,
                retry_in_s=delay,
            )
            self.state = "backoff"
            self._sleep(delay)
            return False
        # Backoff is reset, and recovery announced, only after a batch is written
        # (_committed): a full disk still lets folders be listed and created.
        self._outbox_ready = True
        return True

    def _recover_decode_guard(self) -> None:
        """Count the input the last process died decoding, if it did, and say so."""
        died = self.decode_guard.recover()
        if died is None:
            return
        name, deaths = key_name(died[0]), died[1]
        outcome = ": it gets a failed record instead of another try" if deaths >= CRASH_LIMIT else ""
        self._emit(
            logging.WARNING,
            "decode_crash",
            f"the last run died while decoding {name} ({deaths} of {CRASH_LIMIT} times{outcome}); out of "
            "memory? see MemoryMax in deploy/pneumo-watch.service",
            name=name,
            deaths=deaths,
        )

    def _finish_claimed_batch(self) -> bool:
        """Finish a batch a crash or an outbox error left claimed. False while its inbox is not there."""
        try:
            claim = self.outbox.journal.read()
        except ValueError as exc:
            self._trouble("journal_corrupt", str(exc))
            return True
        if claim is None:
            return True
        self._parked.clear()
        # Waited for, not decided: a claim finished without its inbox (a share not yet mounted
        # at boot) would record "moved to nothing" and the images would be classified twice.
        waited = 0.0 if self._inbox_gone_since is None else time.monotonic() - self._inbox_gone_since
        require_inbox = waited < self.config.inbox_wait_seconds
        try:
            if require_inbox:
                self._lock_inbox()
            # after a crash any time may have passed: inputs are also compared by sha256 before moving
            self.outbox.finish(
                claim, self._warn, stuck=self._stuck, verify_content=True, require_inbox=require_inbox
            )
        except InboxUnavailableError as exc:
            if self._inbox_gone_since is None:
                self._inbox_gone_since = time.monotonic()
            self._inbox_unavailable(exc)
            return False
        if not require_inbox:
            self._emit(
                logging.WARNING,
                "claim_finished_without_inbox",
                f"the inbox was not back within {self.config.inbox_wait_seconds:g} s: the interrupted batch "
                "was finished with the inputs it could not find recorded as not moved",
                batch_id=claim.batch_id,
            )
        self._inbox_gone_since = None
        self._parked.clear()  # nothing is in the window yet: a scan finds them again
        self._after_finish(claim)
        self._outbox_writable_again()
        done = sum(1 for e in claim.entries if e.status == "done")
        self.counters["processed"] += done
        self.counters["failed"] += len(claim.entries) - done
        self.counters["recovered"] += len(claim.entries)
        self._emit(
            logging.WARNING,
            "recovered_batch",
            f"finished a batch of {len(claim.entries)} interrupted by a crash or an outbox error",
            batch_id=claim.batch_id,
            names=[e.name for e in claim.entries],
        )
        return True

    # -- the loop -------------------------------------------------------
    def run(self) -> int:
        config = self.config
        self._emit(
            logging.INFO,
            "starting",
            f"pneumo edge watch {__version__}: {config.inbox} -> {config.outbox}",
            config=config.to_dict(),
        )
        if self.install_signals:
            self._install_signals()  # before the model loads: a stop during start-up is clean too
        try:
            self._lock_inbox()  # refuse at once, before loading a model, if another daemon has it
        except InboxBusyError as exc:
            self.state = "failed"
            self._trouble("inbox_busy", str(exc))
            return 1
        except InboxUnavailableError:
            pass  # a missing inbox is waited for in the loop, which locks it when it appears
        opened = self.open_model()
        if opened is None:
            self.state = "failed"
            self._beat(force=True)  # a monitor sees why, not just a stale file
            self.inbox_lock.release()
            return 1
        bundle, backend = opened
        try:
            self.inbox.start()
            if self.inbox.watch_error:
                self._emit(logging.WARNING, "polling", self.inbox.watch_error)
            self._emit(
                logging.INFO,
                "started",
                f"watching {config.inbox} ({self.inbox.mode}) with {backend.describe()}, model "
                f"{bundle.info.model_version}" + (" [SYNTHETIC]" if bundle.info.synthetic else ""),
                backend=backend.name,
                precision=backend.precision,
                model_version=bundle.info.model_version,
                synthetic=bundle.info.synthetic,
                watch_mode=self.inbox.mode,
            )
            return self._loop()
        except InboxBusyError as exc:
            self._trouble("inbox_busy", str(exc))
            return 1
        except OutboxBusyError as exc:
            self._trouble("outbox_busy", str(exc))
            return 1
        except Exception as exc:  # a bug: say it in the log format; the service restarts us
            self.state = "failed"
            self._trouble("crashed", f"unexpected error: {type(exc).__name__}: {exc}")
            self.log.exception("traceback", extra={"event": "crashed", "fields": {}})
            return 1
        finally:
            self.inbox.stop()
            backend.close()
            self.lock.release()
            self.inbox_lock.release()
            if self.state != "failed":
                self.state = "stopped"
            self._beat(force=True)
            self._emit(
                logging.INFO,
                "stopped",
                f"stopped ({', '.join(self._signals_seen) or 'no signal'}): "
                f"{self.counters['processed']} done, {self.counters['failed']} failed",
                counters=self.counters,
            )

    def _loop(self) -> int:
        while not self.stop.is_set():
            self._beat()
            if self._hangups != self._hangups_logged:
                self._hangups_logged = self._hangups
                self._emit(
                    logging.INFO,
                    "hangup_ignored",
                    "SIGHUP ignored: the daemon keeps running (settings are read at start; restart the "
                    "service to apply new ones, SIGTERM to stop it)",
                )
            if not self._outbox_ready and not self.prepare_outbox():
                continue
            try:
                self._lock_inbox()
                batch = self.inbox.poll(self.config.batch)
            except InboxUnavailableError as exc:
                self._inbox_unavailable(exc)
                continue
            self._after_scan()
            if self._inbox_trouble:
                self._inbox_trouble = False
                self.inbox_backoff.reset()
                self._emit(logging.INFO, "inbox_recovered", f"inbox {self.config.inbox} is back; resuming")
            self.state = "running"
            if not batch:
                self.inbox.wake.wait(self.inbox.next_wakeup())
                self.inbox.wake.clear()
                continue
            if (
                self.process_batch(batch) == "backend_failed"
                and self._backend_failures >= MAX_BACKEND_FAILURES
            ):
                self.state = "failed"
                self._trouble(
                    "backend_failed",
                    f"inference failed {self._backend_failures} batches in a row; exiting so the service restarts",
                )
                return 1
        self.state = "stopping"
        return 0

    def _lock_inbox(self) -> None:
        """Hold INBOX/.pneumo-inbox.lock (again, if the inbox was recreated). InboxBusyError if taken."""
        try:
            self.inbox_lock.ensure()
        except FileNotFoundError as exc:
            raise InboxUnavailableError(
                f"{self.config.inbox}: inbox is missing (create or mount it)"
            ) from exc
        except OSError as exc:
            _, text = describe_os_error(exc, str(self.inbox_lock.path))
            raise InboxUnavailableError(f"{self.config.inbox}: cannot lock the inbox: {text}") from exc

    def _after_scan(self) -> None:
        """Report sub-folders once; keep the list of inputs left in the inbox up to date."""
        for name, count in self.inbox.new_subfolders:
            self._emit(
                logging.WARNING,
                "subfolder_ignored",
                f"{self.config.inbox / name} is a sub-folder holding {count} file(s): sub-folders are "
                "not processed; move the images into the inbox itself",
                folder=str(self.config.inbox / name),
                files=count,
            )
        self.inbox.new_subfolders.clear()
        if self.inbox.left_changed and self.outbox.root_is_current():
            try:
                self.outbox.save_left(self.inbox.left)
                self.inbox.left_changed = False
            except OSError:
                pass  # tried again after the next scan; the outbox errors are reported by its writes

    def _inbox_unavailable(self, exc: InboxUnavailableError) -> None:
        self.inbox.forget_all()
        delay = self.inbox_backoff.next()
        self._inbox_trouble = True
        self.state = "backoff"
        self._trouble(
            "inbox_unavailable",
            f"{exc}; retrying in {delay:g} s",
            retry_in_s=delay,
        )
        self._sleep(delay)

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
        with contextlib.suppress(OSError):  # best effort: a full outbox disk must not stop reading
            self.decode_guard.decoding(key)
        self.failpoint.hit("decoding")  # tests: the process dies on this input, as under the OOM killer
        assert self.contract is not None
        return read_input(self.config.inbox, cand, self.contract)

    def process_batch(self, batch: Sequence[Any]) -> str:
        """Read, infer and commit one batch. Returns "done", "requeued", "backend_failed" or "outbox_failed"."""
        assert self.predictor is not None and self.contract is not None
        reads: list[InputRead] = []
        for cand in batch:
            if self.stop.is_set():
                self._requeue([c.name for c in batch])
                return "requeued"
            try:
                read = self._read_guarded(cand)
            except InboxUnavailableError as exc:
                with contextlib.suppress(OSError):
                    self.decode_guard.clear()
                self._inbox_unavailable(exc)
                return "requeued"
            if read.outcome == "changed":
                self.inbox.requeue(cand.name)
                self.counters["requeued"] += 1
                continue
            if read.outcome == "retry" and self._retry_later(cand, read.reason):
                continue
            if read.outcome == "rejected" and read.maybe_incomplete and self.inbox.settle(cand):
                self.counters["requeued"] += 1
                self._emit(
                    logging.INFO,
                    "input_held",
                    f"{cand.name}: {read.reason}; never signalled complete, so held until it has not "
                    f"changed for {self.config.settle_seconds:g} s (its writer may only have paused)",
                    name=cand.name,
                )
                continue
            if read.outcome == "retry":
                read.outcome = "rejected"  # given up after input_retries tries
            reads.append(read)
        with contextlib.suppress(OSError):
            self.decode_guard.clear()  # a crash from here on is not one input's fault
        if not reads:
            return "requeued"
        images = [r for r in reads if r.outcome == "image"]
        predictions = {}
        if images:
            try:
                batch_array = np.stack([r.image for r in images if r.image is not None])
                outputs = self.predictor.predict(batch_array, [r.source for r in images])
            except NonFiniteOutputError as exc:
                # The model ran but gave no number for these inputs: retrying cannot help, and
                # requeueing would stop the inbox behind them. They fail alone; the rest are results.
                outputs = exc.results
                for read in images:
                    if read.source in exc.failed:
                        read.outcome, read.reason, read.image = "rejected", exc.failed[read.source], None
                images = [r for r in images if r.outcome == "image"]
            except Exception as exc:  # noqa: BLE001 - a failing device must not lose inputs: requeue and back off
                self._backend_failures += 1
                self._requeue([r.candidate.name for r in reads])
                delay = self.backend_backoff.next()
                self._trouble(
                    "inference_failed",
                    f"inference failed: {type(exc).__name__}: {exc}; retrying in {delay:g} s",
                )
                self._sleep(delay)
                return "backend_failed"
            self._backend_failures = 0
            self.backend_backoff.reset()
            by_source = {p.source: p for p in outputs}
            predictions = {id(r): by_source[r.source] for r in images}
        if not self.outbox.root_is_current() or not self.lock.is_current():
            # unmounted or replaced since it was prepared: claim nothing, write nothing; the
            # inputs wait in the inbox while prepare_outbox reports outbox_unavailable
            self._requeue([r.candidate.name for r in reads])
            self._outbox_ready = False
            return "outbox_failed"
        self._parked.clear()
        try:
            claim = self._claim(reads, predictions)  # stats done/ and failed/ for free names
            self.outbox.journal.write(claim)
            self.failpoint.hit("after-claim")
            self.outbox.finish(claim, self._warn, self.failpoint, stuck=self._stuck)
        except InboxUnavailableError as exc:
            # the claim is on disk and waits for the inbox; prepare_outbox finishes it then
            self._outbox_ready = False
            self._inbox_unavailable(exc)
            return "requeued"
        except OSError as exc:
            # The claim may be on disk; prepare_outbox finishes it before anything new.
            self.inbox.forget_all()
            self._outbox_ready = False
            self._outbox_trouble = True
            name, text = describe_os_error(exc, str(self.config.outbox))
            delay = self.outbox_backoff.next()
            self._trouble(
                "outbox_write_failed",
                f"cannot write results: {text}; retrying in {delay:g} s",
                errno=name,
                path=exc.filename,
                retry_in_s=delay,
            )
            self.state = "backoff"
            self._sleep(delay)
            return "outbox_failed"
        self._committed(claim)
        return "done"

    # -- problems of one input ------------------------------------------
    def _retry_delay(self, tries: int) -> float:
        return min(self.config.backoff_max_seconds, self.config.backoff_initial_seconds * 2 ** (tries - 1))

    def _count_try(self, name: str, ino: int, dev: int) -> int | None:
        """Count one more try of an input; None when its tries are used up (give it up now)."""
        key = (name, ino, dev)
        if len(self._tries) > 10_000:
            # inputs that were retried and then vanished leave keys behind; months of that stay bounded
            self._tries.clear()
        tries = self._tries.get(key, 0) + 1
        if tries >= self.config.input_retries:
            self._tries.pop(key, None)
            return None
        self._tries[key] = tries
        return tries

    def _retry_later(self, cand: Candidate, reason: str) -> bool:
        """A read error that may pass: park the input (True), or give up after input_retries (False)."""
        tries = self._count_try(cand.name, cand.ino, cand.dev)
        if tries is None:
            return False
        delay = self._retry_delay(tries)
        self.inbox.park(cand.name, delay)
        self.counters["requeued"] += 1
        self._emit(
            logging.WARNING,
            "input_retry",
            f"{cand.name}: {reason}; try {tries} of {self.config.input_retries}, again in {delay:g} s",
            name=cand.name,
            retry_in_s=delay,
        )
        return True

    def _stuck(self, entry: JournalEntry, exc: InputStuckError, claim: Claim) -> JournalEntry | None:
        """An input that cannot be moved: leave it unclaimed for a later try, or give it up as failed."""
        errno_name, text = describe_os_error(exc, entry.source)
        tries = self._count_try(entry.name, entry.ino, entry.dev)
        if tries is not None:
            delay = self._retry_delay(tries)
            self._parked.append((entry.name, delay))
            self._emit(
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
        assert self.stamp is not None
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
            timestamp=_now_iso(),
            input_sha256=entry.sha256,
            input_bytes=entry.size if entry.sha256 else None,
        )
        return dataclasses.replace(
            entry, status="failed", target="", result_path=result_path, record=record, left_in_inbox=True
        )

    def _after_finish(self, claim: Claim) -> None:
        """Bookkeeping of a finished claim: inputs left in the inbox are skipped from now on."""
        if any(e.left_in_inbox for e in claim.entries):
            self.inbox.left = self.outbox.load_left()
        for entry in claim.entries:
            self._tries.pop((entry.name, entry.ino, entry.dev), None)

    def _requeue(self, names: Sequence[str]) -> None:
        for name in names:
            self.inbox.requeue(name)

    def _claim(self, reads: Sequence[InputRead], predictions: dict[int, Any]) -> Claim:
        assert self.stamp is not None
        reserved: set[str] = set()
        entries = []
        for read in reads:
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
                    self.stamp,
                    result_id=result_id,
                    original_name=cand.name,
                    source=read.source,
                    moved_to=moved_to,
                    result_file=result_file,
                    error_kind=kind,
                    reason=read.reason,
                    timestamp=_now_iso(),
                    input_sha256=read.sha256,
                    input_bytes=read.size if read.sha256 else None,
                )
            entries.append(
                JournalEntry(
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
            )
        return Claim(
            batch_id=uuid.uuid4().hex,
            jsonl_offset=self.outbox.jsonl.size(),
            csv_offset=self.outbox.csv.size(),
            entries=entries,
        )

    def _outbox_writable_again(self) -> None:
        if self._outbox_trouble:
            self._outbox_trouble = False
            self.outbox_backoff.reset()
            self._emit(logging.INFO, "outbox_recovered", "outbox is writable again; resuming")

    def _committed(self, claim: Claim) -> None:
        self._outbox_writable_again()
        self.counters["batches"] += 1
        self.last_result_at = _now_iso()
        self._after_finish(claim)
        for name, delay in self._parked:
            self.inbox.park(name, delay)
        self._parked.clear()
        for entry in claim.entries:
            self.inbox.done(entry.name)
            record = entry.record
            if entry.status == "done":
                self.counters["processed"] += 1
                self._emit(
                    logging.INFO,
                    "result",
                    f"{entry.name}: {record['label']} p={record['probability']:.3f} -> {record['moved_to']}",
                    id=entry.id,
                    name=entry.name,
                    label=record["label"],
                    probability=record["probability"],
                    moved_to=record["moved_to"],
                )
            else:
                self.counters["failed"] += 1
                self._emit(
                    logging.WARNING,
                    "failed_input",
                    f"{entry.name}: {record['reason']} -> {record['moved_to'] or 'nothing to move'}",
                    id=entry.id,
                    name=entry.name,
                    reason=record["reason"],
                    moved_to=record["moved_to"],
                )


# -- command line -----------------------------------------------------------
EPILOG = """\
example:
  pneumo edge watch bundles/demo --inbox /srv/xray/inbox --outbox /srv/xray/outbox
  pneumo edge watch --config /etc/pneumo/watch.toml        # settings in a file, flags override it

Every input ends in OUTBOX/done/ (with NAME.json beside it) or OUTBOX/failed/
(with NAME.error.json saying why), and one line in OUTBOX/results.jsonl and
OUTBOX/results.csv. Logs are JSON lines on stderr; OUTBOX/heartbeat.json is
rewritten every few seconds. Stop with SIGTERM or Ctrl-C. To run it as a
service see deploy/WATCH.md. Results are decision support, not a diagnosis.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Watch an inbox folder and classify every complete image dropped into it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    parser.add_argument(
        "bundle",
        nargs="?",
        type=Path,
        metavar="BUNDLE",
        help="deployment bundle folder (or 'bundle' in --config)",
    )
    parser.add_argument("--inbox", type=Path, metavar="DIR", help="folder images are dropped into")
    parser.add_argument(
        "--outbox", type=Path, metavar="DIR", help="folder for done/, failed/, results.jsonl, results.csv"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML or JSON settings file; flags override it"
    )
    parser.add_argument("--backend", metavar="NAME", help="auto (default) or a backend name, e.g. ort-cpu")
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), help="model precision (default fp32)"
    )
    parser.add_argument("--batch", type=int, metavar="N", help="most images per inference call (default 16)")
    parser.add_argument(
        "--quiet-seconds", type=float, metavar="S", help="size/mtime must hold still this long (default 2.0)"
    )
    parser.add_argument(
        "--poll-interval", type=float, metavar="S", help="seconds between checks without events (default 1.0)"
    )
    parser.add_argument(
        "--rescan-seconds",
        type=float,
        metavar="S",
        help="full inbox rescan interval with inotify (default 5)",
    )
    parser.add_argument(
        "--max-pending", type=int, metavar="N", help="most inputs tracked at once (default 1024)"
    )
    parser.add_argument(
        "--heartbeat", type=Path, metavar="FILE", help="heartbeat JSON file (default OUTBOX/heartbeat.json)"
    )
    parser.add_argument("--heartbeat-seconds", type=float, metavar="S", help="heartbeat interval (default 5)")
    parser.add_argument(
        "--no-watchdog",
        dest="watchdog",
        action="store_const",
        const=False,
        help="poll instead of using inotify",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (default: its own choice)"
    )
    parser.add_argument(
        "--dla",
        dest="dla_core",
        type=int,
        metavar="N",
        help="run the TensorRT engine built for DLA core N ('pneumo edge build --dla N')",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        metavar="S",
        help="a file that looks unfinished must hold still this long before it is failed (default 60)",
    )
    parser.add_argument(
        "--input-retries",
        type=int,
        metavar="N",
        help="tries of one input after a read or move error that may pass, before it fails (default 5)",
    )
    parser.add_argument(
        "--inbox-wait-seconds",
        type=float,
        metavar="S",
        help="a batch interrupted by a crash waits this long for a missing or unmounted inbox before "
        "inputs it cannot find are recorded as not moved (default 3600)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings as JSON and exit"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> WatchConfig:
    file_values = load_config_file(args.config) if args.config else {}
    flags = {
        name: getattr(args, name)
        for name in (
            "bundle",
            "inbox",
            "outbox",
            "backend",
            "precision",
            "batch",
            "quiet_seconds",
            "poll_interval",
            "rescan_seconds",
            "max_pending",
            "heartbeat",
            "heartbeat_seconds",
            "watchdog",
            "threads",
            "dla_core",
            "settle_seconds",
            "input_retries",
            "inbox_wait_seconds",
            "log_level",
        )
    }
    return resolve_config(file_values, flags)


def main(argv: list[str], prog: str = "pneumo edge watch") -> int:
    """Entry point of ``pneumo edge watch``: 0 after a clean stop, 1 on a fatal failure, 2 on bad settings."""
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except WatchConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)  # noqa: T201 - this is the CLI layer
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))  # noqa: T201 - --print-config output
        return 0
    try:
        failpoint = Failpoint(os.environ.get(FAILPOINT_ENV, ""))
    except ValueError as exc:
        print(f"{prog}: error: {FAILPOINT_ENV}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    logger = json_logger(config.log_level)
    return WatchDaemon(config, logger, failpoint=failpoint).run()
