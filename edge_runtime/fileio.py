"""Atomic file writes and content hashes.

Every file another process reads (results, manifests, sidecars, heartbeats)
is written to a temporary file in the same folder, fsynced, then renamed over
the target, so a reader never sees half a file and a crash leaves either the
old or the new version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

#: Called between the steps of long file work (each MiB read or copied, each input moved), so
#: that a supervisor's watchdog sees a slow share as progress and only a stuck step as a hang.
Progress = Callable[[], None]


def sha256_file(path: str | os.PathLike[str], progress: Progress | None = None) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (``progress`` called after each)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            if progress is not None:
                progress()
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the folder fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600 files; results, manifests and heartbeats are read by other users.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def atomic_write_via(
    path: str | os.PathLike[str], writer: Callable[[Path], object], mode: int = 0o644
) -> Path:
    """Let ``writer`` write a file at a temporary path, then fsync it and rename it over ``path``.

    For writers that insist on a path of their own (Keras ``model.save``, matplotlib ``savefig``,
    ``tarfile``, ``shutil.copyfile``). The temporary name is unique (two processes writing the same
    target never share it) and ends in the target's suffix, because Keras and matplotlib choose the
    file format from it. On any failure the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    tmp = Path(name)
    try:
        try:
            # mkstemp creates 0600 files; other users read these artifacts.
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        writer(tmp)
        # O_RDONLY is enough for fsync on Linux and macOS; the writer has closed its own handle.
        synced = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(synced)
        finally:
            os.close(synced)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target
