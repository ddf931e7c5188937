"""The watch daemon's heartbeat file: proof of life for a monitor, rewritten every few seconds.

``heartbeat.json`` (or the ``heartbeat`` setting) is written atomically at
most every ``heartbeat_seconds``, and at once when the daemon stops or fails
to start, so a monitor sees why and not just a stale file. What it holds
(pid, state, counters, model, last error) is the daemon's
:meth:`~edge_runtime.watch.WatchDaemon.heartbeat`; this module decides when
and where it may be written.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.outbox import Outbox, OutboxReplacedError
from edge_runtime.results import write_json_files
from edge_runtime.watch_config import WatchConfig
from edge_runtime.watch_log import EventLog, describe_os_error


class HeartbeatFile:
    """Writes the heartbeat when due; a write that fails is reported once per kind of problem."""

    def __init__(self, config: WatchConfig, outbox: Outbox, events: EventLog) -> None:
        self.path = config.heartbeat_path
        self.interval = config.heartbeat_seconds
        self.outbox = outbox
        self.events = events
        self._in_outbox = config.heartbeat_path.is_relative_to(config.outbox)
        self._next = 0.0
        #: errno name of the last failed write, "" after a good one
        self._error = ""

    def beat(self, snapshot: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Write ``snapshot()`` if the interval is up (or ``force``); never raises."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        try:
            self._ensure_folder()
            write_json_files([(self.path, snapshot())])
            self._error = ""
        except OSError as exc:
            name, text = describe_os_error(OSError(exc.errno, exc.strerror), str(self.path))
            if name != self._error:  # once per kind of problem, not every beat
                self._error = name
                self.events.emit(
                    logging.WARNING, "heartbeat_failed", f"cannot write the heartbeat: {text}", errno=name
                )

    def _ensure_folder(self) -> None:
        if not self._in_outbox:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        if self.outbox.root_id is not None and not self.outbox.root_is_current():
            # never write into an unmounted or replaced outbox (that is the wrong disk)
            raise OutboxReplacedError(errno.ENODEV, "outbox unavailable", str(self.outbox.root))
        # the outbox root may be created at the first start only, never its parents
        self.path.parent.mkdir(exist_ok=True)
