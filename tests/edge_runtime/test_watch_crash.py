"""kill -9 at any moment, restart: every image ends with exactly one result, none lost, none duplicated.

Two kinds of crash: SIGKILL from outside at moments picked by how many
results exist (so it lands wherever the daemon happens to be), and the
daemon's own failpoints (``PNEUMO_WATCH_FAILPOINT``), which SIGKILL it
between two precise durable steps of a batch, including halfway through
writing results.jsonl or results.csv.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.edge_runtime.watch_harness import (
    Daemon,
    assert_exactly_once,
    inbox_files,
    png_bytes,
    result_count,
)


def _fill(inbox: Path, count: int) -> dict[str, bytes]:
    inputs = {}
    for i in range(count):
        name = f"xray {i:04d}.png"
        inputs[name] = png_bytes(200 if i % 3 else 30, seed=i)
        (inbox / name).write_bytes(inputs[name])
    # a few bad ones take the failed/ path through the same crashes
    for name, data in (("bad 1.jpg", b"text, not an image"), ("bad 2.png", b"")):
        inputs[name] = data
        (inbox / name).write_bytes(data)
    return inputs


def _finish(daemon: Daemon, outbox: Path, inbox: Path, total: int) -> None:
    daemon.wait_until(
        lambda: result_count(outbox) >= total and not inbox_files(inbox), 180, f"{total} results"
    )
    assert daemon.signal(signal.SIGTERM) == 0


def _crash(bundle: Path, inbox: Path, outbox: Path, failpoint: str, log_name: str, *args: str) -> None:
    """Run the daemon until its failpoint SIGKILLs it."""
    fast = {"quiet-seconds": 0.0}
    env = {"PNEUMO_WATCH_FAILPOINT": failpoint}
    crashing = Daemon(bundle, inbox, outbox, *args, config=fast, env=env, log_name=log_name).start()
    assert crashing.proc is not None and crashing.proc.wait(timeout=120) == -signal.SIGKILL, crashing.tail()


@pytest.mark.parametrize("kill_points", [(1, 90), (40, 41), (150, 250)])
def test_sigkill_twice_mid_flow_then_restart(
    tiny_bundle: Path, tmp_path: Path, kill_points: tuple[int, int]
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = _fill(inbox, 300)
    args = ("--batch", "4")
    fast = {"quiet-seconds": 0.0}
    for round_, kill_after in enumerate(kill_points):
        daemon = Daemon(tiny_bundle, inbox, outbox, *args, config=fast, log_name=f"run{round_}").start()
        daemon.wait_until(lambda k=kill_after: result_count(outbox) >= k, 180, f"{kill_after} results")
        daemon.kill()
        assert daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL
    with Daemon(tiny_bundle, inbox, outbox, *args, config=fast, log_name="final").start() as daemon:
        _finish(daemon, outbox, inbox, len(inputs))
    assert_exactly_once(outbox, inputs, failed={"bad 1.jpg", "bad 2.png"})


STEPS = [
    "after-claim",
    "after-rename",
    "after-move",
    "after-result-json",
    "torn-jsonl",
    "after-jsonl",
    "torn-csv",
    "after-csv",
]


@pytest.mark.parametrize("step", STEPS)
def test_crash_between_durable_steps_is_finished_on_restart(
    tiny_bundle: Path, tmp_path: Path, step: str
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = _fill(inbox, 22)
    args = ("--batch", "4")
    fast = {"quiet-seconds": 0.0}
    _crash(tiny_bundle, inbox, outbox, f"{step}:3", "crash", *args)
    assert (outbox / ".pneumo" / "journal.json").exists(), "the crash left no claim to finish"
    if step.startswith("torn-"):
        log = outbox / ("results.jsonl" if step == "torn-jsonl" else "results.csv")
        assert not log.read_bytes().endswith(b"\n"), "the failpoint did not leave a torn line"
    with Daemon(tiny_bundle, inbox, outbox, *args, config=fast, log_name="restart").start() as daemon:
        daemon.wait_event("recovered_batch")
        _finish(daemon, outbox, inbox, len(inputs))
    assert_exactly_once(outbox, inputs, failed={"bad 1.jpg", "bad 2.png"})


def test_a_claim_waits_for_its_missing_inbox_instead_of_recording_nothing_moved(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A share not mounted yet at boot: the interrupted batch waits, then ends with one result per image."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = _fill(inbox, 10)
    args = ("--batch", "4")
    fast = {"quiet-seconds": 0.0}
    _crash(tiny_bundle, inbox, outbox, "after-claim:2", "crash", *args)
    before = result_count(outbox)
    away = tmp_path / "share-not-mounted"
    inbox.rename(away)
    with Daemon(tiny_bundle, inbox, outbox, *args, config=fast, log_name="restart").start() as daemon:
        daemon.wait_event("inbox_unavailable", count=2)
        assert result_count(outbox) == before, "a claim was finished without its inbox"
        assert not any(e.get("event") == "recovered_batch" for e in daemon.events())
        away.rename(inbox)
        daemon.wait_event("recovered_batch")
        _finish(daemon, outbox, inbox, len(inputs))
    assert_exactly_once(outbox, inputs, failed={"bad 1.jpg", "bad 2.png"})


def test_an_input_that_kills_the_daemon_while_decoding_fails_alone(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = _fill(inbox, 6)
    poison = "xray 0000.png"
    os.utime(inbox / poison, (1_000_000, 1_000_000))  # the oldest: read first after every restart
    fast = {"quiet-seconds": 0.0}
    for round_ in range(2):  # dies on it twice, as under the OOM killer
        _crash(tiny_bundle, inbox, outbox, "decoding", f"dies{round_}")
        assert result_count(outbox) == 0
    with Daemon(tiny_bundle, inbox, outbox, config=fast, log_name="final").start() as daemon:
        _finish(daemon, outbox, inbox, len(inputs))
        crash = [e for e in daemon.events() if e.get("event") == "decode_crash"]
        assert crash and crash[0]["name"] == poison and crash[0]["deaths"] == 2
    records = assert_exactly_once(outbox, inputs, failed={poison, "bad 1.jpg", "bad 2.png"})
    assert "died 2 times while decoding this file" in records[poison]["reason"]


@pytest.mark.parametrize(
    ("failpoint", "status"),
    [("reading:1:SIGTERM", 0), ("decoding:1:SIGTERM", 0), ("reading", -signal.SIGKILL)],
    ids=["sigterm-reading", "sigterm-decoding", "killed-reading"],
)
def test_a_stop_or_a_kill_outside_a_decode_is_not_counted_against_the_input(
    tiny_bundle: Path, tmp_path: Path, failpoint: str, status: int
) -> None:
    """Two 'systemctl restart's while the same X-ray is read (SIGTERM in its read, or in its decode,
    which runs to its end first), or the watchdog killing a hung share read twice: no decoder died,
    so the image gets its normal result, not "the daemon died 2 times while decoding this file"."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = _fill(inbox, 3)
    first = "xray 0000.png"
    os.utime(inbox / first, (1_000_000, 1_000_000))  # the oldest: read first after every restart
    fast = {"quiet-seconds": 0.0}
    for round_ in range(2):
        env = {"PNEUMO_WATCH_FAILPOINT": failpoint}
        stopped = Daemon(tiny_bundle, inbox, outbox, config=fast, env=env, log_name=f"stop{round_}").start()
        assert stopped.proc is not None and stopped.proc.wait(timeout=120) == status, stopped.tail()
        assert result_count(outbox) == 0, "the batch being read was finished instead of put back"
        assert not (outbox / ".pneumo" / "decoding").exists(), "a decode record outlived its decode"
    with Daemon(tiny_bundle, inbox, outbox, config=fast, log_name="final").start() as daemon:
        _finish(daemon, outbox, inbox, len(inputs))
        crashes = [e for e in daemon.events() if e.get("event") == "decode_crash"]
    assert not crashes, crashes
    records = assert_exactly_once(outbox, inputs, failed={"bad 1.jpg", "bad 2.png"})
    assert records[first]["status"] == "done" and records[first]["label"] == "NORMAL"


def test_sighup_is_logged_and_ignored(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("hangup_ignored")
        inputs = _fill(inbox, 3)
        _finish(daemon, outbox, inbox, len(inputs))
    assert_exactly_once(outbox, inputs, failed={"bad 1.jpg", "bad 2.png"})
