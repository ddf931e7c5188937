"""``pneumo edge watch`` as an operator runs it: real daemon subprocess, real files, real ONNX Runtime.

The tiny bundle's model calls bright images PNEUMONIA and dark ones NORMAL
at threshold 0.5, so every expected label below is known in advance.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.edge_runtime.watch_harness import (
    BRIGHT,
    DARK,
    REPO,
    Daemon,
    assert_exactly_once,
    by_name,
    csv_rows,
    drop,
    inbox_files,
    jsonl_records,
    png_bytes,
    result_count,
    sha256,
)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def palette_png(index_value: int, size: int = 40) -> bytes:
    """A colour-type-3 (palette) PNG whose palette entry 1 is gray ``index_value``; OpenCV cannot write these."""
    header = struct.pack(">IIBBBBB", size, size, 8, 3, 0, 0, 0)
    palette = bytes([0, 0, 0, index_value, index_value, index_value])
    rows = b"".join(b"\x00" + b"\x01" * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", palette)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def bomb_png() -> bytes:
    """A few hundred bytes declaring 50000 x 50000 pixels."""
    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


def dicom_bytes(tmp_path: Path, bright: bool) -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    # DICOM is min-max scaled on decode: 90% of pixels at the top -> bright, at the bottom -> dark
    pixels = np.full((40, 40), 4000 if bright else 100, np.uint16)
    pixels[:4] = 100 if bright else 4000
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_existing_renamed_and_slowly_written_files(
    tiny_bundle: Path, boxes: tuple[Path, Path], mode: str
) -> None:
    inbox, outbox = boxes
    inputs = {
        "already there bright.png": png_bytes(BRIGHT, seed=1),
        "already there dark.png": png_bytes(DARK, seed=2),
    }
    for name, data in inputs.items():
        (inbox / name).write_bytes(data)
    extra = ("--no-watchdog",) if mode == "polling" else ()
    # the quiet period is well above the writer's pauses, even on a loaded CI machine
    with Daemon(tiny_bundle, inbox, outbox, *extra, config={"quiet-seconds": 1.5}).start() as daemon:
        daemon.wait_started()
        daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "the files present at start")
        for i, value in enumerate((BRIGHT, DARK, BRIGHT)):
            name = f"renamed {i}.png"
            inputs[name] = png_bytes(value, seed=10 + i)
            drop(inbox, name, inputs[name])
        # a slow writer in the inbox itself: pauses shorter than the quiet period, one handle
        slow = png_bytes(BRIGHT, size=64, seed=99)
        inputs["slow writer.png"] = slow
        with open(inbox / "slow writer.png", "wb") as handle:
            for start in range(0, len(slow), max(1, len(slow) // 5)):
                handle.write(slow[start : start + max(1, len(slow) // 5)])
                handle.flush()
                time.sleep(0.1)
        daemon.wait_until(lambda: result_count(outbox) >= len(inputs), 60, "all results")
        assert daemon.signal(signal.SIGTERM) == 0
    records = assert_exactly_once(outbox, inputs)
    assert records["slow writer.png"]["input_sha256"] == sha256(slow), "a partial file was processed"
    for name, record in records.items():
        expected = "NORMAL" if "dark" in name or name == "renamed 1.png" else "PNEUMONIA"
        assert record["label"] == expected, name
        assert record["decision"] == ("normal" if expected == "NORMAL" else "abnormal")
        assert (record["probability"] >= 0.5) == (expected == "PNEUMONIA")
        assert record["threshold"] == 0.5
        assert record["model_version"] == "tiny-test-1"
        assert len(record["model_sha256"]) == 64
        assert record["backend"] == "ort-cpu" and record["precision"] == "fp32"
        assert record["latency_ms"] >= 0 and record["timestamp"].endswith("+00:00")
        assert "SYNTHETIC" in record["warning"] and "not a diagnosis" in record["note"]
    assert inbox_files(inbox) == []
    row = next(r for r in csv_rows(outbox) if r["original_name"] == "renamed 1.png")
    assert row["label"] == "NORMAL" and row["status"] == "done" and row["synthetic"] == "true"


def test_unusual_but_valid_inputs(tiny_bundle: Path, boxes: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, outbox = boxes
    bright16 = np.full((40, 40), 3500, np.uint16)  # 12-bit data in a 16-bit PNG
    dark16 = np.full((40, 40), 300, np.uint16)
    rgba = cv2.cvtColor(np.full((40, 40), BRIGHT, np.uint8), cv2.COLOR_GRAY2BGRA)
    rgba[:, :, 3] = 5
    inputs = {
        "sixteen bit bright.png": encode(bright16, ".png"),
        "sixteen bit dark.png": encode(dark16, ".png"),
        "rgba bright.png": encode(rgba, ".png"),
        "palette bright.png": palette_png(BRIGHT),
        "UPPER CASE DARK.JPG": encode(np.full((40, 40), DARK, np.uint8), ".jpg"),
        "UPPER.PNG": png_bytes(BRIGHT, seed=3),
        "png content dark.jpeg": png_bytes(DARK, seed=4),
        "Röntgen thorax ñ 胸部 bright.png": png_bytes(BRIGHT, seed=5),
        # a Latin-1 name from an old Windows share: bytes that are not UTF-8
        os.fsdecode(b"caf\xe9 latin1 bright.png"): png_bytes(BRIGHT, seed=6),
        "dicom bright.dcm": dicom_bytes(tmp_path, bright=True),
        "DICOM_NO_EXTENSION_DARK": dicom_bytes(tmp_path, bright=False),
    }
    expected = {name: ("NORMAL" if "dark" in name.lower() else "PNEUMONIA") for name in inputs}
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name, data in inputs.items():
            drop(inbox, name, data)
        daemon.wait_until(lambda: result_count(outbox) >= len(inputs), 60, "all results")
        assert daemon.signal(signal.SIGINT) == 0
    records = assert_exactly_once(outbox, inputs)
    assert {n: r["label"] for n, r in records.items()} == expected


def test_bad_inputs_fail_alone_with_reasons(
    tiny_bundle: Path, boxes: tuple[Path, Path], tmp_path: Path
) -> None:
    inbox, outbox = boxes
    jpeg = encode(np.tile(np.arange(64, dtype=np.uint8), (64, 1)), ".jpg")
    outside = tmp_path / "outside secret.png"
    outside.write_bytes(png_bytes(BRIGHT, seed=7))
    outside_sha = sha256(outside.read_bytes())
    bad = {
        "zero.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "text.jpg": b"this is a note, not an image\n" * 4,
        "bomb.png": bomb_png(),
    }
    reasons = {
        "zero.png": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "bomb.png": "decompression bomb",
        "link.png": "symbolic link",
        "folder.jpg": "folder",
    }
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name, data in bad.items():
            drop(inbox, name, data)
        os.symlink(outside, inbox / "link.png")
        (inbox / "folder.jpg").mkdir()
        (inbox / "folder.jpg" / "inside.png").write_bytes(png_bytes(BRIGHT))
        daemon.wait_until(lambda: result_count(outbox) >= len(reasons), 60, "a result for every bad input")
        # still running, and still working
        drop(inbox, "good after bad.png", png_bytes(BRIGHT, seed=8))
        daemon.wait_until(
            lambda: result_count(outbox) >= len(reasons) + 1, 60, "the good file after the bad ones"
        )
        assert daemon.running()
        time.sleep(1.0)  # several rescans: nothing may be reported twice
        assert daemon.signal(signal.SIGTERM) == 0
    records = by_name(outbox)
    assert len(records) == len(reasons) + 1 == len(jsonl_records(outbox))
    assert records["good after bad.png"]["label"] == "PNEUMONIA"
    for name, reason in reasons.items():
        record = records[name]
        assert record["status"] == "failed", name
        assert reason in record["reason"], (name, record["reason"])
        assert record["moved_to"] == f"failed/{name}"
        error = json.loads((outbox / "failed" / f"{name}.error.json").read_text())
        assert error == record and error["probability"] is None
    # the link itself was moved, never followed: the target is where it was, unchanged
    assert (outbox / "failed" / "link.png").is_symlink()
    assert os.readlink(outbox / "failed" / "link.png") == str(outside)
    assert outside.exists() and sha256(outside.read_bytes()) == outside_sha
    assert (outbox / "failed" / "folder.jpg" / "inside.png").exists()
    assert inbox_files(inbox) == []


#: what a codec library prints to stderr itself, past OpenCV (libpng's own error handler): the
#: daemon cannot silence it, and deploy/WATCH.md reads the log past it (jq -R 'fromjson?')
CODEC_LIBRARY_TEXT = ("libpng ",)


def test_opencv_writes_nothing_into_the_daemons_json_log(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    """Truncated PNG and BMP files make OpenCV log '[ WARN:0@...]' and '[ERROR:0@...]' lines on
    stderr; the daemon silences them. A large truncated PNG also makes libpng print 'libpng error:
    ...' itself: that text remains (honestly: not every stderr line is JSON), and nothing else."""
    inbox, outbox = boxes
    noise = np.random.default_rng(0).integers(0, 255, (300, 400), dtype=np.uint8)
    small = np.full((8, 8), 128, np.uint8)
    sources = {"large.png": (noise, ".png"), "small.png": (small, ".png"), "cut.bmp": (noise, ".bmp")}
    sources |= {"cut.tiff": (noise, ".tiff"), "cut.jpg": (noise, ".jpg")}
    truncated = {
        name: encode(image, ext)[: len(encode(image, ext)) // 2] for name, (image, ext) in sources.items()
    }
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name, data in truncated.items():
            drop(inbox, name, data)
        daemon.wait_until(lambda: result_count(outbox) >= len(truncated), 60, "a result for every input")
        assert daemon.signal(signal.SIGTERM) == 0
    other = []
    for line in filter(str.strip, daemon.log_text().splitlines()):
        try:
            json.loads(line)
        except ValueError:
            other.append(line)
    assert all(line.startswith(CODEC_LIBRARY_TEXT) for line in other), other
    failed = {e["name"] for e in daemon.events() if e["event"] == "failed_input"}
    assert failed == set(truncated)


def test_watch_md_reads_the_daemon_log_past_lines_that_are_not_json() -> None:
    """The journal command of deploy/WATCH.md section 5, run as written on what the daemon's journal
    holds: its JSON lines, a codec library's own line (above), a Python stack after a crash."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed: WATCH.md's journal command cannot be run here")
    text = (REPO / "deploy" / "WATCH.md").read_text(encoding="utf-8")
    command = next(
        line for line in text.splitlines() if line.startswith("journalctl -t pneumo-watch -f -o cat |")
    )
    events = [
        {"ts": "t1", "level": "info", "event": "started", "msg": "watching", "watch_mode": "inotify"},
        {
            "ts": "t2",
            "level": "warning",
            "event": "failed_input",
            "msg": "cut.png: corrupt",
            "name": "cut.png",
        },
    ]
    journal = "\n".join(
        [
            json.dumps(events[0]),
            "libpng error: PNG input buffer is incomplete",
            json.dumps(events[1]),
            "Fatal Python error: Aborted",
            '  File "/opt/pneumo/lib/edge_runtime/inbox.py", line 720 in read_input',
        ]
    )
    shown = subprocess.run(
        shlex.split(command.split("|", 1)[1]),
        input=journal + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    keep = ("ts", "level", "event", "msg")
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [
        {key: event[key] for key in keep} for event in events
    ]


def test_vanished_file_is_recorded_and_a_clashing_name_is_made_unique(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    first, second = png_bytes(BRIGHT, seed=20), png_bytes(DARK, seed=21)
    # close_write not trusted: a file written in place must hold still for the quiet period
    config = {"quiet-seconds": 1.5, "trust-close-write": False}
    with Daemon(tiny_bundle, inbox, outbox, config=config).start() as daemon:
        daemon.wait_started()
        drop(inbox, "same name.png", first)
        daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the first file")
        drop(inbox, "same name.png", second)
        daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "the second file of the same name")
        # written in place (no rename hint), then removed during its quiet period: never complete, no result
        (inbox / "written then removed.png").write_bytes(png_bytes(BRIGHT))
        time.sleep(0.3)
        os.unlink(inbox / "written then removed.png")
        drop(inbox, "marker.png", png_bytes(BRIGHT, seed=22))
        daemon.wait_until(lambda: result_count(outbox) >= 3, 60, "the marker")
        assert daemon.signal(signal.SIGTERM) == 0
    records = jsonl_records(outbox)
    assert [r["original_name"] for r in records] == ["same name.png", "same name.png", "marker.png"]
    assert (
        records[0]["moved_to"] == "done/same name.png" and records[1]["moved_to"] == "done/same name (2).png"
    )
    assert (outbox / "done" / "same name.png").read_bytes() == first, "an earlier result was overwritten"
    assert (outbox / "done" / "same name (2).png").read_bytes() == second
    assert records[1]["label"] == "NORMAL" and records[1]["result_file"] == "done/same name (2).png.json"


def test_temp_and_hidden_names_are_left_alone(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    inbox, outbox = boxes
    ignored = ["upload.jpg.part", "x.png.tmp", "chrome.jpg.crdownload", ".hidden.png", ".DS_Store"]
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name in ignored:
            (inbox / name).write_bytes(png_bytes(BRIGHT))
        (inbox / "subfolder").mkdir()
        # the usual uploader pattern: write NAME.part, then rename to NAME
        (inbox / "final.png.part").write_bytes(png_bytes(BRIGHT, seed=30))
        os.rename(inbox / "final.png.part", inbox / "final.png")
        daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the renamed upload")
        time.sleep(1.0)  # several quiet periods and rescans
        assert daemon.signal(signal.SIGTERM) == 0
    assert list(by_name(outbox)) == ["final.png"]
    assert inbox_files(inbox) == sorted([*ignored, "subfolder"])


def test_heartbeat_counters_and_graceful_stop(
    tiny_bundle: Path, boxes: tuple[Path, Path], tmp_path: Path
) -> None:
    inbox, outbox = boxes
    heartbeat = tmp_path / "run" / "heartbeat.json"
    for i in range(5):
        drop(inbox, f"img {i}.png", png_bytes(BRIGHT if i % 2 else DARK, seed=40 + i))
    drop(inbox, "broken.jpg", b"not an image")
    with Daemon(tiny_bundle, inbox, outbox, "--heartbeat", str(heartbeat)).start() as daemon:
        daemon.wait_until(lambda: result_count(outbox) >= 6, 90, "all results")

        def beat() -> dict:
            try:
                return json.loads(heartbeat.read_text())
            except (OSError, ValueError):
                return {}

        daemon.wait_until(lambda: beat().get("counters", {}).get("processed") == 5, 30, "heartbeat counters")
        data = beat()
        first_beat = data["last_beat"]
        assert data["pid"] == daemon.pid and data["state"] == "running"
        assert data["counters"]["failed"] == 1 and data["counters"]["pending"] == 0
        assert data["backend"] == "ort-cpu" and data["precision"] == "fp32"
        assert data["model_version"] == "tiny-test-1" and data["synthetic"] is True
        assert data["watch_mode"] == "inotify" and data["last_error"] is None
        daemon.wait_until(lambda: beat().get("last_beat", first_beat) != first_beat, 30, "a fresh heartbeat")
        assert daemon.signal(signal.SIGTERM) == 0
        final = beat()
        assert final["state"] == "stopped"
        events = daemon.events()
    assert all({"ts", "level", "event", "msg"} <= set(e) for e in events)
    assert events[-1]["event"] == "stopped" and "SIGTERM" in events[-1]["msg"]
    assert not (outbox / "heartbeat.json").exists()


def test_an_idle_daemon_keeps_its_heartbeat_fresh_whatever_the_poll_interval(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    """WATCH.md: the heartbeat is at most heartbeat-seconds old. An idle loop waiting out a long
    poll-interval (or rescan-seconds) must still wake to write it."""
    inbox, outbox = boxes
    heartbeat = outbox / "heartbeat.json"
    slow = {"poll-interval": 30.0, "rescan-seconds": 30.0, "heartbeat-seconds": 0.3}
    with Daemon(tiny_bundle, inbox, outbox, config=slow).start() as daemon:
        daemon.wait_started()
        daemon.wait_until(heartbeat.exists, 30, "a heartbeat")
        seen, changes = heartbeat.stat().st_mtime_ns, [time.monotonic()]
        while time.monotonic() - changes[0] < 4.0:
            time.sleep(0.02)
            try:
                mtime = heartbeat.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if mtime != seen:
                seen = mtime
                changes.append(time.monotonic())
        gaps = [b - a for a, b in zip(changes, [*changes[1:], time.monotonic()])]
        assert daemon.signal(signal.SIGTERM) == 0
    # 0.3 s, with room for a loaded two-core machine; a 30 s poll-interval would leave 4 s gaps
    assert max(gaps) < 1.5, (
        f"the heartbeat went {max(gaps):.1f} s without a write: {len(changes)} writes in 4 s"
    )


def test_sigterm_during_a_busy_inbox_exits_zero_and_loses_nothing(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    inputs = {f"busy {i:03d}.png": png_bytes(BRIGHT, seed=100 + i) for i in range(120)}
    for name, data in inputs.items():
        (inbox / name).write_bytes(data)
    with Daemon(tiny_bundle, inbox, outbox, "--batch", "4", config={"quiet-seconds": 0.0}).start() as daemon:
        daemon.wait_until(lambda: result_count(outbox) >= 1, 90, "first results")
        assert daemon.signal(signal.SIGTERM) == 0
    # what was not processed is still in the inbox, untouched; the rest has exactly one result
    left = set(inbox_files(inbox))
    processed = {name: data for name, data in inputs.items() if name not in left}
    assert processed, "nothing was processed before SIGTERM"
    assert_exactly_once(outbox, processed)
    for name in left:
        assert (inbox / name).read_bytes() == inputs[name]


def test_sigterm_stops_a_daemon_started_with_sigterm_blocked(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    """A blocked-signal mask survives exec: whatever starts the daemon with SIGTERM blocked must not
    make 'systemctl stop' or a supervisor's SIGTERM wait forever."""
    inbox, outbox = boxes

    def block_stop_signals() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})

    with Daemon(tiny_bundle, inbox, outbox, preexec_fn=block_stop_signals).start() as daemon:
        daemon.wait_started()
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        daemon.wait_event("hangup_ignored", 30)
        assert daemon.signal(signal.SIGTERM, timeout=30) == 0


def test_second_daemon_on_the_same_outbox_is_refused(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    inbox, outbox = boxes
    with Daemon(tiny_bundle, inbox, outbox).start() as first:
        first.wait_started()
        first.wait_until(lambda: (outbox / ".pneumo" / "lock").exists(), 30, "the lock")
        second = Daemon(tiny_bundle, inbox, outbox, log_name="second").start()
        assert second.proc is not None and second.proc.wait(timeout=90) == 1
        assert "another pneumo edge watch" in second.log_text()
        assert first.running()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.pneumo_cli", "edge", "watch", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "watch.toml"
    config.write_text(
        '[watch]\nbundle = "b"\ninbox = "in"\noutbox = "out"\nbatch = 8\nquiet-seconds = 5.0\nignore = ["*.x"]\n'
    )
    result = _cli("--config", str(config), "--batch", "32", "--print-config")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["batch"] == 32 and resolved["quiet_seconds"] == 5.0 and resolved["ignore"] == ["*.x"]
    assert resolved["inbox"] == str(tmp_path / "in") and resolved["heartbeat"] == str(
        tmp_path / "out" / "heartbeat.json"
    )
    result = _cli(
        "--config", str(config), "--dla", "1", "--settle-seconds", "5", "--input-retries", "3", "--print-config"
    )  # fmt: skip
    resolved = json.loads(result.stdout)
    assert (resolved["dla_core"], resolved["settle_seconds"], resolved["input_retries"]) == (1, 5.0, 3)
    assert resolved["inbox_mount"] is False
    resolved = json.loads(_cli("--config", str(config), "--inbox-mount", "--print-config").stdout)
    assert resolved["inbox_mount"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["b", "--inbox", "i"], "missing outbox"),
        (["b", "--inbox", "i", "--outbox", "o", "--batch", "0"], "batch"),
        (["b", "--inbox", "i", "--outbox", "i/out"], "inside"),
        (["b", "--inbox", "i", "--outbox", "o", "--dla", "-1"], "dla_core = -1"),
        # read back as an input every few seconds, for ever: refused before anything runs
        (
            ["b", "--inbox", "i", "--outbox", "o", "--heartbeat", "i/hb.json", "--print-config"],
            "inside the inbox",
        ),
    ],
)
def test_bad_settings_exit_2(args: list[str], message: str) -> None:
    result = _cli(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_unknown_config_key_and_bad_bundle(tmp_path: Path) -> None:
    config = tmp_path / "watch.json"
    config.write_text(json.dumps({"inbox": "i", "outbox": "o", "bundle": "b", "quiet": 1}))
    result = _cli("--config", str(config))
    assert result.returncode == 2 and "unknown settings ['quiet']" in result.stderr
    (tmp_path / "in").mkdir()
    result = _cli(
        str(tmp_path / "no bundle"), "--inbox", str(tmp_path / "in"), "--outbox", str(tmp_path / "out")
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failure = next(e for e in events if e["event"] == "startup_failed")
    assert "not a bundle folder" in failure["msg"]
    heartbeat = json.loads((tmp_path / "out" / "heartbeat.json").read_text())
    assert heartbeat["state"] == "failed" and "not a bundle folder" in heartbeat["last_error"]["message"]


def test_failing_backend_keeps_inputs_and_exits_for_a_restart(tmp_path: Path) -> None:
    """A real ONNX Runtime failure on every run after a good start: inputs are never failed for it."""
    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo, PreprocessContract
    from tests.edge_runtime.bundle_kit import fails_at_run_onnx

    bundle = tmp_path / "failing bundle"
    fails_at_run_onnx(bundle / "model.onnx", size=32)
    PreprocessContract(height=32, width=32).save(bundle)
    ModelInfo(model_version="mismatch-1", arch="tiny", synthetic=True).save(bundle)
    (bundle / "model_card.json").write_text("{}\n")
    write_manifest(bundle)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    data = png_bytes(BRIGHT, seed=60)
    (inbox / "waiting.png").write_bytes(data)
    daemon = Daemon(bundle, inbox, outbox).start()
    assert daemon.proc is not None and daemon.proc.wait(timeout=120) == 1
    events = daemon.events()
    assert sum(e["event"] == "inference_failed" for e in events) == 5
    assert any(e["event"] == "backend_failed" for e in events)
    assert (inbox / "waiting.png").read_bytes() == data
    assert result_count(outbox) == 0 and os.listdir(outbox / "failed") == []


def test_dicom_without_pydicom_fails_with_that_reason(
    tiny_bundle: Path, boxes: tuple[Path, Path], tmp_path: Path
) -> None:
    """A runtime install without the dicom extra: simulated by a module whose import fails, as pydicom's would."""
    inbox, outbox = boxes
    data = dicom_bytes(tmp_path, bright=True)
    shim = tmp_path / "no_pydicom"
    shim.mkdir()
    (shim / "pydicom.py").write_text("raise ImportError('No module named pydicom')\n")
    env = {"PYTHONPATH": f"{shim}{os.pathsep}{REPO}"}
    with Daemon(tiny_bundle, inbox, outbox, env=env).start() as daemon:
        daemon.wait_started()
        drop(inbox, "scan.dcm", data)
        drop(inbox, "plain.png", png_bytes(BRIGHT, seed=70))
        daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "both results")
        assert daemon.signal(signal.SIGTERM) == 0
    records = assert_exactly_once(
        outbox, {"scan.dcm": data, "plain.png": png_bytes(BRIGHT, seed=70)}, failed={"scan.dcm"}
    )
    assert "pydicom is not installed" in records["scan.dcm"]["reason"]
