"""The daemon's parts in-process: settings, log repair, unique names, discovery window, reading races.

The subprocess tests (test_watch*.py) show the behaviour end to end; these
pin down the pieces whose edge cases cannot be timed from outside, such as
a file vanishing in the instant between discovery and reading.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.inbox import Candidate, InboxUnavailableError, InboxWatcher, read_input
from edge_runtime.journal import Claim, Journal, OutboxBusyError, OutboxLock
from edge_runtime.outbox import Failpoint, Outbox, OutboxReplacedError, fit_name
from edge_runtime.results import CSV_COLUMNS, AppendLog
from edge_runtime.watch import Backoff, WatchDaemon, json_logger
from edge_runtime.watch_config import WatchConfig, WatchConfigError, load_config_file, resolve_config
from tests.edge_runtime.watch_harness import png_bytes

CONTRACT = PreprocessContract(height=32, width=32)


def _record(i: int) -> dict:
    return {
        "id": f"{i:032x}",
        "original_name": f"n{i}\nwith newline.png",
        "status": "done",
        "probability": 0.5,
    }


# -- settings ---------------------------------------------------------------
def test_config_bounds_and_precedence(tmp_path: Path) -> None:
    config = tmp_path / "w.json"
    config.write_text(
        json.dumps({"bundle": "b", "inbox": "in", "outbox": "out", "batch": 4, "poll-interval": 0.5})
    )
    resolved = resolve_config(load_config_file(config), {"batch": 8, "quiet_seconds": None})
    assert resolved.batch == 8 and resolved.poll_interval == 0.5 and resolved.quiet_seconds == 2.0
    assert (
        resolved.inbox == tmp_path / "in" and resolved.heartbeat_path == tmp_path / "out" / "heartbeat.json"
    )
    with pytest.raises(WatchConfigError, match="batch"):
        WatchConfig(Path("b"), Path("i"), Path("o"), batch=0)
    with pytest.raises(WatchConfigError, match="max_pending"):
        WatchConfig(Path("b"), Path("i"), Path("o"), batch=64, max_pending=8)
    with pytest.raises(WatchConfigError, match="inside"):
        WatchConfig(Path("b"), Path("x"), Path("x/y"))
    with pytest.raises(WatchConfigError, match="quiet_seconds"):
        WatchConfig(Path("b"), Path("i"), Path("o"), quiet_seconds=float("nan"))
    (tmp_path / "bad.toml").write_text("[watch]\nbatch = \n")
    with pytest.raises(WatchConfigError, match="not valid TOML"):
        load_config_file(tmp_path / "bad.toml")


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


# -- append-only logs -------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_repair_cuts_a_torn_line_and_reports_present_ids(tmp_path: Path, fmt: str) -> None:
    log = AppendLog(tmp_path / f"results.{fmt}", fmt)
    log.append([_record(1), _record(2)])
    offset = log.size()
    data = log.encode([_record(3), _record(4)])
    log.write_bytes(data[: len(data) - 7])  # the batch was cut mid-line by a power loss
    assert log.repair_tail(offset) == {f"{3:032x}"}
    log.append([_record(4)])
    text = log.path.read_text()
    assert text.endswith("\n") and text.count("\n") == (4 if fmt == "jsonl" else 5)
    if fmt == "csv":
        assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
        assert "n1?with newline.png" in text  # one line per record, always


def test_repair_keeps_good_lines_after_garbage(tmp_path: Path) -> None:
    log = AppendLog(tmp_path / "results.jsonl", "jsonl")
    log.append([_record(1)])
    offset = log.size()
    log.write_bytes(b"\x00\x00\x00\x00\n" + log.encode([_record(2)]))  # zeros where a lost block was
    assert log.repair_tail(offset) == {f"{2:032x}"}
    assert [json.loads(line)["id"] for line in log.path.read_text().splitlines()] == [
        f"{1:032x}",
        f"{2:032x}",
    ]
    assert log.repair_tail(0) == {f"{1:032x}", f"{2:032x}"}  # a rotated (shorter) file is read whole


# -- outbox names, journal, lock --------------------------------------------
def test_unique_names_never_collide_with_inputs_or_jsons(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out", tmp_path / "in")
    outbox.ensure_layout()
    (outbox.done / "a.png").write_bytes(b"x")
    (outbox.done / "b.png.json").write_text("{}")
    reserved: set[str] = set()
    assert outbox.unique_name(outbox.done, "a.png", "done", reserved, "t") == "a (2).png"
    assert outbox.unique_name(outbox.done, "b.png", "done", reserved, "t") == "b (2).png"
    target, result = outbox.plan("c.png", "file", "done", reserved, "t")
    assert target.endswith("done/c.png") and result.endswith("done/c.png.json")
    assert outbox.plan("c.png", "file", "done", reserved, "t")[0].endswith("done/c (2).png")
    assert outbox.plan("gone.png", "missing", "failed", reserved, "t") == (
        "",
        str(outbox.failed / "gone.png.error.json"),
    )


def test_names_are_shortened_to_fit_with_their_json(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out", tmp_path / "in")
    outbox.ensure_layout()
    assert fit_name("short", ".png", "", "done", "abcd1234", 255) == "short.png"
    # multi-byte characters are cut whole: the result is valid UTF-8 and fits with ".error.json"
    name = fit_name("é" * 200, ".jpeg", " (2)", "failed", "abcd1234", 255)
    assert name.endswith("~abcd1234 (2).jpeg") and len(os.fsencode(name + ".error.json")) <= 255
    name.encode("utf-8")
    long = "y" * 247 + ".png"
    reserved: set[str] = set()
    target, result = outbox.plan(long, "file", "done", reserved, "t0t0t0t0")
    assert Path(target).name == "y" * 237 + "~t0t0t0t0.png" and len(Path(result).name) == 255
    second, _ = outbox.plan(long, "file", "done", reserved, "t1t1t1t1")
    assert Path(second).name == "y" * 237 + "~t1t1t1t1.png"  # each cut name carries its own id
    # an extension of absurd length is part of the name, not something to keep
    odd = "a." + "b" * 250
    assert len(os.fsencode(Path(outbox.plan(odd, "file", "done", reserved, "t2")[1]).name)) <= 255


def test_outbox_root_is_never_recreated_and_a_remount_is_recognised(tmp_path: Path) -> None:
    root = tmp_path / "out"
    outbox = Outbox(root, tmp_path / "in")
    outbox.ensure_layout()
    assert outbox.root_is_current()
    os.rename(root, tmp_path / "away")
    with pytest.raises(FileNotFoundError):
        outbox.ensure_layout()
    assert not root.exists()
    root.mkdir()  # an empty folder where the outbox was: not it
    with pytest.raises(OutboxReplacedError):
        outbox.ensure_layout()
    assert os.listdir(root) == []
    root.rmdir()
    # the same outbox back under another inode (a disk remounted): adopted by its id
    shutil.copytree(tmp_path / "away", root)
    outbox.ensure_layout()
    assert outbox.root_is_current()
    # a first start creates the root, never its parents
    with pytest.raises(FileNotFoundError):
        Outbox(tmp_path / "no" / "such" / "out", tmp_path / "in").ensure_layout()
    assert not (tmp_path / "no").exists()


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = resolve_config({}, {"bundle": Path("b"), "inbox": Path("in"), "outbox": Path("out")})
    assert (config.bundle, config.inbox, config.outbox) == (tmp_path / "b", tmp_path / "in", tmp_path / "out")
    assert config.to_dict()["heartbeat"] == str(tmp_path / "out" / "heartbeat.json")


def test_corrupt_journal_is_set_aside_and_named(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.write(Claim(batch_id="b", jsonl_offset=0, csv_offset=0))
    assert journal.read() is not None
    journal.path.write_text("{not json")
    with pytest.raises(ValueError, match="kept as"):
        journal.read()
    assert journal.read() is None and list(tmp_path.glob("journal.corrupt-*.json"))


def test_outbox_lock_is_exclusive(tmp_path: Path) -> None:
    first, second = OutboxLock(tmp_path), OutboxLock(tmp_path)
    first.acquire()
    with pytest.raises(OutboxBusyError, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_failpoint_counts_to_the_nth_time() -> None:
    point = Failpoint("after-move:3")
    assert [point.wants("after-move") for _ in range(3)] == [False, False, True]
    assert not Failpoint("").wants("after-move")
    with pytest.raises(ValueError):
        Failpoint("after-move:0")


# -- discovery --------------------------------------------------------------
def _watcher(inbox: Path, clock: list[float], **kw: object) -> InboxWatcher:
    settings: dict = {
        "quiet_seconds": 2.0,
        "max_pending": 4,
        "poll_interval": 1.0,
        "rescan_seconds": 5.0,
        "ignore": (".*", "*.part"),
        "use_watchdog": False,
    }
    settings.update(kw)
    return InboxWatcher(inbox, clock=lambda: clock[0], **settings)


def test_window_is_bounded_oldest_first_and_waits_for_quiet(tmp_path: Path) -> None:
    for i in range(10):
        path = tmp_path / f"f{i}.png"
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (tmp_path / "skip.png.part").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    clock = [100.0]
    watcher = _watcher(tmp_path, clock)
    assert watcher.poll(limit=10) == []  # seen, not yet quiet
    assert sorted(watcher.pending) == ["f0.png", "f1.png", "f2.png", "f3.png"]
    assert watcher.backlog == 10
    (tmp_path / "f1.png").write_bytes(b"xy")  # still being written
    clock[0] += 2.5
    ready = watcher.poll(limit=10)
    assert [c.name for c in ready] == ["f0.png", "f2.png", "f3.png"]
    for cand in ready:
        watcher.done(cand.name)
    clock[0] += 2.5
    assert [c.name for c in watcher.poll(limit=10)] == ["f1.png"]
    assert len(watcher.pending) <= 4


def test_backlog_is_still_reported_while_the_window_is_dropped(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}.png").write_bytes(b"x")
    watcher = _watcher(tmp_path, [100.0])
    watcher.poll(limit=10)
    assert watcher.backlog == 10
    watcher.forget_all()  # an outbox outage: no scans until it is back
    assert watcher.pending == {} and watcher.backlog == 10, "the heartbeat must not say 0 waiting"
    (tmp_path / "f0.png").unlink()
    watcher.poll(limit=10)  # the next scan counts again
    assert watcher.backlog == 9


def test_a_claim_is_not_decided_while_its_inbox_is_missing_or_another_disk(tmp_path: Path) -> None:
    from edge_runtime.journal import JournalEntry
    from edge_runtime.outbox import InboxGoneError

    inbox = tmp_path / "in"
    inbox.mkdir()
    outbox = Outbox(tmp_path / "out", inbox)
    outbox.ensure_layout()
    st = os.stat(inbox)
    entry = JournalEntry(
        id="a" * 32, name="x.png", kind="file", status="done", source=str(inbox / "x.png"),
        target=str(outbox.done / "x.png"), result_path=str(outbox.done / "x.png.json"), record={},
        ino=1, dev=st.st_dev + 1,
    )  # fmt: skip
    with pytest.raises(InboxGoneError, match="another filesystem"):  # an empty mount point
        outbox._move(entry, lambda *_: None)
    shutil.rmtree(inbox)
    with pytest.raises(InboxGoneError, match="inbox is missing"):
        outbox._move(entry, lambda *_: None)
    # waited long enough: decided as before, "nothing moved"
    assert outbox._move(entry, lambda *_: None, require_inbox=False) == set()
    assert entry.record["moved_to"] is None


def test_created_file_waits_for_close_write_up_to_the_settle_time(tmp_path: Path) -> None:
    clock = [100.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.5, settle_seconds=10.0)
    (tmp_path / "open.png").write_bytes(b"half")
    watcher._hints.queue.put(("open.png", "created"))  # what inotify reports for a new file
    assert watcher.poll(limit=4) == []
    clock[0] += 5.0  # far past the quiet period: still open for writing
    assert watcher.poll(limit=4) == []
    watcher._hints.queue.put(("open.png", "closed"))
    assert [c.name for c in watcher.poll(limit=4)] == ["open.png"]
    # without a close, the settle time is the upper limit
    (tmp_path / "never closed.png").write_bytes(b"x")
    watcher._hints.queue.put(("never closed.png", "created"))
    assert watcher.poll(limit=4) == []
    clock[0] += 10.5
    assert [c.name for c in watcher.poll(limit=4)] == ["never closed.png"]


def test_daemons_own_names_are_never_inputs(tmp_path: Path) -> None:
    clock = [0.0]
    watcher = _watcher(tmp_path, clock, quiet_seconds=0.0, ignore=())
    for name in (".pneumo-inbox.lock", ".pneumo-probe-x", "image.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [c.name for c in watcher.poll(limit=8)] == ["image.png"]


def test_missing_inbox_raises(tmp_path: Path) -> None:
    watcher = _watcher(tmp_path / "absent", [0.0])
    with pytest.raises(InboxUnavailableError, match="missing"):
        watcher.poll(limit=4)


# -- reading races ----------------------------------------------------------
def _candidate(path: Path) -> Candidate:
    st = os.lstat(path)
    return Candidate(path.name, "file", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, 0.0, hinted=True)


def test_file_changed_after_discovery_is_not_read_as_complete(tmp_path: Path) -> None:
    path = tmp_path / "growing.png"
    path.write_bytes(png_bytes(200)[:50])
    cand = _candidate(path)
    path.write_bytes(png_bytes(200))
    assert read_input(tmp_path, cand, CONTRACT).outcome == "changed"


def test_file_vanished_between_discovery_and_reading(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    path.write_bytes(png_bytes(200))
    cand = _candidate(path)
    path.unlink()
    read = read_input(tmp_path, cand, CONTRACT)
    assert read.outcome == "rejected" and read.kind == "missing" and "vanished" in read.reason
    path.write_bytes(png_bytes(200))
    os.rename(tmp_path, tmp_path.with_name("moved away"))
    with pytest.raises(InboxUnavailableError):
        read_input(tmp_path, cand, CONTRACT)


def test_daemon_records_a_vanished_file_once(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    config = WatchConfig(tiny_bundle, inbox, outbox, quiet_seconds=0.0, watchdog=False)
    stream = io.StringIO()
    daemon = WatchDaemon(config, json_logger("info", stream), install_signals=False)
    assert daemon.open_model() is not None and daemon.prepare_outbox()
    (inbox / "kept.png").write_bytes(png_bytes(200, seed=1))
    (inbox / "vanishing.png").write_bytes(png_bytes(40, seed=2))
    batch = daemon.inbox.poll(limit=8)
    assert sorted(c.name for c in batch) == ["kept.png", "vanishing.png"]
    os.unlink(inbox / "vanishing.png")  # deleted after discovery, before reading
    assert daemon.process_batch(batch) == "done"
    records = {
        r["original_name"]: r for r in map(json.loads, (outbox / "results.jsonl").read_text().splitlines())
    }
    assert records["kept.png"]["label"] == "PNEUMONIA" and records["kept.png"]["moved_to"] == "done/kept.png"
    gone = records["vanishing.png"]
    assert gone["status"] == "failed" and gone["moved_to"] is None and "vanished" in gone["reason"]
    assert json.loads((outbox / "failed" / "vanishing.png.error.json").read_text()) == gone
    assert daemon.inbox.poll(limit=8) == [] and daemon.counters["failed"] == 1
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["result", "failed_input"]
    logging.getLogger("pneumo.watch").handlers.clear()
    assert np.isfinite(records["kept.png"]["probability"])


def test_stale_temp_files_of_a_crash_are_removed_and_nothing_else(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out", tmp_path / "in")
    outbox.ensure_layout()
    stale = [
        outbox.done / ".pneumo-result-abc.tmp",
        outbox.done / ".pneumo-copy-0123.tmp",
        outbox.root / ".pneumo-result-hb.tmp",
        outbox.state_dir / ".journal.json.x1y2.tmp",
    ]
    kept = [outbox.done / "x.png", outbox.done / ".operator-note.tmp", outbox.failed / "y.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert outbox.remove_stale_temp_files() == len(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
