"""The sd_notify messages, on a real AF_UNIX datagram socket standing where systemd's would.

test_watch_systemd.py runs the daemon under systemd itself; this module reads every
message the daemon sends, which systemd only shows in part (READY, STATUS, a watchdog kill).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.preprocess import apply_contract, decode_bytes
from edge_runtime.systemd_notify import ServiceNotifier
from tests.edge_runtime.watch_harness import BRIGHT, Daemon, drop, png_bytes, result_count


class NotifySocket:
    """A bound datagram socket that collects messages as lists of ``KEY=value`` lines."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[list[str]] = []
        #: time.monotonic() when each message was read, beside ``messages``
        self.read_at: list[float] = []

    def read(self, timeout: float = 0.2) -> list[list[str]]:
        """Every message that arrives within ``timeout`` of the last one."""
        self.sock.settimeout(timeout)
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode().splitlines())
                self.read_at.append(time.monotonic())
            except TimeoutError:
                return self.messages

    def wait_for(self, line: str, timeout: float = 60, count: int = 1) -> list[list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            if sum(line in m for m in self.messages) >= count:
                return self.messages
        raise AssertionError(f"no {count} x {line!r} in {timeout:.0f} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outside_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = ServiceNotifier.from_environment({}, pid=123)
    assert notifier.address is None and notifier.watchdog_seconds is None
    notifier.ready("running")
    notifier.alive("running: 1 done")
    notifier.stopping("stopping")
    assert notifier.error == ""


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "180000000"}, 180.0),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "123"}, 3.0),
        # meant for the process that started us, not for us
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "0"}, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "3000000"}, None),  # nowhere to send the pings
    ],
)
def test_the_watchdog_interval_is_read_only_when_it_is_meant_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert ServiceNotifier.from_environment(environ, pid=123).watchdog_seconds == expected


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_pings_come_at_half_the_watchdog_interval_and_the_status_only_when_it_changes(
    tmp_path: Path, abstract: bool
) -> None:
    address = f"@pneumo-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    receiver = NotifySocket(address)
    ticks = Ticks()
    notifier = ServiceNotifier(address=address, watchdog_seconds=10.0, clock=ticks)
    try:
        notifier.ready("running: 0 done")
        ticks.now += 4.9
        notifier.alive("running: 0 done")  # not due, unchanged: nothing
        ticks.now += 0.1
        notifier.alive("running: 0 done")  # due at half of 10 s
        ticks.now += 1
        notifier.alive("running: 1 done")  # not due, but the status changed
        notifier.stopping("stopping after 1 done")
        assert receiver.read() == [
            ["READY=1", "STATUS=running: 0 done"],
            ["WATCHDOG=1"],
            ["STATUS=running: 1 done"],
            ["STOPPING=1", "STATUS=stopping after 1 done"],
        ]
        assert notifier.error == ""
    finally:
        notifier.close()
        receiver.close()


def test_a_socket_that_is_gone_is_reported_and_never_raises(tmp_path: Path) -> None:
    notifier = ServiceNotifier(address=str(tmp_path / "gone.sock"), watchdog_seconds=1.0)
    notifier.ready("running")
    assert notifier.error == "ENOENT"
    receiver = NotifySocket(str(tmp_path / "gone.sock"))  # systemd back: the next send gets through
    try:
        notifier.stopping("stopping")
        assert receiver.read() == [["STOPPING=1", "STATUS=stopping"]]
        assert notifier.error == ""
    finally:
        notifier.close()
        receiver.close()


def test_the_daemon_is_ready_after_its_model_loads_pings_while_idle_and_says_when_it_stops(
    tiny_bundle: Path, boxes: tuple[Path, Path], notify_socket: NotifySocket
) -> None:
    inbox, outbox = boxes
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"}
    # low-space-mib 0: on a CI disk with under 1 GiB free the status would say so, and differ
    with Daemon(tiny_bundle, inbox, outbox, env=env, config={"low-space-mib": 0}) as daemon:
        messages = notify_socket.wait_for("READY=1")
        daemon.wait_started()
        # READY comes with the model loaded and the inbox watched, after the "started" line
        assert messages[0][0] == "READY=1" and messages[0][1].startswith("STATUS=")
        notify_socket.wait_for("WATCHDOG=1", timeout=10, count=4)  # idle: every 0.5 s or so
        drop(inbox, "chest.png", png_bytes(BRIGHT))
        daemon.wait_until(lambda: result_count(outbox) == 1, 60, "one result")
        notify_socket.wait_for("STATUS=running: 1 done, 0 failed, 0 waiting in the inbox")
        assert daemon.signal(signal.SIGTERM) == 0
    messages = notify_socket.read()
    assert ["STOPPING=1", "STATUS=stopping after 1 done"] in messages
    # the last word, after the clean-up (a ping may come with it: a long stop is not a hang)
    assert messages[-1][-1] == "STATUS=stopped: 1 done, 0 failed, 0 waiting in the inbox"
    assert not any(e["event"] == "notify_failed" for e in daemon.events())


def test_an_idle_daemon_pings_the_watchdog_in_time_whatever_its_poll_and_heartbeat_intervals(
    tiny_bundle: Path, boxes: tuple[Path, Path], notify_socket: NotifySocket
) -> None:
    """poll-interval may be 600 s and heartbeat-seconds an hour: an idle loop must still wake to
    ping within WatchdogSec, or systemd kills a healthy daemon as hung."""
    inbox, outbox = boxes
    watchdog = 2.0
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(int(watchdog * 1e6))}
    slow = {"poll-interval": 30.0, "rescan-seconds": 30.0, "heartbeat-seconds": 60.0}
    with Daemon(tiny_bundle, inbox, outbox, env=env, config=slow) as daemon:
        notify_socket.wait_for("READY=1", timeout=90)
        ready = notify_socket.read_at[next(i for i, m in enumerate(notify_socket.messages) if "READY=1" in m)]
        while time.monotonic() < ready + 3 * watchdog:
            notify_socket.read(0.02)
        until = time.monotonic()
        assert daemon.signal(signal.SIGTERM) == 0
    pings = [t for t, m in zip(notify_socket.read_at, notify_socket.messages) if "WATCHDOG=1" in m]
    during = [ready, *(t for t in pings if ready < t < until), until]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < watchdog, f"longest gap {max(gaps):.2f} s between pings while idle"


def test_the_daemon_runs_on_when_systemd_cannot_be_reached_and_says_so_once(
    tiny_bundle: Path, boxes: tuple[Path, Path], tmp_path: Path
) -> None:
    inbox, outbox = boxes
    env = {"NOTIFY_SOCKET": str(tmp_path / "no-such.sock"), "WATCHDOG_USEC": "400000"}
    with Daemon(tiny_bundle, inbox, outbox, env=env) as daemon:
        daemon.wait_started()
        for n in range(3):
            drop(inbox, f"chest-{n}.png", png_bytes(BRIGHT, seed=n))
        daemon.wait_until(lambda: result_count(outbox) == 3, 60, "three results")
        time.sleep(1)  # a few more turns of the loop, each sending a ping that fails
        assert daemon.signal(signal.SIGTERM) == 0
    failures = [e for e in daemon.events() if e["event"] == "notify_failed"]
    assert len(failures) == 1 and failures[0]["errno"] == "ENOENT", failures
    assert os.listdir(inbox) == [".pneumo-inbox.lock"]


def _slow_png() -> tuple[bytes, float]:
    """A 36-megapixel 16-bit PNG (85 kB: one grey level) and the seconds one decode takes here.

    The first decode (cold caches) is left out of the estimate, and the fastest of three kept: an
    estimate made slow by a burst of load elsewhere would make the batch too short to mean anything.
    """
    data = cv2.imencode(".png", np.full((6000, 6000), 30000, np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    contract = PreprocessContract(height=32, width=32)
    apply_contract(decode_bytes(data.tobytes(), "probe.png"), contract)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        apply_contract(decode_bytes(data.tobytes(), "probe.png"), contract)
        seconds.append(time.perf_counter() - start)
    return data.tobytes(), min(seconds)


def test_a_batch_that_outlasts_the_watchdog_interval_is_not_taken_for_a_hang(
    tiny_bundle: Path, boxes: tuple[Path, Path], notify_socket: NotifySocket
) -> None:
    """The daemon calls in between the inputs of a batch, not only between batches: a batch of
    large images that takes several watchdog intervals must not get it killed as hung."""
    inbox, outbox = boxes
    data, per_image = _slow_png()
    # 3 s: a ping is due every 1.5 s and lands after the step under way (one 36-megapixel decode),
    # which on a loaded 2-core CI machine took up to 0.4 s; 2 s left too little margin there.
    watchdog = 3.0
    count = min(160, max(16, math.ceil(5 * watchdog / per_image)))  # about five intervals of decoding
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(int(watchdog * 1e6))}
    for n in range(count):  # in place before the start: the first scan finds them all, one batch
        (inbox / f"large-{n:03d}.png").write_bytes(data)
    with Daemon(tiny_bundle, inbox, outbox, env=env, config={"batch": count}) as daemon:
        notify_socket.wait_for("READY=1", timeout=90)
        dropped = notify_socket.read_at[
            next(i for i, m in enumerate(notify_socket.messages) if "READY=1" in m)
        ]
        deadline = dropped + 300
        while result_count(outbox) < count:  # reading all along: a message is timed as it arrives
            assert time.monotonic() < deadline, f"{result_count(outbox)} of {count} results in 300 s"
            notify_socket.read(0.02)
        finished = time.monotonic()
        notify_socket.read(0.5)
        assert daemon.signal(signal.SIGTERM) == 0
    stopped = next(e for e in daemon.events() if e["event"] == "stopped")
    assert stopped["counters"]["batches"] == 1, (
        "the inputs must form one batch for this test to mean anything"
    )
    took = finished - dropped
    assert took > 2 * watchdog, f"the batch took {took:.1f} s: too short to outlast the watchdog"
    pings = [t for t, m in zip(notify_socket.read_at, notify_socket.messages) if "WATCHDOG=1" in m]
    # systemd's timer runs from READY; the batch's last result closes the span
    during = [dropped, *(t for t in pings if dropped < t < finished), finished]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # one batch of `took` seconds; systemd kills when a gap reaches the interval
    assert max(gaps) < watchdog, f"longest gap {max(gaps, default=0):.2f} s in a {took:.1f} s batch"
    assert not any(e["event"] == "notify_failed" for e in daemon.events())
