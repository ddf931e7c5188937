"""``atomic_write_via``: path-taking writers (Keras, matplotlib, tarfile) get temp-fsync-rename too."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from edge_runtime import fileio
from edge_runtime.fileio import atomic_write_via


def test_writes_through_a_temporary_name_that_keeps_the_suffix(tmp_path: Path) -> None:
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"model")

    target = tmp_path / "run" / "model.keras"
    assert atomic_write_via(target, writer) == target
    assert target.read_bytes() == b"model"
    tmp = seen[0]
    # Keras and matplotlib pick the format from the suffix; the temp is hidden, in the same folder
    assert tmp.suffix == ".keras" and tmp.parent == target.parent and tmp.name.startswith(".model.keras.")
    assert not tmp.exists() and sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_each_call_gets_its_own_temporary_file(tmp_path: Path) -> None:
    names: list[str] = []
    for _ in range(2):
        atomic_write_via(
            tmp_path / "results.png", lambda tmp: names.append(tmp.name) or tmp.write_bytes(b"x")
        )
    assert len(set(names)) == 2, "two writers of one target never share a temporary file"


def test_a_failing_writer_leaves_the_target_untouched_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.h5"
    target.write_bytes(b"previous model")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half a mod")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_via(target, half_then_fail)
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.h5"]


def test_interrupt_also_removes_the_temporary_file(tmp_path: Path) -> None:
    def interrupted(tmp: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_via(tmp_path / "bundle.tar.gz", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write_via(tmp_path / "a.txt", lambda tmp: tmp.write_text("a"))
    assert events[:2] == ["fsync", "replace"] and events[2:] == ["fsync"], "file, rename, then its folder"


def test_works_with_tarfile_and_copyfile(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text("{}")

    def pack(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(tmp_path / "bundle", arcname="bundle")

    archive = atomic_write_via(tmp_path / "bundle.tar.gz", pack)
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["bundle", "bundle/manifest.json"]
    copy = atomic_write_via(tmp_path / "copy" / "m.json", lambda tmp: shutil.copyfile(archive, tmp))
    assert copy.read_bytes() == archive.read_bytes()
