"""The daemon's parts in-process: settings, log lines, retries, log repair, journal, a reading race.

The subprocess tests (test_watch*.py) show the behaviour end to end; these
pin down the pieces whose edge cases cannot be timed from outside, such as
a file vanishing in the instant between discovery and reading. The inbox and
the outbox have their own files (test_inbox.py, test_outbox.py).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.base import source_onnx_sha256
from edge_runtime.backends.select import create_backend
from edge_runtime.backends.tensorrt import TensorRTBackend
from edge_runtime.bundle import Bundle, write_manifest
from edge_runtime.edge_build import EdgeBuildConfig, run_edge_build
from edge_runtime.inbox import InboxWatcher
from edge_runtime.journal import Claim, Journal, OutboxBusyError, OutboxLock
from edge_runtime.outbox import Outbox
from edge_runtime.results import CSV_COLUMNS, AppendLog, ModelStamp
from edge_runtime.watch import WatchDaemon
from edge_runtime.watch_cli import FAILPOINT_ENV
from edge_runtime.watch_cli import main as watch_main
from edge_runtime.watch_config import WatchConfig, WatchConfigError, load_config_file, resolve_config
from edge_runtime.watch_log import EventLog, describe_os_error, json_logger
from edge_runtime.watch_retries import Backoff, InputRetries
from edge_runtime.watch_space import OutboxSpace
from tests.edge_runtime import trt_double
from tests.edge_runtime.bundle_kit import complete_bundle
from tests.edge_runtime.watch_harness import mount, png_bytes, umount


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
    with pytest.raises(WatchConfigError, match="inbox_mount = 'yes': expected true or false"):
        WatchConfig(Path("b"), Path("i"), Path("o"), inbox_mount="yes")  # type: ignore[arg-type]
    (tmp_path / "share.toml").write_text(
        '[watch]\nbundle = "b"\ninbox = "in"\noutbox = "out"\ninbox-mount = true\n'
    )
    assert resolve_config(load_config_file(tmp_path / "share.toml"), {}).inbox_mount is True
    (tmp_path / "bad.toml").write_text("[watch]\nbatch = \n")
    with pytest.raises(WatchConfigError, match="not valid TOML"):
        load_config_file(tmp_path / "bad.toml")


def test_a_misspelt_backend_is_bad_settings_not_a_restart_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(WatchConfigError, match="backend 'ort_cpu': expected auto or one of trt, ort-trt"):
        WatchConfig(Path("b"), Path("i"), Path("o"), backend="ort_cpu")
    (tmp_path / "w.toml").write_text(
        '[watch]\nbundle = "b"\ninbox = "in"\noutbox = "out"\nbackend = "bogus"\n'
    )
    assert watch_main(["--config", str(tmp_path / "w.toml"), "--print-config"]) == 2  # exit 2: not restarted
    assert "backend 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as flag:  # the flag is checked by argparse, also exit 2
        watch_main(["--config", str(tmp_path / "w.toml"), "--backend", "bogus"])
    assert flag.value.code == 2


def test_low_space_and_inbox_mount_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WatchConfigError, match="low_space_mib = -1"):
        WatchConfig(Path("b"), Path("i"), Path("o"), low_space_mib=-1)
    (tmp_path / "w.toml").write_text(
        '[watch]\nbundle = "b"\ninbox = "in"\noutbox = "out"\ninbox-mount = true\nlow-space-mib = 2048\n'
    )
    assert watch_main(["--config", str(tmp_path / "w.toml"), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["low_space_mib"] == 2048 and printed["inbox_mount"] is True
    argv = [
        "--config",
        str(tmp_path / "w.toml"),
        "--no-inbox-mount",
        "--low-space-mib",
        "0",
        "--print-config",
    ]
    assert watch_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["low_space_mib"] == 0 and printed["inbox_mount"] is False  # flags over the file


def test_low_space_is_said_once_per_crossing_with_a_margin_before_it_is_withdrawn(
    tmp_path: Path, can_mount: None
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    assert mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)).returncode == 0
    try:
        stream = io.StringIO()
        space = OutboxSpace(disk, 10, EventLog(json_logger("info", stream)), interval=0.0)
        space.check()
        assert (space.low, space.status()) == (False, "") and space.free_mib == 16
        filler = disk / "filler.bin"
        filler.write_bytes(b"\0" * (7 << 20))  # 9 MiB free: below 10
        space.check()
        space.check()
        assert space.low and space.status() == "; outbox disk low: 9 MiB free"
        filler.write_bytes(b"\0" * (6 << 20))  # 10 MiB free: not below 10, not yet 10 + 1 MiB margin
        space.check()
        assert space.low
        filler.unlink()
        space.check()
        assert not space.low and space.free_mib == 16
        logging.getLogger("pneumo.watch").handlers.clear()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(e["event"], e["free_mib"]) for e in lines] == [
            ("outbox_low_space", 9),
            ("outbox_space_ok", 16),
        ]
        off = OutboxSpace(disk, 0, EventLog(json_logger("info", io.StringIO())), interval=0.0)
        filler.write_bytes(b"\0" * (15 << 20))
        off.check()
        assert off.free_mib == 1 and not off.low  # 0: measured for the heartbeat, never a warning
    finally:
        logging.getLogger("pneumo.watch").handlers.clear()
        umount(disk)


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_bad_failpoint_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(FAILPOINT_ENV, "after-move:0")
    argv = [str(tmp_path / "b"), "--inbox", str(tmp_path / "in"), "--outbox", str(tmp_path / "out")]
    assert watch_main(argv, prog="pneumo edge watch") == 2
    assert (
        f"pneumo edge watch: error: {FAILPOINT_ENV}: failpoint count must be >= 1" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()  # refused before anything was created


# -- log lines ----------------------------------------------------------------
def test_events_are_one_json_line_each_and_errors_are_kept_for_the_heartbeat() -> None:
    stream = io.StringIO()
    events = EventLog(json_logger("info", stream))
    undecodable = b"caf\xe9.png".decode("utf-8", "surrogateescape")
    events.emit(logging.INFO, "result", f"{undecodable}: done", name=undecodable, probability=0.25)
    events.trouble("outbox_unavailable", "disk full", errno="ENOSPC")
    logging.getLogger("pneumo.watch").handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["level"], first["event"], first["probability"]) == ("info", "result", 0.25)
    assert first["name"] == "caf\udce9.png" and first["ts"].endswith("+00:00")
    assert (second["level"], second["event"], second["errno"]) == ("error", "outbox_unavailable", "ENOSPC")
    assert events.last_error is not None and events.last_error["event"] == "outbox_unavailable"


def test_an_os_error_is_described_with_its_path_and_what_to_do() -> None:
    name, text = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/srv/out/x.json"))
    assert name == "ENOSPC"
    assert text == "No space left on device (/srv/out/x.json); the disk is full: free space"
    name, text = describe_os_error(OSError(errno.ENOTCONN, "not connected"), default_where="/srv/in")
    assert (name, text) == ("ENOTCONN", "not connected (/srv/in)")


def test_one_input_is_retried_with_growing_delays_then_given_up(tmp_path: Path) -> None:
    config = WatchConfig(
        tmp_path / "b", tmp_path / "in", tmp_path / "out",
        input_retries=4, backoff_initial_seconds=1.0, backoff_max_seconds=3.0,
    )  # fmt: skip
    stamp = ModelStamp("v1", "0" * 64, "ort-cpu", "fp32", 0.5, synthetic=False)
    inbox = InboxWatcher(
        config.inbox, quiet_seconds=0, max_pending=4, poll_interval=1, rescan_seconds=5, ignore=()
    )
    counters = {"requeued": 0}
    outbox = Outbox(config.outbox, config.inbox)
    retries = InputRetries(config, inbox, outbox, EventLog(logging.getLogger("t")), counters, stamp)
    tries = [retries.count_try("eio.png", 1, 2) for _ in range(4)]
    assert tries == [1, 2, 3, None]  # the 4th try of 4 gives it up
    assert [retries.delay(t) for t in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert retries.count_try("eio.png", 1, 2) == 1  # given up once: a new file starts over
    assert retries.count_try("eio.png", 1, 3) == 1  # another device: another input


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


# -- paths, journal, lock -------------------------------------------------------
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


# -- a reading race, in the daemon ----------------------------------------------
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
    kept = records["kept.png"]
    # the log line a technician reads carries what every result must: probability, threshold, model version
    assert (
        f"p={kept['probability']:.3f} (threshold {kept['threshold']:.3f}, model {kept['model_version']})"
        in events[0]["msg"]
    )
    assert ("[SYNTHETIC]" in events[0]["msg"]) == kept["synthetic"]
    logging.getLogger("pneumo.watch").handlers.clear()
    assert np.isfinite(records["kept.png"]["probability"])


# -- the model a result names ------------------------------------------------------
@pytest.mark.parametrize(("precision", "removed"), [("fp16", ""), ("int8", "model_int8_qdq.onnx")])
def test_daemon_results_name_the_onnx_file_a_tensorrt_engine_was_built_from(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, removed: str
) -> None:
    """The real TensorRTBackend on the project's TensorRT double (tests/edge_runtime/trt_double.py;
    TensorRT cannot be installed here). TensorRT 10 builds FP16 from model.onnx with a builder
    flag, and INT8 from it with a calibrator when the bundle has no Q/DQ model: the daemon's records
    name model.onnx, as 'pneumo edge predict' does, and a bundle without the Q/DQ file starts."""
    complete_bundle(tiny_bundle)
    if removed:
        (tiny_bundle / removed).unlink()
        write_manifest(tiny_bundle)
    trt_double.install(monkeypatch)
    assert run_edge_build(tiny_bundle, EdgeBuildConfig(precisions=(precision,))).passed
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    config = WatchConfig(
        tiny_bundle, inbox, outbox, backend="trt", precision=precision, quiet_seconds=0.0, watchdog=False
    )
    daemon = WatchDaemon(config, json_logger("info", io.StringIO()), install_signals=False)
    opened = daemon.open_model()
    assert opened is not None
    bundle, backend = opened
    try:
        assert isinstance(backend, TensorRTBackend) and backend.sidecar is not None
        assert backend.sidecar.onnx_file == "model.onnx"
        expected = bundle.file_sha256("model.onnx")
        assert source_onnx_sha256(bundle, backend) == expected  # what 'pneumo edge predict' stamps
        assert daemon.prepare_outbox()
        (inbox / "chest.png").write_bytes(png_bytes(200, seed=1))
        assert daemon.process_batch(daemon.inbox.poll(limit=8)) == "done"
    finally:
        backend.close()
        logging.getLogger("pneumo.watch").handlers.clear()
    [record] = map(json.loads, (outbox / "results.jsonl").read_text().splitlines())
    assert record["backend"] == "trt" and record["precision"] == precision
    assert record["model_sha256"] == expected
    assert json.loads((outbox / "heartbeat.json").read_text())["model_sha256"] == expected


def test_ort_trt_fp16_names_model_onnx_which_it_runs(tiny_bundle: Path) -> None:
    """ONNX Runtime's TensorRT provider runs FP16 as a flag on model.onnx. The provider cannot load
    here, so its real backend object is made (not opened) and asked what it runs."""
    complete_bundle(tiny_bundle)
    bundle = Bundle.open(tiny_bundle)
    backend = create_backend(bundle, "ort-trt", "fp16", golden_gated=())
    assert source_onnx_sha256(bundle, backend) == bundle.file_sha256("model.onnx")
    assert bundle.file_sha256("model.onnx") != bundle.file_sha256("model_fp16.onnx")
    cpu = create_backend(bundle, "ort-cpu", "fp16")
    assert source_onnx_sha256(bundle, cpu) == bundle.file_sha256("model_fp16.onnx")
