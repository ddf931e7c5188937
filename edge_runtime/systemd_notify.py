"""Tell systemd how the watch daemon is doing: the ``sd_notify`` protocol, without libsystemd.

Under ``Type=notify`` (``deploy/pneumo-watch.service``) systemd counts the
service as started only once the model is loaded and the inbox watched
(``READY=1``), so ``systemctl start`` returns after a failed model load with
the failure, not before it. With ``WatchdogSec=`` systemd kills and restarts
a daemon whose main loop has stopped calling in (``WATCHDOG=1``): a hang no
exit status would ever report. ``STATUS=`` is the line ``systemctl status``
shows, and ``STOPPING=1`` marks a stop already under way.

The protocol is one datagram per message to the AF_UNIX socket named in
``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd that variable is unset and every call here does nothing. A send that
fails never stops the daemon: systemd restarting itself is not a reason to
drop an image.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class ServiceNotifier:
    """Messages to the service manager; a no-op without ``address``."""

    #: NOTIFY_SOCKET as systemd set it; None outside systemd
    address: str | None = None
    #: seconds within which systemd wants a WATCHDOG=1; None when no watchdog is set for this process
    watchdog_seconds: float | None = None
    clock: Clock = time.monotonic
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _next_ping: float = field(default=0.0, init=False)
    _status: str = field(default="", init=False)
    #: the last send's error (e.g. "ECONNREFUSED"); "" after a good one, for a caller to report once
    error: str = field(default="", init=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], pid: int) -> ServiceNotifier:
        """What systemd passed to process ``pid``: ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``."""
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog = None
        usec = environ.get("WATCHDOG_USEC", "")
        # WATCHDOG_PID names the process meant; a child that inherited the variables is not it
        meant_for_us = environ.get("WATCHDOG_PID", str(pid)) == str(pid)
        if address and usec.isdigit() and int(usec) > 0 and meant_for_us:
            watchdog = int(usec) / 1e6
        return cls(address=address, watchdog_seconds=watchdog)

    def ready(self, status: str) -> None:
        """The model is loaded and the inbox watched: ``systemctl start`` may return."""
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")
        self._schedule_ping()

    def alive(self, status: str) -> None:
        """Called on every turn of the main loop: a watchdog ping when one is due, the status when it changed."""
        lines = []
        if self.watchdog_seconds is not None and self.clock() >= self._next_ping:
            lines.append("WATCHDOG=1")
            self._schedule_ping()
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        if lines:
            self._send("\n".join(lines))

    def stopping(self, status: str) -> None:
        """A stop is under way: systemd shows "deactivating" instead of taking the wait for a hang."""
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _schedule_ping(self) -> None:
        if self.watchdog_seconds is not None:
            # half the interval, as sd_watchdog_enabled(3) advises: one late turn is not a kill
            self._next_ping = self.clock() + self.watchdog_seconds / 2

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), target)
            self.error = ""
        except OSError as exc:
            self.error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.close()  # a fresh socket next time, in case systemd's was recreated
