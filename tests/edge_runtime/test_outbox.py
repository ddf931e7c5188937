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
import signal
import subprocess
import sys
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
    share_remounted,
)
from edge_runtime.results import CSV_COLUMNS
from tests.edge_runtime.watch_harness import REPO, is_mounted, mount, png_bytes, tmpfs_under_number, umount

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


def _finish_until_killed(box: Outbox, failpoint: str) -> None:
    """Finish the journal's claim in another process, SIGKILLed by the outbox's failpoint there."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom edge_runtime.outbox import Failpoint, Outbox\n"
        "box = Outbox(Path(sys.argv[1]), Path(sys.argv[2]))\nbox.ensure_layout()\n"
        "box.finish(box.journal.read(), lambda *_: None, Failpoint(sys.argv[3]))\n"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script, str(box.root), str(box.inbox), failpoint],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr


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


@pytest.mark.parametrize("taken", ["a.png", "a.png.json"])
def test_a_name_taken_after_the_claim_gives_the_input_and_its_result_one_new_name(
    outbox: Outbox, taken: str
) -> None:
    """The input's name or its JSON's: the records name this input's files, never the other ones."""
    ours = png_bytes(200, seed=1)
    (outbox.inbox / "a.png").write_bytes(ours)
    claim = _claim(outbox, {"a.png": "done"})
    (outbox.done / taken).write_bytes(b"someone else's file")
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert (outbox.done / taken).read_bytes() == b"someone else's file"
    assert (outbox.done / "a (2).png").read_bytes() == ours
    [line] = _jsonl(outbox)
    assert line["moved_to"] == "done/a (2).png" and line["result_file"] == "done/a (2).png.json"
    assert json.loads((outbox.done / "a (2).png.json").read_text()) == line
    assert warnings[0][1]["moved_to"] == str(outbox.done / "a (2).png")


def test_a_crash_right_after_a_move_to_a_new_name_is_finished_from_the_journal(outbox: Outbox) -> None:
    """The journal names the new name before the rename: a process killed right after the rename,
    before finish() writes the journal again (a real SIGKILL, from the outbox's ``after-rename``
    failpoint), leaves a claim whose recovery finds the input there."""
    ours = png_bytes(200, seed=1)
    (outbox.inbox / "a.png").write_bytes(ours)
    _claim(outbox, {"a.png": "done"})
    (outbox.done / "a.png").write_bytes(b"someone else's file")
    _finish_until_killed(outbox, "after-rename")
    assert (outbox.done / "a (2).png").read_bytes() == ours and os.listdir(outbox.inbox) == []
    assert not (outbox.done / "a (2).png.json").exists()  # killed before the result was written
    left = outbox.journal.read()
    assert left is not None and left.entries[0].target == str(outbox.done / "a (2).png")
    restarted = Outbox(outbox.root, outbox.inbox)
    restarted.ensure_layout()
    warnings: Warnings = []
    restarted.finish(left, _collect(warnings), verify_content=True)
    assert warnings == []  # not "input left the inbox ... before it was moved"
    [line] = _jsonl(outbox)
    assert line["moved_to"] == "done/a (2).png"
    assert json.loads((outbox.done / "a (2).png.json").read_text()) == line
    assert (outbox.done / "a.png").read_bytes() == b"someone else's file"


def test_names_that_differ_only_in_case_get_files_of_their_own_in_one_batch(outbox: Outbox) -> None:
    """On a case-insensitive outbox (exFAT, CIFS) IMG1.JPG and img1.jpg are one file, and the second
    result would replace the first. No such filesystem mounts here (no vfat or exfat, and tmpfs and
    ext4 casefold need a kernel with CONFIG_UNICODE), so the plan is checked: case-folded, no two
    inputs of a batch share a name."""
    for name, seed in (("IMG1.JPG", 1), ("img1.jpg", 2)):
        (outbox.inbox / name).write_bytes(png_bytes(200, seed=seed))
    claim = _claim(outbox, {"IMG1.JPG": "done", "img1.jpg": "done"})
    names = [Path(p).name.casefold() for e in claim.entries for p in (e.target, e.result_path)]
    assert len(set(names)) == 4, names
    outbox.finish(claim, _collect([]))
    for entry in claim.entries:
        assert json.loads(Path(entry.result_path).read_text()) == entry.record
    # the names another part reserves as they are (watch_retries) are compared case-folded too
    reserved = {str(outbox.done / "X.PNG")}
    assert outbox.plan("x.png", "file", "done", reserved, "t")[0] == str(outbox.done / "x (2).png")


def test_a_result_json_of_another_file_is_never_replaced(outbox: Outbox) -> None:
    """A file at the result JSON's name after the input was moved: the JSON gets a new name, the
    batch goes on (the whole inbox would otherwise wait until someone removed that file)."""
    (outbox.inbox / "a.png").write_bytes(png_bytes(200, seed=1))
    claim = _claim(outbox, {"a.png": "done"})
    entry = claim.entries[0]
    os.rename(entry.source, entry.target)  # a crash after the move...
    # ...and a file of its JSON's name since, and of the first new name too
    (outbox.done / "a.png.json").write_text('{"id": "someone else"}')
    (outbox.done / "a.png (2).json").write_text("another one")
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert (outbox.done / "a.png.json").read_text() == '{"id": "someone else"}'
    assert (outbox.done / "a.png (2).json").read_text() == "another one"
    [line] = _jsonl(outbox)
    assert line["moved_to"] == "done/a.png" and line["result_file"] == "done/a.png (3).json"
    assert json.loads((outbox.done / "a.png (3).json").read_text()) == line and _csv_ids(outbox) == [entry.id]
    assert [(fields["claimed"], fields["result_file"]) for _, fields in warnings] == [
        (str(outbox.done / "a.png.json"), str(outbox.done / "a.png (3).json"))
    ]
    assert outbox.journal.read() is None
    assert sorted(os.listdir(outbox.done)) == ["a.png", "a.png (2).json", "a.png (3).json", "a.png.json"]


def test_a_crash_after_a_result_json_got_a_new_name_is_finished_under_that_name(outbox: Outbox) -> None:
    """The journal names the JSON's new name before it is written: a recovery after a SIGKILL right
    after the write finds it there, and neither renames nor writes it again."""
    (outbox.inbox / "a.png").write_bytes(png_bytes(200, seed=1))
    claim = _claim(outbox, {"a.png": "done"})
    entry = claim.entries[0]
    os.rename(entry.source, entry.target)
    (outbox.done / "a.png.json").write_text('{"id": "someone else"}')
    _finish_until_killed(outbox, "after-result-json")
    left = outbox.journal.read()
    assert left is not None and left.entries[0].result_path == str(outbox.done / "a.png (2).json")
    restarted = Outbox(outbox.root, outbox.inbox)
    restarted.ensure_layout()
    warnings: Warnings = []
    restarted.finish(left, _collect(warnings), verify_content=True)
    assert warnings == []
    [line] = _jsonl(outbox)
    assert line["result_file"] == "done/a.png (2).json"
    assert json.loads((outbox.done / "a.png (2).json").read_text()) == line
    assert sorted(os.listdir(outbox.done)) == ["a.png", "a.png (2).json", "a.png.json"]


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
    claim = Claim("b" * 32, 0, 0, [entry])
    with pytest.raises(InboxGoneError, match="another filesystem"):  # an empty mount point
        outbox._move(entry, claim, lambda *_: None)
    shutil.rmtree(inbox)
    with pytest.raises(InboxGoneError, match="inbox is missing"):
        outbox._move(entry, claim, lambda *_: None)
    # waited long enough: decided as before, "nothing moved"
    assert outbox._move(entry, claim, lambda *_: None, require_inbox=False) == set()
    assert entry.record["moved_to"] is None


def test_a_finish_without_its_inbox_keeps_the_journal(outbox: Outbox) -> None:
    (outbox.inbox / "a.png").write_bytes(b"x")
    claim = _claim(outbox, {"a.png": "failed"})
    shutil.rmtree(outbox.inbox)  # a share unmounted after the claim
    with pytest.raises(InboxGoneError):
        outbox.finish(claim, _collect([]))
    assert outbox.journal.read() is not None and not outbox.jsonl.path.exists()


# -- a share back under a new device number ---------------------------------------------
@pytest.mark.parametrize(
    ("entry_dev", "inbox_dev", "parent_dev", "remounted"),
    [
        (50, 51, 8, True),  # the share, mounted again under another anonymous number
        (50, 50, 8, False),  # the same number: the inode decides, as always
        (50, 8, 8, False),  # the empty mount point of a share not mounted yet: wait
        (8, 51, 8, False),  # a plain local folder then, something mounted over it now: wait
        (0, 51, 8, False),  # no device recorded: no evidence
    ],
)
def test_a_share_counts_as_remounted_only_on_all_the_evidence(
    entry_dev: int, inbox_dev: int, parent_dev: int, remounted: bool
) -> None:
    assert share_remounted(entry_dev, inbox_dev, parent_dev) is remounted


class Mounts:
    """tmpfs mounts made by a test, undone (lazily, innermost first) whatever happens."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path) -> Path:
        path.mkdir(exist_ok=True)
        result = mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path))
        assert result.returncode == 0, result.stderr
        self.points.append(path)
        return path

    def bind(self, source: Path, path: Path) -> Path:
        path.mkdir(exist_ok=True)
        result = mount("--bind", str(source), str(path))
        assert result.returncode == 0, result.stderr
        self.points.append(path)
        return path

    def undo(self) -> None:
        for path in reversed(self.points):
            for _ in range(4):  # a path may have more than one mount on it
                if not is_mounted(path):
                    break
                umount(path)


@pytest.fixture
def mounts(can_mount: None) -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.undo()


@pytest.fixture
def share_box(tmp_path: Path, mounts: Mounts) -> Outbox:
    """An outbox under tmp_path whose inbox ``in/`` is a share (a tmpfs mounted on it)."""
    mounts.tmpfs(tmp_path / "in")
    box = Outbox(tmp_path / "out", tmp_path / "in")
    box.ensure_layout()
    return box


def _reboot_share(box: Outbox, mounts: Mounts, keep: dict[str, bytes] | None = None) -> None:
    """The share comes back after a reboot: another filesystem (a new device number, other inode
    numbers) holding the same files with the same bytes and mtimes; ``keep`` narrows them."""
    saved = {p.name: (p.read_bytes(), os.lstat(p).st_mtime_ns) for p in box.inbox.iterdir()}
    before = os.stat(box.inbox).st_dev
    # mounted over the old one, which keeps its number: a number freed by umount is reused at once
    mounts.tmpfs(box.inbox)
    assert os.stat(box.inbox).st_dev != before
    for i in range(5):  # other inode numbers than the first mount gave
        (box.inbox / f".filler{i}").write_bytes(b"")
        (box.inbox / f".filler{i}").unlink()
    for name, (data, mtime_ns) in saved.items():
        if keep is not None and name not in keep:
            continue
        path = box.inbox / name
        path.write_bytes(data if keep is None else keep[name])
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _remount_warnings(warnings: Warnings) -> list[dict[str, object]]:
    return [fields for msg, fields in warnings if "new device number" in msg]


def test_after_a_reboot_a_share_under_a_new_device_number_is_finished_from_it(
    share_box: Outbox, mounts: Mounts
) -> None:
    data = {"a.png": png_bytes(200, seed=1), "b.png": png_bytes(30, seed=2)}
    for name, content in data.items():
        (share_box.inbox / name).write_bytes(content)
    claim = _claim(share_box, {"a.png": "done", "b.png": "done"})
    old = {e.name: (e.ino, e.dev) for e in claim.entries}
    _reboot_share(share_box, mounts)
    now = {p.name: (os.lstat(p).st_ino, os.lstat(p).st_dev) for p in share_box.inbox.iterdir()}
    assert all(now[n][1] != old[n][1] and now[n][0] != old[n][0] for n in old)
    recovered = share_box.journal.read()
    assert recovered is not None
    warnings: Warnings = []
    share_box.finish(recovered, _collect(warnings), verify_content=True)
    assert os.listdir(share_box.inbox) == []
    assert all((share_box.done / name).read_bytes() == content for name, content in data.items())
    assert [r["moved_to"] for r in _jsonl(share_box)] == ["done/a.png", "done/b.png"]
    assert _remount_warnings(warnings) == [{"inbox": str(share_box.inbox), "names": ["a.png", "b.png"]}]
    assert len(warnings) == 1


def test_a_live_batch_whose_share_was_remounted_waits_for_the_sha256_check(
    share_box: Outbox, mounts: Mounts
) -> None:
    """Without a sha256 check (a live batch) the claim is left to the recovery, never decided."""
    (share_box.inbox / "a.png").write_bytes(png_bytes(200, seed=1))
    claim = _claim(share_box, {"a.png": "done"})
    _reboot_share(share_box, mounts)
    with pytest.raises(InboxGoneError, match="new device number"):
        share_box.finish(claim, _collect([]))
    assert share_box.journal.read() is not None and not share_box.jsonl.path.exists()
    share_box.finish(claim, _collect([]), verify_content=True)
    assert (share_box.done / "a.png").exists() and os.listdir(share_box.inbox) == []


def test_a_remounted_share_without_the_input_is_decided_at_once(share_box: Outbox, mounts: Mounts) -> None:
    for name in ("gone.png", "kept.png"):
        (share_box.inbox / name).write_bytes(png_bytes(200, seed=len(name)))
    claim = _claim(share_box, {"gone.png": "done", "kept.png": "done"})
    _reboot_share(share_box, mounts, keep={"kept.png": (share_box.inbox / "kept.png").read_bytes()})
    warnings: Warnings = []
    share_box.finish(claim, _collect(warnings), verify_content=True)  # no InboxGoneError: no wait
    assert {r["original_name"]: r["moved_to"] for r in _jsonl(share_box)} == {
        "gone.png": None,
        "kept.png": "done/kept.png",
    }
    assert _remount_warnings(warnings)[0]["names"] == ["gone.png", "kept.png"]


def test_a_remounted_share_never_passes_off_another_file_as_the_input(
    share_box: Outbox, mounts: Mounts
) -> None:
    names = ("other bytes.png", "other mtime.png", "no sha.png")
    for i, name in enumerate(names):
        (share_box.inbox / name).write_bytes(png_bytes(200, seed=i))
    claim = _claim(share_box, {name: "done" for name in names})
    claim.entries[2].sha256 = ""  # as a failed read may leave it: nothing to prove the bytes with
    keep = {name: (share_box.inbox / name).read_bytes() for name in names}
    flipped = bytearray(keep["other bytes.png"])
    flipped[-1] ^= 0xFF  # same size and mtime, other bytes
    keep["other bytes.png"] = bytes(flipped)
    _reboot_share(share_box, mounts, keep=keep)
    later = os.lstat(share_box.inbox / "other mtime.png").st_mtime_ns + 1_000_000_000
    os.utime(share_box.inbox / "other mtime.png", ns=(later, later))
    warnings: Warnings = []
    share_box.finish(claim, _collect(warnings), verify_content=True)
    assert [r["moved_to"] for r in _jsonl(share_box)] == [None, None, None]
    assert sorted(os.listdir(share_box.inbox)) == sorted(names)  # each processed later on its own
    assert {name: (share_box.inbox / name).read_bytes() for name in names} == keep
    assert sorted(os.listdir(share_box.done)) == sorted(f"{name}.json" for name in names)
    assert _remount_warnings(warnings) == []


def _reboot_share_under_its_number(box: Outbox, mounts: Mounts, keep: dict[str, bytes] | None = None) -> None:
    """The share comes back after a reboot under the device number it had (anonymous numbers are
    reused, smallest free first) and, as with CIFS ``noserverino``, with other inode numbers."""
    saved = {p.name: (p.read_bytes(), os.lstat(p)) for p in box.inbox.iterdir()}
    before = os.stat(box.inbox).st_dev
    umount(box.inbox)
    tmpfs_under_number(box.inbox, before, mounts.tmpfs)
    for name, (data, old) in saved.items():
        if keep is not None and name not in keep:
            continue
        path = box.inbox / name
        path.write_bytes(data if keep is None else keep[name])
        os.utime(path, ns=(old.st_mtime_ns, old.st_mtime_ns))
        now = os.lstat(path)
        assert now.st_dev == old.st_dev and now.st_ino != old.st_ino, name


def _content_warnings(warnings: Warnings) -> list[dict[str, object]]:
    return [fields for msg, fields in warnings if "other inode numbers" in msg]


def test_after_a_reboot_a_share_under_its_old_device_number_with_new_inodes_is_finished_from_it(
    share_box: Outbox, mounts: Mounts
) -> None:
    """Same device number, other inodes: the claimed inputs are recognised by their bytes, once."""
    data = {name: png_bytes(200, seed=i) for i, name in enumerate(("a.png", "b.png", "changed.png"))}
    for name, content in data.items():
        (share_box.inbox / name).write_bytes(content)
    _claim(share_box, dict.fromkeys(data, "done"))  # the journal the crash left
    flipped = bytearray(data["changed.png"])
    flipped[-1] ^= 0xFF  # same size and mtime, other bytes: another image
    _reboot_share_under_its_number(share_box, mounts, keep={**data, "changed.png": bytes(flipped)})
    recovered = share_box.journal.read()
    assert recovered is not None
    warnings: Warnings = []
    share_box.finish(recovered, _collect(warnings), verify_content=True)
    assert {r["original_name"]: r["moved_to"] for r in _jsonl(share_box)} == {
        "a.png": "done/a.png",
        "b.png": "done/b.png",
        "changed.png": None,
    }
    assert all((share_box.done / n).read_bytes() == data[n] for n in ("a.png", "b.png"))
    assert os.listdir(share_box.inbox) == ["changed.png"]  # processed later as a new input
    assert (share_box.inbox / "changed.png").read_bytes() == bytes(flipped)
    assert _content_warnings(warnings) == [{"inbox": str(share_box.inbox), "names": ["a.png", "b.png"]}]
    assert _remount_warnings(warnings) == []


def test_a_live_input_swapped_for_a_copy_with_its_bytes_and_mtime_is_still_the_input(outbox: Outbox) -> None:
    data = png_bytes(200, seed=1)
    (outbox.inbox / "a.png").write_bytes(data)
    claim = _claim(outbox, {"a.png": "done"})
    shutil.copy2(outbox.inbox / "a.png", outbox.inbox / "a.png.copy")
    os.rename(outbox.inbox / "a.png.copy", outbox.inbox / "a.png")  # a new inode, the same bytes and mtime
    assert os.lstat(outbox.inbox / "a.png").st_ino != claim.entries[0].ino
    warnings: Warnings = []
    outbox.finish(claim, _collect(warnings))
    assert [r["moved_to"] for r in _jsonl(outbox)] == ["done/a.png"]
    assert (outbox.done / "a.png").read_bytes() == data and os.listdir(outbox.inbox) == []
    assert _content_warnings(warnings) == [{"inbox": str(outbox.inbox), "names": ["a.png"]}]


def test_a_copy_beside_a_verified_move_is_never_unlinked(tmp_path: Path, mounts: Mounts) -> None:
    """Killed after the copy into done/, before the unlink; the original since replaced by a copy
    of it (a new inode of that filesystem). It may be a delivery made again: it stays."""
    box = _box_on_two_mounts_of_one_disk(tmp_path, mounts)
    inbox, data = box.inbox, png_bytes(200, seed=1)
    (inbox / "a.png").write_bytes(data)
    claim = _claim(box, {"a.png": "done"})
    shutil.copy2(inbox / "a.png", box.done / "a.png")  # the verified copy; killed before the unlink
    shutil.copy2(inbox / "a.png", inbox / "again.tmp")
    os.rename(inbox / "again.tmp", inbox / "a.png")
    box.finish(claim, _collect([]), verify_content=True)
    assert (inbox / "a.png").read_bytes() == data and (box.done / "a.png").read_bytes() == data
    assert [r["moved_to"] for r in _jsonl(box)] == ["done/a.png"]


def test_a_local_inbox_with_something_mounted_over_it_still_waits(tmp_path: Path, mounts: Mounts) -> None:
    """A plain folder at claim time, a filesystem mounted over it now: its files are hidden, not gone."""
    (tmp_path / "in").mkdir()
    box = Outbox(tmp_path / "out", tmp_path / "in")
    box.ensure_layout()
    (box.inbox / "hidden.png").write_bytes(png_bytes(200, seed=1))
    (box.inbox / "copied.png").write_bytes(png_bytes(200, seed=2))
    claim = _claim(box, {"hidden.png": "done", "copied.png": "done"})
    _reboot_share(box, mounts, keep={"copied.png": (box.inbox / "copied.png").read_bytes()})
    with pytest.raises(InboxGoneError, match="another filesystem"):
        box.finish(claim, _collect([]), verify_content=True)
    assert box.journal.read() is not None and not box.jsonl.path.exists()
    umount(box.inbox)  # the folder itself again: finished from it
    box.finish(claim, _collect([]), verify_content=True)
    assert sorted(os.listdir(box.done)) == ["copied.png", "copied.png.json", "hidden.png", "hidden.png.json"]


def test_a_verified_copy_whose_original_was_not_yet_removed_is_completed_after_a_remount(
    share_box: Outbox, mounts: Mounts
) -> None:
    """Killed between the copy into done/ and the unlink from the share, then rebooted."""
    data = png_bytes(200, seed=1)
    (share_box.inbox / "a.png").write_bytes(data)
    claim = _claim(share_box, {"a.png": "done"})
    shutil.copy2(share_box.inbox / "a.png", share_box.done / "a.png")
    _reboot_share(share_box, mounts)
    share_box.finish(claim, _collect([]), verify_content=True)
    assert os.listdir(share_box.inbox) == [] and (share_box.done / "a.png").read_bytes() == data
    assert [r["moved_to"] for r in _jsonl(share_box)] == ["done/a.png"]


def _box_on_two_mounts_of_one_disk(tmp_path: Path, mounts: Mounts) -> Outbox:
    """Inbox and outbox on one tmpfs seen through two mounts: one device number, yet a rename
    between them is EXDEV, so inputs are copied."""
    disk = mounts.tmpfs(tmp_path / "disk")
    (disk / "in").mkdir()
    box = Outbox(disk / "out", mounts.bind(disk / "in", tmp_path / "in"))
    box.ensure_layout()
    return box


def test_a_verified_copy_on_the_inbox_device_has_its_original_removed(tmp_path: Path, mounts: Mounts) -> None:
    """Inbox and outbox on one filesystem through two mounts: a rename is EXDEV, so the input is
    copied, and the copy has the original's device number; the original must still go."""
    box = _box_on_two_mounts_of_one_disk(tmp_path, mounts)
    inbox, data = box.inbox, png_bytes(200, seed=1)
    (inbox / "a.png").write_bytes(data)
    claim = _claim(box, {"a.png": "done"})
    with pytest.raises(OSError) as crossed:
        os.link(inbox / "a.png", box.done / "probe")  # across two mounts, as a rename would be
    assert crossed.value.errno == errno.EXDEV
    shutil.copy2(inbox / "a.png", box.done / "a.png")  # killed before the unlink
    assert os.stat(box.done / "a.png").st_dev == claim.entries[0].dev
    box.finish(claim, _collect([]), verify_content=True)
    assert os.listdir(inbox) == [] and (box.done / "a.png").read_bytes() == data


def test_a_share_mounted_above_the_inbox_is_recognised_and_a_local_folder_hidden_by_one_waits(
    tmp_path: Path, mounts: Mounts
) -> None:
    """``mnt/inbox``: claimed on a share mounted on ``mnt/`` and back under a new number, it is
    finished from the share; claimed as a plain folder and now under a share, it waits."""
    data = png_bytes(200, seed=1)
    for case in ("share", "local"):
        mnt = tmp_path / case / "mnt"
        mnt.mkdir(parents=True)
        if case == "share":
            mounts.tmpfs(mnt)
        (mnt / "inbox").mkdir()
        box = Outbox(tmp_path / case / "out", mnt / "inbox")
        box.ensure_layout()
        (box.inbox / "a.png").write_bytes(data)
        mtime_ns = os.lstat(box.inbox / "a.png").st_mtime_ns
        claim = _claim(box, {"a.png": "done"})
        mounts.tmpfs(mnt)  # over the old one, which keeps its number: surely a new one
        (mnt / "inbox").mkdir()
        (box.inbox / "a.png").write_bytes(data)
        os.utime(box.inbox / "a.png", ns=(mtime_ns, mtime_ns))
        warnings: Warnings = []
        if case == "local":
            with pytest.raises(InboxGoneError, match="another filesystem"):
                box.finish(claim, _collect(warnings), verify_content=True)
            assert box.journal.read() is not None and not box.jsonl.path.exists()
            continue
        box.finish(claim, _collect(warnings), verify_content=True)
        assert [r["moved_to"] for r in _jsonl(box)] == ["done/a.png"] and os.listdir(box.inbox) == []
        assert _remount_warnings(warnings) == [{"inbox": str(box.inbox), "names": ["a.png"]}]


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


def test_a_finish_reports_progress_for_every_input_and_every_mib_copied_or_hashed(
    tmp_path: Path, shm_inbox: Path
) -> None:
    """The daemon's watchdog ping rides on these calls: copying large inputs to another disk over
    a slow share is progress, however long the batch, and only a stuck step goes unreported."""
    calls: list[None] = []
    box = Outbox(tmp_path / "out", shm_inbox, progress=lambda: calls.append(None))
    box.ensure_layout()
    large = os.urandom(3 * (1 << 20) + 1)  # four chunks
    (shm_inbox / "large.png").write_bytes(large)
    (shm_inbox / "small.png").write_bytes(png_bytes(200))
    claim = _claim(box, {"large.png": "done", "small.png": "done"})
    box.finish(claim, _collect([]))
    # one per input; the large one copied (4 chunks) and read back to verify (4); the small one 1 + 1
    assert len(calls) == 2 + 4 + 4 + 1 + 1
    assert (box.done / "large.png").read_bytes() == large


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
    assert Failpoint("after-move").signal == signal.SIGKILL
    assert Failpoint("reading:2:sigterm").signal == signal.SIGTERM  # a stop landing there
    with pytest.raises(ValueError, match="SIGKILL, SIGTERM, SIGINT"):
        Failpoint("reading:1:SIGHUP")
