"""``--tar``: the archive is packed from the staging folder before anything is installed, so the
bundle and the archive beside it are always a matching pair, old or new."""

from __future__ import annotations

import resource
import shutil
import signal
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from export.bundle import StepResult, install_bundle, make_bundle
from export.config import BundleConfig, GoldenConfig
from export.errors import ExportError, OutputExistsError
from tests.export.conftest import TinyRun


def _staged(tiny_bundle: Path, parent: Path) -> Path:
    """A finished bundle in a staging folder, as make_bundle leaves it before installing."""
    staging = parent / ".b.building-1"
    shutil.move(tiny_bundle, staging)
    return staging


def test_the_archive_holds_the_final_name_and_no_temporary_file_is_left(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    listed = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    archive = install_bundle(_staged(tiny_bundle, parent), parent / "b", overwrite=False, tar=True)
    assert archive == parent / "b.tar.gz"
    with tarfile.open(archive) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == [f"b/{rel}" for rel in listed]
    assert sorted(p.name for p in parent.iterdir()) == ["b", "b.tar.gz"]
    assert archive.stat().st_mode & 0o777 == 0o644

    # an archive in the way (one that appeared during the build): nothing is installed
    second = parent / ".c.building-1"
    shutil.copytree(parent / "b", second)
    (parent / "c.tar.gz").write_bytes(b"somebody's archive")
    with pytest.raises(OutputExistsError, match=r"c\.tar\.gz: exists; pass --overwrite"):
        install_bundle(second, parent / "c", overwrite=False, tar=True)
    assert not (parent / "c").exists() and second.is_dir()
    assert (parent / "c.tar.gz").read_bytes() == b"somebody's archive"
    assert not list(parent.glob(".c.tar.gz.*")), "the packed archive is removed"


@contextmanager
def _file_size_limit_restored() -> Iterator[None]:
    """Restore RLIMIT_FSIZE afterwards; meanwhile writes past a lowered limit fail with EFBIG.

    A real write failure, as on a full disk, without filling one: the kernel refuses the bytes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's kill
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.tf
def test_a_failed_archive_keeps_the_previous_bundle_and_archive_together(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    config = BundleConfig(precisions=("fp32",), golden=GoldenConfig(size=8), bootstrap=0, tar=True)
    make_bundle(tiny_run.folder, root, config)
    old_manifest = (root / "manifest.json").read_bytes()
    old_archive = (tmp_path / "bundle.tar.gz").read_bytes()
    limit = 1024
    assert len(old_archive) > limit, "the archive must outgrow the limit for the write to fail"

    def after_manifest(step: StepResult) -> None:
        # every step has written its files: from here on only the archive is written
        if step.name == "manifest":
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    # another golden set size: the new bundle's manifest differs from the old one's
    new = BundleConfig(
        precisions=("fp32",), golden=GoldenConfig(size=12), bootstrap=0, tar=True, overwrite=True
    )
    with _file_size_limit_restored(), pytest.raises(ExportError) as caught:
        make_bundle(tiny_run.folder, root, new, on_step=after_manifest)
    message = str(caught.value)
    assert "bundle.tar.gz: cannot write the archive" in message and "nothing was installed" in message
    # the old pair, untouched, and nothing else left beside it
    assert (root / "manifest.json").read_bytes() == old_manifest
    assert (tmp_path / "bundle.tar.gz").read_bytes() == old_archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.tar.gz"]
