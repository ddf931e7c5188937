"""Inputs that kill the watch daemon while they are decoded: remembered, and failed alone.

A decoder can take the whole process down on one file (the kernel's OOM
killer on a huge 16-bit image under ``MemoryMax``, a crash inside a codec).
The service restarts the daemon, which reads the same oldest file first and
dies again: one such file would stop the inbox for good.

So while each input is decoded its identity is in
``OUTBOX/.pneumo/decoding`` (a plain write, no fsync: it must outlive the
process, not a power cut), written once its bytes are read and removed as
soon as its decode returns. Reading the bytes (a hung share the watchdog
kills) and a graceful stop are never recorded: only a death inside a decode.
A start that finds the marker knows which input the last process died on and
counts it in ``decode_crashes.json``. An input that has killed the daemon
:data:`CRASH_LIMIT` times is not decoded again: it gets a failed record that
says so, and the other inputs go on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edge_runtime.fileio import atomic_write_json, read_json

MARKER_FILE = "decoding"
CRASHES_FILE = "decode_crashes.json"
#: deaths while decoding one input before it is given up (2: one restart could be a coincidence)
CRASH_LIMIT = 2
#: most inputs remembered; the oldest are forgotten first
_REMEMBERED = 1000


def input_key(name: str, size: int, mtime_ns: int, ino: int, dev: int) -> str:
    """One file's identity: the same name with other content is another input.

    A name that is not valid UTF-8 (its bytes arrive as surrogate escapes) is written
    with backslash escapes, so the key is always valid UTF-8 for the marker and JSON.
    """
    readable = os.fsencode(name).decode("utf-8", "backslashreplace")
    return f"{readable}\t{size}\t{mtime_ns}\t{ino}\t{dev}"


def key_name(key: str) -> str:
    """The file name an :func:`input_key` was made from (as written there), for messages."""
    return key.split("\t", 1)[0]


class DecodeGuard:
    """The marker and the crash counts of one outbox's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.marker = Path(state_dir) / MARKER_FILE
        self.crashes_path = Path(state_dir) / CRASHES_FILE
        self.crashes: dict[str, int] = {}

    def recover(self) -> tuple[str, int] | None:
        """At start: load the counts; if the last process died decoding an input, count it.

        Returns (input key, deaths so far) for that input, or None. Raises OSError when
        the state folder cannot be written (the caller's outbox handling retries).
        """
        try:
            data = read_json(self.crashes_path)
            self.crashes = {str(k): int(v) for k, v in dict(data).items()}
        except FileNotFoundError:
            self.crashes = {}
        except (ValueError, TypeError):
            self.crashes = {}  # a damaged count file costs at most one more crash per input
        try:
            key = self.marker.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if key:
            self.crashes[key] = self.crashes.get(key, 0) + 1
            while len(self.crashes) > _REMEMBERED:
                self.crashes.pop(next(iter(self.crashes)))
            atomic_write_json(self.crashes_path, self.crashes)
        self.marker.unlink()
        return (key, self.crashes[key]) if key else None

    def given_up(self, key: str) -> int:
        """How many times ``key`` killed the daemon, when that reached the limit; 0 otherwise."""
        deaths = self.crashes.get(key, 0)
        return deaths if deaths >= CRASH_LIMIT else 0

    def decoding(self, key: str) -> None:
        """Say which input is decoded next (overwrites the previous one)."""
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, key.encode("utf-8"))
        finally:
            os.close(fd)

    def clear(self) -> None:
        """The decode returned: no input is being decoded."""
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
