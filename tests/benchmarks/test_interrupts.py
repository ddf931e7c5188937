"""SIGTERM unwinds a benchmark like Ctrl-C, also where a first KeyboardInterrupt would be lost.

These send real SIGTERMs to this (main) thread; the end-to-end check with a real ``pneumo bench``
process is tests/benchmarks/test_cli.py::test_sigterm_cleans_up_like_ctrl_c.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from benchmarks.interrupts import interrupt_unwinding, sigterm_as_interrupt, unsafe_to_interrupt

WAIT_S = 30.0  # a bound on waiting for a signal to land, not a timing


def _compiled_as(filename: str, source: str) -> dict[str, Any]:
    """Functions whose frames report ``filename``: stand-ins for tempfile's and importlib's code."""
    namespace: dict[str, Any] = {"sys": sys, "time": time, "os": os, "signal": signal}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _wait_for_interrupt(step: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        step()
        time.sleep(0.01)
    pytest.fail(f"no KeyboardInterrupt within {WAIT_S:.0f} s of SIGTERM")


def test_frames_of_tempfile_and_importlib_are_unsafe() -> None:
    here = sys._getframe()
    assert not unsafe_to_interrupt(here)
    assert not unsafe_to_interrupt(None)
    for filename in (
        tempfile.__file__,
        "<frozen importlib._bootstrap>",
        "<frozen importlib._bootstrap_external>",
    ):
        inner = _compiled_as(filename, "def frame():\n    return sys._getframe()\n")["frame"]()
        assert unsafe_to_interrupt(inner), filename
        # and a frame called from there (numpy's module code run by an import) is unsafe too
        outer = _compiled_as(filename, "def call(f):\n    return f()\n")["call"]
        assert unsafe_to_interrupt(outer(sys._getframe)), filename


def test_an_unwinding_interrupt_is_recognised_through_its_chain() -> None:
    assert not interrupt_unwinding(None)
    assert not interrupt_unwinding(OSError("disk"))
    assert interrupt_unwinding(KeyboardInterrupt())
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OSError("clean-up failed") from None  # `from None` hides it, __context__ keeps it
    except OSError as exc:
        assert interrupt_unwinding(exc)
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped
    assert not interrupt_unwinding(looped)  # a cycle ends the walk


def test_sigterm_raises_keyboard_interrupt_and_the_handler_is_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="signal 15"), sigterm_as_interrupt(retry_s=0.05):
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_interrupt()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_swallowed_interrupt_is_sent_again() -> None:
    """What a Cython module's init did to the first KeyboardInterrupt in CI: caught and dropped."""
    swallowed = 0
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(retry_s=0.05):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_interrupt()
        except KeyboardInterrupt:
            swallowed += 1
        _wait_for_interrupt()
    assert swallowed == 1


@pytest.mark.parametrize(
    "filename", [tempfile.__file__, "<frozen importlib._bootstrap>"], ids=["tempfile", "import"]
)
def test_no_interrupt_inside_tempfile_or_an_import_it_lands_after(filename: str) -> None:
    source = (
        "def busy(seconds):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
        "    return 'finished'\n"
    )
    busy = _compiled_as(filename, source)["busy"]
    outcome: list[str] = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(retry_s=0.05):
        outcome.append(busy(0.5))  # ten resends while it runs, none may land in it
        _wait_for_interrupt()
    assert outcome == ["finished"]


def test_clean_up_after_the_interrupt_is_not_cut_short() -> None:
    cleaned: list[bool] = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(retry_s=0.02):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_interrupt()
        finally:
            end = time.monotonic() + 0.3  # about 15 resends arrive during this clean-up
            while time.monotonic() < end:
                time.sleep(0.01)
            cleaned.append(True)
    assert cleaned == [True]


def test_a_body_that_ends_normally_leaves_nothing_running() -> None:
    import threading

    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt(retry_s=0.05):
        assert any(t.name == "sigterm-resend" for t in threading.enumerate())
    assert not any(t.name == "sigterm-resend" for t in threading.enumerate())
    assert signal.getsignal(signal.SIGTERM) == before


def test_other_threads_change_nothing() -> None:
    import threading

    seen: list[Callable[[int, FrameType | None], Any] | int | None] = []

    def body() -> None:
        with sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [before]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_sigterm_pending_at_entry_unwinds_with_everything_put_back() -> None:
    """Inherited blocked and already pending, it lands the moment the handler unblocks it: still clean."""
    import threading

    before, fds = signal.getsignal(signal.SIGTERM), _open_fds()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        # To this thread: a process-wide SIGTERM would go to a thread that does not block it (numpy's).
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        ran: list[bool] = []
        with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(retry_s=0.05):
            _wait_for_interrupt()
            ran.append(True)
        assert signal.getsignal(signal.SIGTERM) == before
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set()), "the mask is put back"
        assert not any(t.name == "sigterm-resend" for t in threading.enumerate())
        assert _open_fds() <= fds | {str(fd) for fd in range(3)}, "the wake pipe is closed"
        assert ran == []
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def test_a_sigterm_held_back_until_the_body_ends_is_raised_after_it() -> None:
    """Never dropped: a body that finishes inside tempfile's code after a SIGTERM still ends in Ctrl-C."""
    source = (
        "def last_step():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    end = time.monotonic() + 0.2\n"
        "    while time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
    )
    last_step = _compiled_as(tempfile.__file__, source)["last_step"]
    finished: list[bool] = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(retry_s=60.0):  # no resend in time
        last_step()
        finished.append(True)
    assert finished == [True]


def test_a_forked_child_s_sigterm_ends_the_child_and_leaves_the_parent_running() -> None:
    with sigterm_as_interrupt(retry_s=0.05):
        pid = os.fork()
        if pid == 0:  # the child: its SIGTERM must act as the default, not wake the parent's resender
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(3)  # reached only if the SIGTERM did not end it
        _, status = os.waitpid(pid, 0)
        end = time.monotonic() + 0.5  # ten resend periods: an interrupt would land here
        while time.monotonic() < end:
            time.sleep(0.01)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
