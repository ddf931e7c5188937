"""Free space on the outbox disk, so that an operator hears of a filling disk before results stop.

The daemon keeps every input it processes (moved to ``done/`` or ``failed/``), so
unless someone archives, the outbox disk fills over the months. A full disk loses
nothing (inputs wait in the inbox; ``outbox_write_failed`` with ``ENOSPC``), but
no result is written until space is freed. This module turns that into an early
warning: once free space falls below ``low-space-mib``, one ``outbox_low_space``
line, the heartbeat's ``outbox_low_space`` and the ``systemctl status`` line;
``outbox_space_ok`` once it is back above the threshold with a margin (so a disk
hovering at the threshold is not reported on every check).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edge_runtime.watch_log import EventLog

Clock = Callable[[], float]

#: free space must climb this much above the threshold (fraction of it, at least 1 MiB)
#: before the warning is withdrawn
RECOVER_MARGIN = 0.1


class OutboxSpace:
    """Checks the free space where results go, at most every ``interval`` seconds."""

    def __init__(
        self, path: Path, low_mib: int, events: EventLog, interval: float, clock: Clock = time.monotonic
    ) -> None:
        self.path = path
        #: warn below this many MiB; 0 never warns
        self.low_mib = low_mib
        self.events = events
        self.interval = interval
        self.clock = clock
        #: MiB an unprivileged writer may still use (statvfs f_bavail); None before a check succeeds
        self.free_mib: int | None = None
        self.low = False
        self._next = 0.0

    def check(self) -> None:
        """Measure when due; log a crossing of the threshold. Never raises."""
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            self.free_mib = shutil.disk_usage(self.path).free >> 20
        except OSError:
            self.free_mib = None  # outbox not there yet, or unmounted: its own events say so
            return
        if not self.low_mib:
            return
        if not self.low and self.free_mib < self.low_mib:
            self.low = True
            self.events.emit(
                logging.WARNING,
                "outbox_low_space",
                f"outbox disk nearly full: {self.free_mib} MiB free at {self.path}, below low-space-mib "
                f"{self.low_mib}; when it is full no result is written (inputs wait in the inbox): move "
                "old files out of done/ and failed/ (deploy/WATCH.md, section 8)",
                free_mib=self.free_mib,
                low_space_mib=self.low_mib,
            )
        elif self.low and self.free_mib >= self.recover_mib:
            self.low = False
            self.events.emit(
                logging.INFO,
                "outbox_space_ok",
                f"outbox disk has room again: {self.free_mib} MiB free at {self.path}",
                free_mib=self.free_mib,
                low_space_mib=self.low_mib,
            )

    @property
    def recover_mib(self) -> int:
        return self.low_mib + max(1, math.ceil(self.low_mib * RECOVER_MARGIN))

    def status(self) -> str:
        """A suffix for the status line while space is low, else ''."""
        return f"; outbox disk low: {self.free_mib} MiB free" if self.low else ""
