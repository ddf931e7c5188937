"""edge_runtime.outbox in-process: the layout, unique names, moving inputs and finishing a claim exactly once.

Real files in tmp_path. A crash is simulated by doing part of a claim's steps
by hand (what a ``kill -9`` between two steps leaves), then finishing it;
the subprocess tests (test_watch_crash.py) kill the real daemon.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.journal import Claim, JournalEntry
from edge_runtime.outbox import (
    QUARANTINE_DIR,
    Failpoint,
    InboxGoneError,
    InputStuckError,
    Outbox,
    OutboxReplacedError,
    Warn,
    fit_name,
    left_signature,
)
from edge_runtime.results import CSV_COLUMNS
from tests.edge_runtime.watch_harness import png_bytes

Warnings = list[tuple[str, dict[str, object]]]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    (tmp_path / "in").mkdir()
    box = Outbox(tmp_path / "out", tmp_path / "in")
    box.ensure_layout()
    return box


def _entry(box: Outbox, name: str, status: str, reserved: set[str]) -> JournalEntry:
    """A journal entry as the daemon claims it: identity of the inbox file, planned names, record."""
    source = box.inbox / name
    st = os.lstat(source)
    kind = "link" if source.is_symlink() else "file"
    result_id = uuid.uuid4().hex
    target, result_path = box.plan(name, kind, status, reserved, result_id[:8])
    sha = hashlib.sha256(source.read_bytes()).hexdigest() if kind == "file" else ""
    record = {
        "id": result_id,
        "status": status,
        "original_name": name,
        "moved_to": box.moved_to(target),
        "input_sha256": sha,
    }
    return JournalEntry(
        id=result_id, name=name, kind=kind, status=status, source=str(source), target=target,
        result_path=result_path, record=record, ino=st.st_ino, dev=st.st_dev, size=st.st_size,
        mtime_ns=st.st_mtime_ns, sha256=sha,
    )  # fmt: skip


def _claim(box: Outbox, inputs: dict[str, str]) -> Claim:
    """Claim ``{name: status}`` of files already in the inbox, and write the journal."""
    reserved: set[str] = set()
    entries = [_entry(box, name, status, reserved) for name, status in inputs.items()]
    claim = Claim(uuid.uuid4().hex, box.jsonl.size(), box.csv.size(), entries)
    box.journal.write(claim)
    return claim


def _collect(warnings: Warnings) -> Warn:
    """The ``warn`` callback of Outbox.finish, keeping what it was told."""
    return lambda msg, fields: warnings.append((msg, fields))


def _jsonl(box: Outbox) -> list[dict]:
    return [json.loads(line) for line in box.jsonl.path.read_text().splitlines()]


def _csv_ids(box: Outbox) -> list[str]:
    rows = list(csv.reader(box.csv.path.read_text().splitlines()))
    assert rows[0] == list(CSV_COLUMNS)
    return [row[0] for row in rows[1:]]


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Paths to ``chattr +i`` (the one way to make root's rename fail); cleared after the test."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def _make_immutable(paths: list[Path], path: Path) -> None:
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    paths.append(path)


# -- layout --------------------------------------------------------------------
def test_layout_is_created_once_and_the_outbox_keeps_its_id(outbox: Outbox) -> None:
    assert all(p.is_dir() for p in (outbox.done, outbox.failed, outbox.state_dir))
    outbox_id = json.loads(outbox.id_path.read_text())["outbox_id"]
    assert len(outbox_id) == 32 and outbox_id == outbox.outbox_id
    again = Outbox(outbox.root, outbox.inbox)  # the next start of the daemon
    again.ensure_layout()
    assert again.outbox_id == outbox_id
    assert [p.name for p in outbox.done.iterdir()] == []  # the write probes leave nothing behind


def test_a_file_where_a_folder_belongs_is_named(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "done").write_text("not a folder")
    with pytest.raises(NotADirectoryError) as caught:
        Outbox(root, tmp_path / "in").ensure_layout()
    assert caught.value.errno == errno.ENOTDIR and caught.value.filename == str(root / "done")
    (tmp_path / "file-outbox").write_text("x")
    with pytest.raises(NotADirectoryError):
        Outbox(tmp_path / "file-outbox", tmp_path / "in").ensure_layout()


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


# -- names -----------------------------------------------------------------------
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


def test_moved_to_is_relative_inside_the_outbox_and_absolute_outside(outbox: Outbox) -> None:
    assert outbox.moved_to(str(outbox.done / "a b.png")) == "done/a b.png"
    outside = str(outbox.inbox / QUARANTINE_DIR / "l.png")
    assert outbox.moved_to(outside) == outside
    assert outbox.moved_to("") is None


# -- finishing a claim ---------------------------------------------------------------
def test_finish_moves_inputs_writes_each_result_once_and_clears_the_journal(outbox: Outbox) -> None:
    good, bad = png_bytes(200, seed=1), b"not an image"
    (outbox.inbox / "a.png").write_bytes(good)
    (outbox.inbox / "bad.png").write_bytes(bad)
    claim = _claim(outbox, {"a.png": "done", "bad.png": "failed"})
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert warnings == [] and os.listdir(outbox.inbox) == []
    assert (outbox.done / "a.png").read_bytes() == good and (outbox.failed / "bad.png").read_bytes() == bad
    done, failed = claim.entries
    assert json.loads((outbox.done / "a.png.json").read_text()) == done.record
    assert json.loads((outbox.failed / "bad.png.error.json").read_text()) == failed.record
    assert _jsonl(outbox) == [done.record, failed.record]
    assert _csv_ids(outbox) == [done.id, failed.id]
    assert outbox.journal.read() is None
    leftovers = [p.name for d in (outbox.done, outbox.failed) for p in d.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # every write was a temp file renamed into place


def test_finishing_after_a_crash_at_any_step_duplicates_nothing(outbox: Outbox) -> None:
    (outbox.inbox / "a.png").write_bytes(png_bytes(200, seed=1))
    (outbox.inbox / "b.png").write_bytes(png_bytes(200, seed=2))
    claim = _claim(outbox, {"a.png": "done", "b.png": "done"})
    # what a kill -9 in the middle of the results.jsonl append leaves: moved, half a batch of lines
    for entry in claim.entries:
        os.rename(entry.source, entry.target)
    data = outbox.jsonl.encode([e.record for e in claim.entries])
    outbox.jsonl.write_bytes(data[: len(data) // 2 + 5])
    restarted = Outbox(outbox.root, outbox.inbox)
    restarted.ensure_layout()
    recovered = restarted.journal.read()
    assert recovered is not None and [e.id for e in recovered.entries] == [e.id for e in claim.entries]
    restarted.finish(recovered, _collect([]), verify_content=True)
    ids = [e.id for e in claim.entries]
    assert [r["id"] for r in _jsonl(outbox)] == ids and _csv_ids(outbox) == ids
    assert sorted(os.listdir(outbox.done)) == ["a.png", "a.png.json", "b.png", "b.png.json"]
    # and once more, as if the crash came just before the journal was cleared
    restarted.journal.write(recovered)
    restarted.finish(recovered, _collect([]), verify_content=True)
    assert [r["id"] for r in _jsonl(outbox)] == ids and _csv_ids(outbox) == ids
    assert sorted(os.listdir(outbox.done)) == ["a.png", "a.png.json", "b.png", "b.png.json"]


def test_an_input_replaced_before_the_move_keeps_its_result_without_the_file(outbox: Outbox) -> None:
    (outbox.inbox / "a.png").write_bytes(png_bytes(200, seed=1))
    claim = _claim(outbox, {"a.png": "done"})
    newer = png_bytes(25, seed=9)
    (outbox.inbox / "a.png.new").write_bytes(newer)
    os.rename(outbox.inbox / "a.png.new", outbox.inbox / "a.png")  # another file, same name
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert (outbox.inbox / "a.png").read_bytes() == newer  # left for its own result
    assert not (outbox.done / "a.png").exists()
    assert _jsonl(outbox)[0]["moved_to"] is None
    assert json.loads((outbox.done / "a.png.json").read_text())["moved_to"] is None
    assert [fields["name"] for _, fields in warnings] == ["a.png"] and "replaced" in warnings[0][0]


def test_a_name_taken_after_the_claim_is_never_overwritten(outbox: Outbox) -> None:
    ours = png_bytes(200, seed=1)
    (outbox.inbox / "a.png").write_bytes(ours)
    claim = _claim(outbox, {"a.png": "done"})
    (outbox.done / "a.png").write_bytes(b"someone else's file")
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert (outbox.done / "a.png").read_bytes() == b"someone else's file"
    assert (outbox.done / "a (2).png").read_bytes() == ours
    assert warnings[0][1]["moved_to"] == str(outbox.done / "a (2).png")


def test_an_input_that_cannot_be_moved_is_stuck_alone(outbox: Outbox, immutable: list[Path]) -> None:
    (outbox.inbox / "locked.png").write_bytes(png_bytes(200, seed=1))
    (outbox.inbox / "fine.png").write_bytes(png_bytes(200, seed=2))
    claim = _claim(outbox, {"locked.png": "done", "fine.png": "done"})
    _make_immutable(immutable, outbox.inbox / "locked.png")
    stuck: list[InputStuckError] = []

    def later(entry: JournalEntry, exc: InputStuckError, _claim: Claim) -> None:
        stuck.append(exc)
        return None  # tried again later: not part of this batch

    outbox.finish(claim, _collect([]), stuck=later)
    assert [e.errno for e in stuck] == [errno.EPERM]
    assert stuck[0].filename == str(outbox.inbox / "locked.png")
    assert os.listdir(outbox.inbox) == ["locked.png"] and (outbox.done / "fine.png").exists()
    assert [r["original_name"] for r in _jsonl(outbox)] == ["fine.png"]
    # without a decision the error stops the claim, with the journal kept for a retry
    again = _claim(outbox, {"locked.png": "done"})
    with pytest.raises(InputStuckError):
        outbox.finish(again, _collect([]))
    assert outbox.journal.read() is not None


def test_an_input_given_up_in_the_inbox_is_remembered_as_left(outbox: Outbox, immutable: list[Path]) -> None:
    path = outbox.inbox / "locked.png"
    path.write_bytes(b"x")
    claim = _claim(outbox, {"locked.png": "failed"})
    _make_immutable(immutable, path)

    def give_up(entry: JournalEntry, exc: InputStuckError, _claim: Claim) -> JournalEntry:
        entry.target, entry.left_in_inbox, entry.record["moved_to"] = "", True, None
        return entry

    outbox.finish(claim, _collect([]), stuck=give_up)
    assert outbox.load_left() == {"locked.png": left_signature(os.lstat(path))}
    assert _jsonl(outbox)[0]["moved_to"] is None and (outbox.failed / "locked.png.error.json").exists()


def test_left_in_inbox_survives_a_restart_and_a_damaged_file_forgets_it(outbox: Outbox) -> None:
    outbox.save_left({"a.png": (1, 2, 3, 4, 5), "b.png": (6, 7, 8, 9, 10)})
    assert Outbox(outbox.root, outbox.inbox).load_left() == {
        "a.png": (1, 2, 3, 4, 5),
        "b.png": (6, 7, 8, 9, 10),
    }
    outbox.left_path.write_text(json.dumps({"inputs": {"ok.png": [1, 2, 3, 4, 5], "bad.png": [1, "x"]}}))
    assert outbox.load_left() == {"ok.png": (1, 2, 3, 4, 5)}
    outbox.left_path.write_text("{torn")
    assert outbox.load_left() == {}  # costs at most one more try of those inputs


def test_a_claim_is_not_decided_while_its_inbox_is_missing_or_another_disk(tmp_path: Path) -> None:
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


def test_a_finish_without_its_inbox_keeps_the_journal(outbox: Outbox) -> None:
    (outbox.inbox / "a.png").write_bytes(b"x")
    claim = _claim(outbox, {"a.png": "failed"})
    shutil.rmtree(outbox.inbox)  # a share unmounted after the claim
    with pytest.raises(InboxGoneError):
        outbox.finish(claim, _collect([]))
    assert outbox.journal.read() is not None and not outbox.jsonl.path.exists()


# -- across filesystems --------------------------------------------------------------
@pytest.fixture
def shm_inbox(tmp_path: Path) -> Iterator[Path]:
    """An inbox on /dev/shm (tmpfs) while the outbox is under tmp_path: moves cross a device."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    inbox = Path(tempfile.mkdtemp(prefix="pneumo-inbox-", dir="/dev/shm"))
    try:
        if os.stat(inbox).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem as tmp_path")
        yield inbox
    finally:
        shutil.rmtree(inbox, ignore_errors=True)


def test_across_filesystems_a_file_is_copied_verified_then_removed(tmp_path: Path, shm_inbox: Path) -> None:
    box = Outbox(tmp_path / "out", shm_inbox)
    box.ensure_layout()
    data = png_bytes(200, seed=3)
    (shm_inbox / "a.png").write_bytes(data)
    claim = _claim(box, {"a.png": "done"})
    warnings: Warnings = []
    box.finish(claim, _collect(warnings))
    assert (box.done / "a.png").read_bytes() == data and not (shm_inbox / "a.png").exists()
    # no ".pneumo-copy-*.tmp" left behind: the copy was renamed into place after its check
    assert warnings == [] and sorted(p.name for p in box.done.iterdir()) == ["a.png", "a.png.json"]


def test_across_filesystems_a_link_is_parked_in_the_inbox_never_copied(
    tmp_path: Path, shm_inbox: Path
) -> None:
    box = Outbox(tmp_path / "out", shm_inbox)
    box.ensure_layout()
    os.symlink("/etc/passwd", shm_inbox / "l.png")
    claim = _claim(box, {"l.png": "failed"})
    parked = shm_inbox / QUARANTINE_DIR / "l.png"
    assert claim.entries[0].target == str(parked)
    warnings: Warnings = []
    box.finish(claim, _collect(warnings))
    assert os.readlink(parked) == "/etc/passwd" and not (box.failed / "l.png").exists()
    assert json.loads((box.failed / "l.png.error.json").read_text())["moved_to"] == str(parked)
    assert warnings == [] and sorted(p.name for p in box.failed.iterdir()) == ["l.png.error.json"]


# -- fault injection -----------------------------------------------------------------
def test_failpoint_counts_to_the_nth_time() -> None:
    point = Failpoint("after-move:3")
    assert [point.wants("after-move") for _ in range(3)] == [False, False, True]
    assert not Failpoint("").wants("after-move")
    with pytest.raises(ValueError):
        Failpoint("after-move:0")
