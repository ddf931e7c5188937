"""The watch daemon's log: one JSON object a line on stderr, and what to do about each errno.

journald stores each line as is, so an operator can filter by ``event``
(``jq -c '{ts, level, event, msg}'``). Every line has ``ts``, ``level``,
``event`` and ``msg``, then the event's own fields. :class:`EventLog` is what
the daemon's parts write through; it also remembers the last error for the
heartbeat.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import sys
from typing import Any

LOGGER_NAME = "pneumo.watch"

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


def now_iso() -> str:
    """The current UTC time as results and the heartbeat write it (milliseconds)."""
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


def describe_os_error(exc: OSError, default_where: str = "") -> tuple[str, str]:
    """(errno name, sentence) for an OSError, with what to do about it."""
    name = errno.errorcode.get(exc.errno or 0, "E?")
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p) or default_where
    advice = ERRNO_ADVICE.get(exc.errno or 0, "")
    text = f"{exc.strerror or exc}" + (f" ({where})" if where else "") + (f"; {advice}" if advice else "")
    return name, text


class EventLog:
    """Named events on the daemon's logger; errors are also kept for the heartbeat's ``last_error``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.last_error: dict[str, str] | None = None

    def emit(self, level: int, event: str, msg: str, **fields: Any) -> None:
        self.logger.log(level, msg, extra={"event": event, "fields": fields})

    def trouble(self, event: str, msg: str, **fields: Any) -> None:
        """An error line, remembered as the heartbeat's ``last_error``."""
        self.last_error = {"time": now_iso(), "event": event, "message": msg}
        self.emit(logging.ERROR, event, msg, **fields)

    def outbox_warning(self, msg: str, fields: dict[str, object]) -> None:
        """The ``warn`` callback of :meth:`edge_runtime.outbox.Outbox.finish`."""
        self.emit(logging.WARNING, "outbox_warning", msg, **fields)

    def traceback(self, event: str) -> None:
        """The traceback of the exception being handled, as one JSON line."""
        self.logger.exception("traceback", extra={"event": event, "fields": {}})
