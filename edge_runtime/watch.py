"""``pneumo edge watch``: the headless daemon that turns inbox images into results, unattended for months.

One loop on the main thread (watchdog's observer thread only passes hints):

1. make sure the outbox is usable, hold its lock, and finish a batch a crash
   left in the journal (``edge_runtime.watch_recovery``, ``edge_runtime.journal``,
   ``edge_runtime.outbox``);
2. ask the inbox for up to ``batch`` complete files (``edge_runtime.inbox``);
   with nothing ready, sleep until an event, a quiet period ending, or the
   next scan;
3. read and decode each file (the one preprocessing implementation), run the
   decodable ones through the backend as one batch;
4. claim the batch in the journal, then move inputs, write per-image JSONs,
   append to results.jsonl and results.csv, and clear the claim (steps 3 and 4:
   ``edge_runtime.watch_batch``).

Failure handling, so that an operator can leave it alone:

* a bad input fails alone: it goes to ``failed/`` with the decoder's reason;
  one that only looks broken because its writer paused (truncated, never
  signalled complete) is held for ``settle_seconds`` first;
* a problem of one input (it cannot be moved: immutable or locked; a read
  error that may pass: EIO, ESTALE) parks that input alone and retries it
  with growing delays; after ``input_retries`` tries it fails with the reason,
  while the rest of the inbox goes on (``edge_runtime.watch_retries``);
* an outbox that is full, read-only, unwritable or missing, and an inbox that
  vanished, are logged once per attempt with what to do, and retried with
  exponential backoff (``backoff_initial_seconds`` doubling up to
  ``backoff_max_seconds``); the daemon never spins and never exits for them.
  An outbox that was unmounted or replaced is never recreated or written
  into: inputs wait until the same outbox is back; a share unmounted from the
  inbox (only the empty mount point left) counts as a vanished inbox;
* a second daemon on the same outbox or the same inbox refuses to start;
* the backend failing five batches in a row ends the process with status 1, so
  the service manager restarts it with a fresh device context;
* SIGTERM / SIGINT: a batch whose results are being written is finished, a
  batch still being read is put back, and the process exits 0.

Logs go to stderr, one JSON object a line (``ts``, ``level``, ``event``,
``msg`` and fields), which journald stores as is (``edge_runtime.watch_log``).
A heartbeat file (atomic JSON) says every few seconds that the daemon lives
and what it has done (``edge_runtime.watch_heartbeat``). The command line is
``edge_runtime.watch_cli``; :func:`main` here is its entry point.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from edge_runtime import __version__
from edge_runtime.backends.base import Backend, source_onnx_sha256
from edge_runtime.bundle import Bundle
from edge_runtime.decode_guard import DecodeGuard
from edge_runtime.errors import EdgeError
from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher
from edge_runtime.journal import InboxBusyError, InboxLock, OutboxBusyError, OutboxLock
from edge_runtime.mountinfo import read_mount_of, share_advice
from edge_runtime.outbox import CONFIG_FILE, Failpoint, Outbox
from edge_runtime.predictor import Predictor
from edge_runtime.results import ModelStamp, write_json_files
from edge_runtime.systemd_notify import ServiceNotifier
from edge_runtime.watch_batch import BatchProcessor, ModelInUse
from edge_runtime.watch_config import WatchConfig
from edge_runtime.watch_heartbeat import HeartbeatFile
from edge_runtime.watch_log import EventLog, describe_os_error, now_iso
from edge_runtime.watch_recovery import CrashRecovery
from edge_runtime.watch_retries import Backoff, InputRetries, OutboxHealth
from edge_runtime.watch_space import OutboxSpace

MAX_BACKEND_FAILURES = 5


class WatchDaemon:
    """The daemon's state and loop; ``run()`` returns the process exit status.

    Its parts: :class:`~edge_runtime.inbox.InboxWatcher` finds complete files,
    :class:`~edge_runtime.watch_batch.BatchProcessor` turns a batch into results,
    :class:`~edge_runtime.watch_recovery.CrashRecovery` finishes what a crash left,
    :class:`~edge_runtime.watch_retries.InputRetries` handles inputs with a problem of
    their own. The daemon owns the locks, the heartbeat, the signals and the waiting.
    """

    def __init__(
        self,
        config: WatchConfig,
        logger: logging.Logger,
        failpoint: Failpoint | None = None,
        install_signals: bool = True,
        notifier: ServiceNotifier | None = None,
    ) -> None:
        self.config = config
        self.events = EventLog(logger)
        self.failpoint = failpoint or Failpoint()
        self.notifier = notifier or ServiceNotifier()
        self._notify_error = ""
        self.install_signals = install_signals
        self.stop = threading.Event()
        self.outbox = Outbox(config.outbox, config.inbox, progress=self.progress)
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
            require_mount=config.inbox_mount,
        )
        self.outbox_health = OutboxHealth(
            Backoff(config.backoff_initial_seconds, config.backoff_max_seconds), self.events
        )
        self.inbox_backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        self.counters = {"processed": 0, "failed": 0, "batches": 0, "recovered": 0, "requeued": 0}
        self.state = "starting"
        self.started = now_iso()
        self.decode_guard = DecodeGuard(self.outbox.state_dir)
        self.heartbeat_file = HeartbeatFile(config, self.outbox, self.events)
        self.space = OutboxSpace(config.outbox, config.low_space_mib, self.events, config.heartbeat_seconds)
        #: set by open_model: the model, and the parts that need it to write records
        self.model: ModelInUse | None = None
        self.batches: BatchProcessor | None = None
        self.recovery: CrashRecovery | None = None
        self._outbox_prepared_once = False
        self._hangups = 0
        self._hangups_logged = 0
        self._inbox_trouble = False
        self._signals_seen: list[str] = []

    # -- heartbeat ------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        """What the heartbeat file says now: who runs, in what state, what it has done."""
        stamp = self.model.stamp if self.model else None
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started": self.started,
            "last_beat": now_iso(),
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
            "backend": stamp.backend if stamp else None,
            "precision": stamp.precision if stamp else self.config.precision,
            "model_version": stamp.model_version if stamp else None,
            "model_sha256": stamp.model_sha256 if stamp else None,
            "synthetic": stamp.synthetic if stamp else None,
            "last_result_at": self.batches.last_result_at if self.batches else None,
            "last_error": self.events.last_error,
            "outbox_free_mib": self.space.free_mib,
            "outbox_low_space": self.space.low,
        }

    def _beat(self, force: bool = False) -> None:
        self.space.check()
        # The ping first: the heartbeat's two fsyncs on a slow card must not eat into the watchdog's margin.
        self.notifier.alive(self.status_line())
        self.heartbeat_file.beat(self.heartbeat, force)
        self._report_notify_error()

    def status_line(self) -> str:
        """One line for ``systemctl status`` (systemd's STATUS=)."""
        c = self.counters
        return (
            f"{self.state}: {c['processed']} done, {c['failed']} failed, "
            f"{self.inbox.backlog} waiting in the inbox{self.space.status()}"
        )

    def _report_notify_error(self) -> None:
        error = self.notifier.error
        if error and error != self._notify_error:  # once per kind of problem, not every turn
            self.events.emit(
                logging.WARNING,
                "notify_failed",
                f"cannot reach systemd at NOTIFY_SOCKET={self.notifier.address}: {error}; "
                "its watchdog may restart the daemon",
                errno=error,
            )
        self._notify_error = error

    # -- waiting (edge_runtime.watch_retries.Pauses) ---------------------
    def _longest_wait(self) -> float:
        """The longest the loop may wait between two calls in: the heartbeat file may not grow older
        than ``heartbeat_seconds``, and systemd's watchdog wants a ping every half interval."""
        limit, watchdog = self.config.heartbeat_seconds, self.notifier.watchdog_seconds
        return min(limit, watchdog / 2) if watchdog else limit

    def sleep(self, seconds: float) -> None:
        """Wait without spinning, keeping the heartbeat alive; returns early on a stop signal."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, self._longest_wait()))
            self._beat()

    def progress(self) -> None:
        """Called between the steps of long work (each input, each MiB): the heartbeat and the
        watchdog then stand for "no step is stuck", however slow the share or large the batch."""
        self._beat()

    def back_off(self, seconds: float) -> None:
        """Say "backoff" in the heartbeat while waiting out a folder's trouble."""
        self.state = "backoff"
        self.sleep(seconds)

    def inbox_unavailable(self, exc: InboxUnavailableError) -> None:
        """Forget the window, report the inbox outage and wait with growing delays."""
        self.inbox.forget_all()
        delay = self.inbox_backoff.next()
        self._inbox_trouble = True
        self.events.trouble(
            "inbox_unavailable",
            f"{exc}; retrying in {delay:g} s",
            retry_in_s=delay,
        )
        self.back_off(delay)

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
        # a mask inherited from whatever started us (exec keeps it) would hold these pending forever
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    # -- startup --------------------------------------------------------
    def open_model(self) -> tuple[Bundle, Backend] | None:
        """Load and verify the bundle and open its backend; None (logged as startup_failed) if not."""
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
            # what `pneumo edge predict` stamps too: the ONNX file run, or the engine's source
            model_sha = source_onnx_sha256(bundle, backend)
        except EdgeError as exc:
            self.events.trouble("startup_failed", f"cannot load the model: {exc}", bundle=str(config.bundle))
            return None
        except Exception as exc:  # noqa: BLE001 - a runtime's own exception types (onnxruntime, TensorRT) vary
            self.events.trouble(
                "startup_failed",
                f"cannot load the model: {type(exc).__name__}: {exc}",
                bundle=str(config.bundle),
            )
            return None
        stamp = ModelStamp(
            model_version=bundle.info.model_version,
            model_sha256=model_sha,
            backend=backend.name,
            precision=backend.precision,
            threshold=bundle.info.threshold,
            synthetic=bundle.info.synthetic,
        )
        self._assemble(ModelInUse(Predictor(backend, bundle.info, model_sha), bundle.contract, stamp))
        return bundle, backend

    def _assemble(self, model: ModelInUse) -> None:
        """The parts that write records: they name the model in every failure too."""
        self.model = model
        retries = InputRetries(self.config, self.inbox, self.outbox, self.events, self.counters, model.stamp)
        self.batches = BatchProcessor(
            self.config,
            model,
            self.inbox,
            self.outbox,
            self.lock,
            self.outbox_health,
            self.decode_guard,
            retries,
            self.events,
            self.counters,
            pauses=self,
            stop=self.stop,
            failpoint=self.failpoint,
        )
        self.recovery = CrashRecovery(
            self.config,
            self.outbox,
            self.outbox_health,
            self.decode_guard,
            retries,
            self.events,
            self.counters,
            pauses=self,
            lock_inbox=self._lock_inbox,
        )

    def prepare_outbox(self) -> bool:
        """Outbox usable, locked, and no batch left unfinished. False (logged) when not yet."""
        assert self.recovery is not None, "open_model() first"
        try:
            self.outbox.ensure_layout()
            self.lock.ensure()
            if not self._outbox_prepared_once:
                self.inbox.left = self.outbox.load_left()
                self.recovery.recover_decode_guard()
                removed = self.outbox.remove_stale_temp_files()
                if removed:
                    self.events.emit(
                        logging.INFO, "cleanup", f"removed {removed} temp files of interrupted writes"
                    )
                settings = {"config": self.config.to_dict(), "version": __version__, "started": self.started}
                write_json_files([(self.outbox.root / CONFIG_FILE, {**settings, "pid": os.getpid()})])
                self._outbox_prepared_once = True
            if not self.recovery.finish_claimed_batch():
                return False
        except OutboxBusyError:
            raise
        except OSError as exc:
            name, text = describe_os_error(exc, str(self.config.outbox))
            delay = self.outbox_health.failed()
            self.events.trouble(
                "outbox_unavailable",
                f"cannot use the outbox: {text}; retrying in {delay:g} s",
                errno=name,
                path=exc.filename,
                retry_in_s=delay,
            )
            self.back_off(delay)
            return False
        # Backoff is reset, and recovery announced, only after a batch is written
        # (OutboxHealth.writable_again): a full disk still lets folders be listed and created.
        self.outbox_health.ready = True
        return True

    # -- the loop -------------------------------------------------------
    def run(self) -> int:
        config = self.config
        self.events.emit(
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
            self.events.trouble("inbox_busy", str(exc))
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
                self.events.emit(logging.WARNING, "polling", self.inbox.watch_error)
            self.events.emit(
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
            advice = share_advice(config.inbox, read_mount_of(config.inbox), config.inbox_mount)
            if advice:
                self.events.emit(logging.WARNING, "inbox_warning", advice)
            self.notifier.ready(self.status_line())
            self._report_notify_error()
            return self._loop()
        except InboxBusyError as exc:
            self.events.trouble("inbox_busy", str(exc))
            return 1
        except OutboxBusyError as exc:
            self.events.trouble("outbox_busy", str(exc))
            return 1
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback; the service restarts us
            self.state = "failed"
            self.events.trouble("crashed", f"unexpected error: {type(exc).__name__}: {exc}")
            self.events.traceback("crashed")
            return 1
        finally:
            self.notifier.stopping(f"stopping after {self.counters['processed']} done")
            self.inbox.stop()
            backend.close()
            self.lock.release()
            self.inbox_lock.release()
            if self.state != "failed":
                self.state = "stopped"
            self._beat(force=True)
            self.events.emit(
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
                self.events.emit(
                    logging.INFO,
                    "hangup_ignored",
                    "SIGHUP ignored: the daemon keeps running (settings are read at start; restart the "
                    "service to apply new ones, SIGTERM to stop it)",
                )
            if not self.outbox_health.ready and not self.prepare_outbox():
                continue
            try:
                self._lock_inbox()
                batch = self.inbox.poll(self.config.batch)
            except InboxUnavailableError as exc:
                self.inbox_unavailable(exc)
                continue
            self._after_scan()
            if self._inbox_trouble:
                self._inbox_trouble = False
                self.inbox_backoff.reset()
                self.events.emit(
                    logging.INFO, "inbox_recovered", f"inbox {self.config.inbox} is back; resuming"
                )
            self.state = "running"
            if not batch:
                # new files are still looked for every poll-interval (the inbox's own schedule); an
                # idle turn only beats and pings
                self.inbox.wake.wait(min(self.inbox.next_wakeup(), self._longest_wait()))
                self.inbox.wake.clear()
                continue
            if (
                self.process_batch(batch) == "backend_failed"
                and self._backend_failures() >= MAX_BACKEND_FAILURES
            ):
                self.state = "failed"
                self.events.trouble(
                    "backend_failed",
                    f"inference failed {self._backend_failures()} batches in a row; exiting so the service restarts",
                )
                return 1
        self.state = "stopping"
        return 0

    def process_batch(self, batch: Sequence[Candidate]) -> str:
        """Read, infer and commit one batch (:meth:`BatchProcessor.process`): its outcome."""
        assert self.batches is not None, "open_model() first"
        return self.batches.process(batch)

    def _backend_failures(self) -> int:
        return self.batches.backend_failures if self.batches else 0

    def _lock_inbox(self) -> None:
        """Hold INBOX/.pneumo-inbox.lock (again, if the inbox was recreated). InboxBusyError if taken."""
        # first: a lock file created in the empty mount point of an unmounted share would be an
        # inbox that looks healthy while the real one is away
        self.inbox.present()
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
            self.events.emit(
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


def main(argv: list[str], prog: str = "pneumo edge watch") -> int:
    """Entry point of ``pneumo edge watch`` (``edge_runtime.cli`` calls it here): see ``edge_runtime.watch_cli``."""
    from edge_runtime.watch_cli import main as cli_main  # imported when called: watch_cli imports this module

    return cli_main(argv, prog)
