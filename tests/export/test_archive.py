"""``--tar``: the archive beside the bundle appears whole or not at all."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from export import bundle
from export.bundle import write_archive
from export.errors import OutputExistsError


def _bundle(root: Path) -> Path:
    (root / "engines").mkdir(parents=True)
    (root / "manifest.json").write_text("{}")
    (root / "engines" / "model.engine").write_bytes(b"device specific")
    return root


def test_archive_leaves_engines_out_and_no_temporary_file(tmp_path: Path) -> None:
    archive = write_archive(_bundle(tmp_path / "b"), overwrite=False)
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["b", "b/manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.tar.gz"]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_archive(tmp_path / "b", overwrite=False)


def test_a_failed_archive_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _bundle(tmp_path / "b")
    (tmp_path / "b.tar.gz").write_bytes(b"previous archive")

    def failing_open(*args: object, **kwargs: object) -> tarfile.TarFile:
        raise OSError("disk full")

    monkeypatch.setattr(bundle.tarfile, "open", failing_open)
    with pytest.raises(OSError, match="disk full"):
        write_archive(root, overwrite=True)
    assert (tmp_path / "b.tar.gz").read_bytes() == b"previous archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.tar.gz"]
