"""SIGTERM that stops a benchmark the way Ctrl-C does, and does so every time.

``timeout``, systemd and ``docker stop`` send SIGTERM. Python's default ends the process on
the spot, leaving /tmp/pneumo-bench-*/ scratch folders and daemon children behind; a
``KeyboardInterrupt`` instead runs every ``finally`` and ``with`` on the way out.

Raising it from a signal handler lands on whatever bytecode runs next, and two places are
not safe for that (both seen in CI and reproduced under load):

* inside an import (numpy imports ``numpy.random`` lazily, on first use): importlib's
  module lock breaks (``KeyError`` instead of a clean exit), or a Cython module's init
  swallows the exception and the benchmark goes on for its whole ``--duration``;
* inside ``tempfile``: between ``mkdtemp`` and the ``with`` that would remove the folder.

So the handler holds the interrupt back there (and while a ``KeyboardInterrupt`` is already
unwinding, whose clean-up it must not cut short), and a watcher thread sends the signal to
the main thread again every ``retry_s`` until the run has ended: a held-back or swallowed
interrupt lands at the next safe point.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType

RETRY_S = 0.25

#: code whose frames must not be interrupted (see the module docstring)
_UNSAFE_FILES = (tempfile.__file__,)
_UNSAFE_PREFIXES = ("<frozen importlib",)


def unsafe_to_interrupt(frame: FrameType | None) -> bool:
    """True if ``frame`` or a caller runs import machinery or ``tempfile``."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name in _UNSAFE_FILES or name.startswith(_UNSAFE_PREFIXES):
            return True
        frame = frame.f_back
    return False


def interrupt_unwinding(error: BaseException | None) -> bool:
    """True if ``error`` (the exception being handled) is, or was raised while handling, a KeyboardInterrupt."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


@dataclass
class _Run:
    """What the handler and the resend thread share; plain attributes, as a handler must not take locks."""

    main_id: int
    pid: int
    wake_fd: int
    finished: threading.Event = field(default_factory=threading.Event)
    requested: bool = False
    woken: bool = False
    done: bool = False

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe has woken the thread already
            os.write(self.wake_fd, b"\0")


@contextlib.contextmanager
def sigterm_as_interrupt(retry_s: float = RETRY_S) -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C while the ``with`` body runs (main thread only).

    A SIGTERM that could not land in the body (held back until its last moment, or arriving
    as it ends) is raised once the body has ended normally: it is never dropped. Elsewhere
    nothing changes: only the main thread may set signal handlers.
    """
    main = threading.main_thread()
    if threading.current_thread() is not main or main.ident is None:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    run = _Run(main_id=main.ident, pid=os.getpid(), wake_fd=write_fd)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != run.pid:
            # A child forked in the body shares the pipe: it must not wake this process's resender.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        run.requested = True
        if not run.woken:
            run.woken = True
            run.wake()
        if run.done or unsafe_to_interrupt(frame) or interrupt_unwinding(sys.exc_info()[1]):
            return  # the resend thread asks again in retry_s, or the end of the body raises it
        raise KeyboardInterrupt(f"signal {signum}")

    # What to put back, read before anything changes: a signal may land right after each change
    # (a pending one the moment SIGTERM is unblocked), and the clean-up below must undo it.
    previous = signal.getsignal(signal.SIGTERM)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    resender = threading.Thread(
        target=_resend_until_done, args=(run, read_fd, retry_s), name="sigterm-resend", daemon=True
    )
    body_raised = True
    try:
        resender.start()
        signal.signal(signal.SIGTERM, interrupt)
        # A parent that started us with SIGTERM blocked (its mask is inherited across exec) would keep
        # the signal pending forever, handler or not: seen under pytest after other tests had run.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        yield
        body_raised = False
    finally:
        try:
            run.done = True
        finally:
            # Reached with run.done set, or with a KeyboardInterrupt unwinding: either way the
            # handler no longer raises, so this clean-up is not cut short.
            run.done = True
            run.finished.set()
            run.wake()
            if resender.ident is not None:
                resender.join()  # no resend may arrive after the handler below is put back
            os.close(read_fd)
            os.close(write_fd)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            # None: a handler set outside Python, which cannot be put back; the default is the closest.
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if run.requested and not body_raised:
        raise KeyboardInterrupt(f"signal {signal.SIGTERM.value}")


def _resend_until_done(run: _Run, read_fd: int, retry_s: float) -> None:
    os.read(read_fd, 1)  # blocks until the first SIGTERM or the end of the body: no polling meanwhile
    while not run.finished.wait(retry_s):
        # A real signal, not _thread.interrupt_main(): it also wakes a main thread blocked in a read.
        signal.pthread_kill(run.main_id, signal.SIGTERM)
