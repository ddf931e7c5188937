"""Fixtures shared by the watch-daemon tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def boxes(tmp_path: Path) -> tuple[Path, Path]:
    """An inbox that exists and an outbox the daemon creates at its first start."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    return inbox, outbox
