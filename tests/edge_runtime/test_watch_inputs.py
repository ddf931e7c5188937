"""One input's trouble stays that input's: long names, immutable files, paused writers, read errors.

Also the daemon's own boundaries: a second daemon on the same inbox, an
outbox that is unmounted or replaced, inputs in sub-folders, and an input
replaced while a crash left its claim behind. Every test runs the real
daemon as a subprocess on real folders (watch_harness); conditions are made
for real (``chattr +i``, a bind mount that returns EIO, a writer that pauses)
and skipped, with the reason, where this machine cannot make them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.edge_runtime.watch_harness import (
    BRIGHT,
    DARK,
    Daemon,
    assert_exactly_once,
    drop,
    inbox_files,
    jsonl_records,
    png_bytes,
    result_count,
    sha256,
)


def noise_png(seed: int, size: int = 256) -> bytes:
    """A PNG that does not compress much: half of it is clearly a truncated file."""
    image = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _records(outbox: Path, name: str) -> list[dict]:
    return [r for r in jsonl_records(outbox) if r["original_name"] == name]


def _moved_files_match_their_records(outbox: Path) -> None:
    """The invariant a wrong attachment breaks: a moved file's bytes are the bytes its record inferred."""
    for record in jsonl_records(outbox):
        if record["moved_to"] and record["status"] == "done":
            moved = outbox / record["moved_to"]
            assert sha256(moved.read_bytes()) == record["input_sha256"], (
                f"{record['original_name']}: {record['moved_to']} is not the image its result describes"
            )


# -- 1. names too long for their result JSON --------------------------------
def test_overlong_names_are_shortened_and_the_rest_goes_on(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    long_good = "y" * 247 + ".png"  # 251 bytes: NAME.json would be 256
    long_bad = "Röntgen-" + "z" * 234 + ".jpg"  # 247 bytes (ö is 2): NAME.error.json would be 258
    assert len(os.fsencode(long_good)) == 251 and len(os.fsencode(long_bad)) == 247
    inputs = {
        long_good: png_bytes(BRIGHT, seed=1),
        long_bad: b"not an image at all",
        "before.png": png_bytes(DARK, seed=2),
        "after.png": png_bytes(BRIGHT, seed=3),
    }
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name, data in inputs.items():
            drop(inbox, name, data)
        daemon.wait_until(lambda: result_count(outbox) >= len(inputs), 60, "every result, long names too")
        drop(inbox, "later.png", png_bytes(DARK, seed=4))
        inputs["later.png"] = png_bytes(DARK, seed=4)
        daemon.wait_until(lambda: result_count(outbox) >= len(inputs), 60, "a file dropped afterwards")
        assert daemon.signal(signal.SIGTERM) == 0
    records = assert_exactly_once(outbox, inputs, failed={long_bad})
    assert not any(e["event"] == "outbox_write_failed" for e in daemon.events())
    for name, suffix in ((long_good, ".png"), (long_bad, ".jpg")):
        record = records[name]
        moved = Path(record["moved_to"]).name
        assert moved.endswith(suffix) and f"~{record['id'][:8]}" in moved, moved
        assert len(os.fsencode(Path(record["result_file"]).name)) <= 255
    assert records["before.png"]["moved_to"] == "done/before.png"


@pytest.fixture
def immutable_ok(tmp_path: Path) -> None:
    probe = tmp_path / "chattr-probe"
    probe.write_bytes(b"x")
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip(
            "making one file unmovable needs root and chattr (a file's own mode does not stop a rename)"
        )
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    subprocess.run(["chattr", "-i", str(probe)], check=True)


def test_unmovable_input_fails_alone_is_left_and_not_reread(
    tiny_bundle: Path, boxes: tuple[Path, Path], immutable_ok: None
) -> None:
    inbox, outbox = boxes
    locked = inbox / "locked.png"
    data = png_bytes(BRIGHT, seed=10)
    locked.write_bytes(data)
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    config = {"input-retries": 3}
    try:
        with Daemon(tiny_bundle, inbox, outbox, config=config).start() as daemon:
            daemon.wait_started()
            for i in range(3):
                drop(inbox, f"other {i}.png", png_bytes(DARK, seed=20 + i))
            daemon.wait_until(
                lambda: result_count(outbox) >= 4, 60, "the others and the locked file's failure"
            )
            time.sleep(1.5)  # several rescans: a file left in the inbox is not read again
            assert daemon.signal(signal.SIGTERM) == 0
            events = daemon.events()
        assert sum(e["event"] == "input_stuck" for e in events) == 2, "tries 1 and 2 retried, 3 gave up"
        assert not any(e["event"] in ("outbox_write_failed", "outbox_unavailable") for e in events)
        [record] = _records(outbox, "locked.png")
        assert record["status"] == "failed" and record["error_kind"] == "unmovable"
        assert record["moved_to"] is None and "EPERM" in record["reason"]
        assert record["model_version"] == "tiny-test-1" and record["threshold"] == 0.5
        assert json.loads((outbox / record["result_file"]).read_text()) == record
        assert locked.read_bytes() == data, "the input was changed"
        assert all(r["status"] == "done" for r in jsonl_records(outbox) if r["original_name"] != "locked.png")
        # a restart remembers it (OUTBOX/.pneumo/left_in_inbox.json): still no second record
        with Daemon(tiny_bundle, inbox, outbox, config=config, log_name="restart").start() as daemon:
            daemon.wait_started()
            time.sleep(1.5)
            assert len(_records(outbox, "locked.png")) == 1
            # fixed by the operator (chattr -i changes its ctime): now it is an input again
            subprocess.run(["chattr", "-i", str(locked)], check=True)
            daemon.wait_until(lambda: len(_records(outbox, "locked.png")) == 2, 60, "the fixed file")
            assert daemon.signal(signal.SIGTERM) == 0
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    again = _records(outbox, "locked.png")[1]
    assert again["status"] == "done" and (outbox / again["moved_to"]).read_bytes() == data
    assert inbox_files(inbox) == []
    left = json.loads((outbox / ".pneumo" / "left_in_inbox.json").read_text())
    assert left["inputs"] == {}


# -- 2. a claim left by a crash never attaches to another file --------------
def test_input_replaced_after_a_crash_gets_its_own_result(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    old_x, old_y = png_bytes(BRIGHT, seed=1), png_bytes(BRIGHT, seed=2)
    (inbox / "x.png").write_bytes(old_x)
    (inbox / "y.png").write_bytes(old_y)
    fast = {"quiet-seconds": 0.0}
    crashing = Daemon(
        tiny_bundle,
        inbox,
        outbox,
        config=fast,
        env={"PNEUMO_WATCH_FAILPOINT": "after-claim"},
        log_name="crash",
    ).start()
    assert crashing.proc is not None and crashing.proc.wait(timeout=120) == -signal.SIGKILL, crashing.tail()
    assert (outbox / ".pneumo" / "journal.json").exists()
    # x.png deleted and a new image written under its name (the inode may well be reused)
    new_x = png_bytes(DARK, seed=3)
    os.unlink(inbox / "x.png")
    (inbox / "x.png").write_bytes(new_x)
    # y.png overwritten in place with another image of the same size, its mtime put back:
    # same inode, size and mtime, so only the content tells them apart
    new_y = next(d for d in (png_bytes(DARK, seed=s) for s in range(4, 400)) if len(d) == len(old_y))
    st = os.stat(inbox / "y.png")
    with open(inbox / "y.png", "r+b") as handle:
        handle.write(new_y)
    os.utime(inbox / "y.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    with Daemon(tiny_bundle, inbox, outbox, config=fast, log_name="restart").start() as daemon:
        daemon.wait_event("recovered_batch")
        daemon.wait_until(lambda: result_count(outbox) >= 4 and not inbox_files(inbox), 60, "4 results")
        time.sleep(0.5)
        assert daemon.signal(signal.SIGTERM) == 0
    _moved_files_match_their_records(outbox)
    for name, old, new in (("x.png", old_x, new_x), ("y.png", old_y, new_y)):
        first, second = _records(outbox, name)
        assert first["input_sha256"] == sha256(old) and first["moved_to"] is None, first
        assert second["input_sha256"] == sha256(new) and second["label"] == "NORMAL"
        assert (outbox / second["moved_to"]).read_bytes() == new


# -- 3. one daemon per inbox ------------------------------------------------
def test_second_daemon_on_the_same_inbox_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # no ".*" in the ignore list: the lock file is still never taken for an input
    config = {"ignore": ["*.part"]}
    with Daemon(tiny_bundle, inbox, tmp_path / "outbox A", config=config, log_name="a").start() as first:
        first.wait_started()
        second = Daemon(tiny_bundle, inbox, tmp_path / "outbox B", config=config, log_name="b").start()
        assert second.proc is not None and second.proc.wait(timeout=90) == 1, second.tail()
        busy = [e for e in second.events() if e["event"] == "inbox_busy"]
        assert busy and f"pid {first.pid}" in busy[0]["msg"] and ".pneumo-inbox.lock" in busy[0]["msg"]
        assert not (tmp_path / "outbox B" / "results.jsonl").exists()
        drop(inbox, "one.png", png_bytes(BRIGHT, seed=1))
        first.wait_until(lambda: result_count(tmp_path / "outbox A") >= 1, 60, "the first daemon's result")
        time.sleep(1.0)  # rescans: the lock file must not become an input
        assert first.signal(signal.SIGTERM) == 0
    assert_exactly_once(tmp_path / "outbox A", {"one.png": png_bytes(BRIGHT, seed=1)})


# -- 4. an outbox that goes away is waited for, never recreated ---------------
def test_vanished_or_replaced_outbox_is_never_recreated_or_written(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    aside = outbox.with_name("outbox.unmounted")
    inputs = {"before.png": png_bytes(DARK, seed=1)}
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        drop(inbox, "before.png", inputs["before.png"])
        daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the first result")
        os.rename(outbox, aside)  # the disk is unmounted
        for i in range(2):
            inputs[f"during {i}.png"] = png_bytes(BRIGHT, seed=10 + i)
            drop(inbox, f"during {i}.png", inputs[f"during {i}.png"])
        daemon.wait_until(
            lambda: any(e["event"] == "outbox_unavailable" for e in daemon.events()), 60, "outbox_unavailable"
        )
        time.sleep(1.0)
        assert not outbox.exists(), "the outbox was recreated on the disk underneath"
        outbox.mkdir()  # the empty mount point: a folder, but not the outbox
        daemon.wait_until(
            lambda: any(e.get("errno") == "ENODEV" for e in daemon.events()), 60, "ENODEV (replaced outbox)"
        )
        time.sleep(1.0)
        assert os.listdir(outbox) == [], "the daemon wrote into a folder that is not its outbox"
        assert sorted(inbox_files(inbox)) == ["during 0.png", "during 1.png"]
        outbox.rmdir()
        os.rename(aside, outbox)  # mounted again
        daemon.wait_until(
            lambda: result_count(outbox) >= len(inputs) and not inbox_files(inbox), 60, "recovery"
        )
        daemon.wait_event("outbox_recovered")
        assert daemon.signal(signal.SIGTERM) == 0
    assert_exactly_once(outbox, inputs)


# -- 5. sub-folders are reported, not silently skipped ------------------------
def test_subfolder_with_images_is_reported_once_and_counted(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    inbox, outbox = boxes
    heartbeat = outbox.parent / "heartbeat.json"
    with Daemon(tiny_bundle, inbox, outbox, "--heartbeat", str(heartbeat)).start() as daemon:
        daemon.wait_started()
        (inbox / "empty").mkdir()
        # filled beside the inbox and renamed in, so that every scan sees all three files
        staging = outbox.parent / "batch staging"
        staging.mkdir()
        for i in range(3):
            (staging / f"img {i}.png").write_bytes(png_bytes(BRIGHT, seed=i))
        os.rename(staging, inbox / "batch 2")
        daemon.wait_event("subfolder_ignored")

        def counters() -> dict:
            try:
                return json.loads(heartbeat.read_text())["counters"]
            except (OSError, ValueError, KeyError):
                return {}

        daemon.wait_until(lambda: counters().get("in_subfolders") == 3, 30, "the heartbeat count")
        time.sleep(1.5)  # several rescans: still one warning
        assert counters()["subfolders"] == 1
        assert daemon.signal(signal.SIGTERM) == 0
    warnings = [e for e in daemon.events() if e["event"] == "subfolder_ignored"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and warnings[0]["files"] == 3
    assert "batch 2" in warnings[0]["msg"]
    assert sorted(os.listdir(inbox / "batch 2")) == ["img 0.png", "img 1.png", "img 2.png"]
    assert result_count(outbox) == 0


# -- 6. a writer that pauses is waited for ------------------------------------
@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_writer_pausing_mid_file_is_not_failed(
    tiny_bundle: Path, boxes: tuple[Path, Path], mode: str
) -> None:
    inbox, outbox = boxes
    paused, broken = noise_png(1), noise_png(2)
    extra = ("--no-watchdog",) if mode == "polling" else ()
    # the writer pauses far longer than the quiet period, well within the settle time
    config = {"quiet-seconds": 0.3, "settle-seconds": 6.0}
    with Daemon(tiny_bundle, inbox, outbox, *extra, config=config).start() as daemon:
        daemon.wait_started()
        with open(inbox / "paused.png", "wb") as handle:
            handle.write(paused[: len(paused) // 2])
            handle.flush()
            time.sleep(2.0)
            handle.write(paused[len(paused) // 2 :])
        # a file that really is truncated, written in place: failed, at the latest after the settle time
        (inbox / "broken.png").write_bytes(broken[: len(broken) // 2])
        daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "both results")
        assert daemon.signal(signal.SIGTERM) == 0
    records = assert_exactly_once(
        outbox, {"paused.png": paused, "broken.png": broken[: len(broken) // 2]}, failed={"broken.png"}
    )
    assert records["paused.png"]["input_sha256"] == sha256(paused)
    assert "truncated" in records["broken.png"]["reason"]


# -- 7. a read error that may pass is retried ---------------------------------
def test_transient_read_error_is_retried_not_failed(tiny_bundle: Path, boxes: tuple[Path, Path]) -> None:
    """A bind mount of /proc/PID/mem over an inbox file: reading it gives a real EIO until it is unmounted."""
    inbox, outbox = boxes
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real EIO needs a bind mount (root)")
    target = inbox / "flaky.png"
    data = png_bytes(BRIGHT, seed=5)
    target.write_bytes(data)
    result = subprocess.run(
        ["mount", "--bind", f"/proc/{os.getpid()}/mem", str(target)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    try:
        with Daemon(tiny_bundle, inbox, outbox, config={"input-retries": 1000}).start() as daemon:
            daemon.wait_until(
                lambda: sum(e["event"] == "input_retry" for e in daemon.events()) >= 3, 60, "3 retries"
            )
            assert result_count(outbox) == 0, "a transient read error became a result"
            retry = next(e for e in daemon.events() if e["event"] == "input_retry")
            assert "Input/output error" in retry["msg"]
            subprocess.run(["umount", str(target)], check=True)  # the share is back
            daemon.wait_until(lambda: result_count(outbox) >= 1, 60, "the file after the error cleared")
            assert daemon.signal(signal.SIGTERM) == 0
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
    assert_exactly_once(outbox, {"flaky.png": data})


def test_a_non_finite_model_output_fails_that_input_and_the_inbox_goes_on(tmp_path: Path) -> None:
    """NaN from the model (an FP16 overflow, say) is never a 'normal' decision and never blocks the rest."""
    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo, PreprocessContract
    from tests.edge_runtime.bundle_kit import nan_for_dark_onnx

    bundle = tmp_path / "nan bundle"
    bundle.mkdir()
    nan_for_dark_onnx(bundle / "model.onnx")  # sqrt(mean - 0.5): NaN for dark images
    PreprocessContract(height=8, width=8).save(bundle)
    ModelInfo(model_version="nan-1", arch="tiny", threshold=0.5, synthetic=True).save(bundle)
    (bundle / "model_card.json").write_text("{}\n")
    write_manifest(bundle)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = {
        "a-bright.png": png_bytes(BRIGHT, seed=1),
        "b-dark.png": png_bytes(DARK, seed=2),
        "c-bright.png": png_bytes(BRIGHT, seed=3),
    }
    with Daemon(bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        for name, data in inputs.items():
            drop(inbox, name, data)
        daemon.wait_until(lambda: result_count(outbox) >= 3, 60, "three results")
        assert daemon.signal(signal.SIGTERM) == 0
        events = daemon.events()
    records = assert_exactly_once(outbox, inputs, failed={"b-dark.png"})
    assert "not a finite number (nan)" in records["b-dark.png"]["reason"]
    assert (
        records["a-bright.png"]["decision"] == "abnormal"
        and records["c-bright.png"]["decision"] == "abnormal"
    )
    assert not any(e["event"] in ("inference_failed", "backend_failed") for e in events)
    assert inbox_files(inbox) == []
