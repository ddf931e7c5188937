"""Fixtures shared by the watch-daemon tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.edge_runtime.watch_harness import mount, umount


@pytest.fixture
def boxes(tmp_path: Path) -> tuple[Path, Path]:
    """An inbox that exists and an outbox the daemon creates at its first start."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    return inbox, outbox


@pytest.fixture
def can_mount(tmp_path: Path) -> None:
    """Skip, with the reason, where this process cannot mount (no CAP_SYS_ADMIN, no mount command)."""
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot mount a share or a read-only filesystem here")
    result = mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    if result.returncode != 0:
        pytest.skip(f"cannot mount here (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
    umount(probe)
