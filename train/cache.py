"""Decode a data set once into uint8 arrays, keyed by the preprocessing contract and file hashes.

Decoding 5,856 JPEGs costs far more than an epoch of a small CNN, so every
image is decoded **once** per contract with the runtime's own decoder and
contract (:func:`edge_runtime.preprocess.decode_bytes` and
:func:`~edge_runtime.preprocess.apply_contract`, what
:func:`~edge_runtime.preprocess.preprocess_file` runs) and stored as ``uint8``
``.npy`` shards. A small JSON index maps each file's SHA-256 **of the bytes on
disk** to a shard row. Later runs, seeds, splits and epochs read the shards
(memory-mapped) and never decode again.

The key is always the digest of the file's own bytes, never a MANIFEST.csv
digest: a manifest row is a claim about a file, and trusting it served stale
pixels for replaced files. Hashing every file on every run would cost a full
read of the data set, so the index also remembers, per path, the file's stamp
(size, mtime, ctime, inode) next to the digest that was computed from its
bytes; a file is read and hashed again only when its stamp changed (or it
changed too recently for the stamp to be trusted, see ``RACY_NS``).

Layout: ``CACHE_DIR/arrays/<contract key>/{index.json, contract.json, shard-*.npy}``. The caller
names ``CACHE_DIR`` (the command line resolves ``--cache-dir`` / ``$PNEUMO_CACHE`` in
:func:`train.cli.cache_root`); this module never reads the environment.
The key hashes the contract, the OpenCV version (its resize kernels define the
pixels) and the cache schema, so a new contract or OpenCV never reuses old
pixels. Files that fail to decode are skipped with their reason, remembered
in the index under their content digest (so the same bytes are not retried,
but a replaced file is), counted, and never touched: the cache only ever
reads the data folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import stat
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Container, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ImageDecodeError
from edge_runtime.fileio import atomic_write_bytes, atomic_write_json
from edge_runtime.preprocess import MAX_FILE_BYTES, apply_contract, decode_bytes
from train.config import DEFAULT_CACHE_DIR
from train.data import Sample
from train.errors import DataError

# 2: keys are digests of the bytes on disk. Schema 1 keyed by MANIFEST.csv digests and could hold
# another file's pixels under a key, so its stores are never reused (the contract key includes this).
# 3: the decoder drops alpha before a 16-bit image's bit depth is chosen; stores of 2 may hold such
# images darkened, which the runtime no longer does.
CACHE_SCHEMA = 3
INDEX_FILE = "index.json"
# Rows per shard: a crash loses at most one shard of decoding work.
SHARD_ROWS = 1024
# A file changed less than this long before it was hashed may change again within the same
# timestamp tick without its stamp changing (the "racy git" problem), so its stamp is not recorded
# and it is hashed again next time, until it is older.
RACY_NS = 2_000_000_000
_READ_CHUNK = 1 << 20

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int]  # (size, mtime_ns, ctime_ns, inode)


@dataclass
class ArraySet:
    """Decoded model inputs for a list of samples, in the samples' order (skipped files left out)."""

    x: np.ndarray  # uint8 (N, H, W, C), exactly what the runtime feeds the model
    y: np.ndarray  # int64 (N,), indices into labels
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): never deleted
    decoded: int = 0  # files this call had to decode (0 when everything came from the cache)
    from_cache: int = 0  # files this call read from the cache
    cache_dir: str = ""
    hashed: int = 0  # files this call read and hashed because their stamp was new or changed

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class _Read:
    """One file read and hashed by a worker: its digest, and its pixels when they had to be decoded."""

    path: Path
    stamp: Stamp | None = None
    digest: str | None = None
    array: np.ndarray | None = None
    reason: str = ""  # why it could not be read (no digest) or decoded (digest set, no array)
    decoded: bool = False


def contract_key(contract: PreprocessContract) -> str:
    """Stable key of everything that defines the cached pixels."""
    payload = {"contract": contract.to_dict(), "opencv": cv2.__version__, "schema": CACHE_SCHEMA}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def store_dir(contract: PreprocessContract, cache_dir: Path) -> Path:
    """The folder of ``contract``'s pixels under the cache root ``cache_dir``."""
    return cache_dir / "arrays" / contract_key(contract)


@dataclass
class _Lookup:
    """The content digest of each sample's file, once any content the cache lacked was read into it."""

    index: dict[str, Any]
    digest_of: dict[Path, str]
    unreadable: dict[Path, str]  # path -> why it could not be read (no digest, nothing recorded)
    fresh: set[str] = field(default_factory=set)  # contents decoded by this call (failures included)
    hashed: int = 0


@dataclass
class _Selection:
    """The samples whose pixels the cache holds, where those pixels are, and the samples skipped."""

    kept: list[Sample] = field(default_factory=list)
    rows: list[tuple[int, str, int]] = field(default_factory=list)  # (output position, shard, row)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: int = 0


def load_arrays(
    samples: Sequence[Sample],
    labels: Sequence[str],
    contract: PreprocessContract,
    cache_dir: Path | None = None,
    progress: bool = True,
    workers: int = 2,
) -> ArraySet:
    """Model inputs for ``samples`` under ``contract``, decoding only content the cache has not seen.

    ``cache_dir``: the cache root, as the caller resolved it; None is :data:`DEFAULT_CACHE_DIR`.
    """
    index_of = _label_indices(samples, labels)
    store = _open_store(contract, DEFAULT_CACHE_DIR.expanduser() if cache_dir is None else cache_dir)
    lookup = _lookup(store, contract, samples, progress, workers)
    selection = _select(samples, lookup)
    x = _gather(store, selection.rows, len(selection.kept), contract)
    y = np.array([index_of[s.label] for s in selection.kept], dtype=np.int64)
    if selection.skipped:
        log.warning(
            "%d of %d files skipped (could not be decoded); nothing was deleted",
            len(selection.skipped),
            len(samples),
        )
    return ArraySet(
        x=x,
        y=y,
        paths=[str(s.path) for s in selection.kept],
        skipped=selection.skipped,
        decoded=len(lookup.fresh),
        from_cache=selection.from_cache,
        cache_dir=str(store),
        hashed=lookup.hashed,
    )


def _label_indices(samples: Sequence[Sample], labels: Sequence[str]) -> dict[str, int]:
    """Each label's index; a DataError for a sample whose label is not one of ``labels``."""
    index_of = {label: i for i, label in enumerate(labels)}
    for sample in samples:
        if sample.label not in index_of:
            raise DataError(f"{sample.path}: label {sample.label!r} is not one of {list(labels)}")
    return index_of


def _open_store(contract: PreprocessContract, cache_dir: Path) -> Path:
    """The store of ``contract`` under ``cache_dir``, created when missing."""
    store = store_dir(contract, cache_dir)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{store}: cannot create the decode cache ({exc}); pass --cache-dir (or set $PNEUMO_CACHE) "
            "to a writable folder"
        ) from exc
    return store


def _lookup(
    store: Path, contract: PreprocessContract, samples: Sequence[Sample], progress: bool, workers: int
) -> _Lookup:
    """The digests of the samples' files: from the index where a file's stamp is unchanged, else read."""
    with _locked(store):
        index = _read_index(store, contract)
    digest_of, unreadable, unread = _indexed_digests(index, samples)
    if not unread:
        return _Lookup(index, digest_of, unreadable)
    reads = _read_into_store(store, contract, unread, index, progress, workers)
    digest_of.update({r.path: r.digest for r in reads if r.digest is not None})
    unreadable.update({r.path: r.reason for r in reads if r.digest is None})
    _warn_manifest_mismatch(samples, digest_of)
    with _locked(store):
        index = _read_index(store, contract)
    return _Lookup(
        index,
        digest_of,
        unreadable,
        fresh={r.digest for r in reads if r.decoded and r.digest is not None},
        hashed=sum(r.digest is not None for r in reads),
    )


def _indexed_digests(
    index: dict[str, Any], samples: Sequence[Sample]
) -> tuple[dict[Path, str], dict[Path, str], list[Path]]:
    """(digest of each file the index knows unchanged, why each unreadable file is, the files to read)."""
    digest_of: dict[Path, str] = {}
    unreadable: dict[Path, str] = {}
    unread: list[Path] = []
    for path in dict.fromkeys(s.path for s in samples):
        stamp, reason = _stamp_path(path)
        known = None if stamp is None else _known_digest(index, path, stamp)
        if reason:
            unreadable[path] = reason
        elif known is None:
            unread.append(path)
        else:
            digest_of[path] = known
    return digest_of, unreadable, unread


def _select(samples: Sequence[Sample], lookup: _Lookup) -> _Selection:
    """Where each sample's pixels lie in the store, in the samples' order; why the others are skipped."""
    index = lookup.index
    selection = _Selection()
    for sample in samples:
        digest = lookup.digest_of.get(sample.path)
        if digest is None:
            selection.skipped.append((str(sample.path), lookup.unreadable.get(sample.path, "file not found")))
            continue
        if digest in index["failed"]:
            selection.skipped.append((str(sample.path), index["failed"][digest]))
            continue
        shard, row = index["entries"][digest]
        selection.rows.append((len(selection.kept), shard, int(row)))
        selection.kept.append(sample)
        selection.from_cache += digest not in lookup.fresh
    return selection


def _gather(
    store: Path, rows: list[tuple[int, str, int]], n: int, contract: PreprocessContract
) -> np.ndarray:
    """The ``n`` images at ``rows`` (output position, shard, row), reading each shard once."""
    x = np.empty((n, *contract.input_shape), dtype=np.uint8)
    by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for position, shard, row in rows:
        by_shard[shard].append((position, row))
    for shard, pairs in by_shard.items():
        data = np.load(store / shard, mmap_mode="r")
        positions = np.array([p for p, _ in pairs], dtype=np.int64)
        x[positions] = data[np.array([r for _, r in pairs], dtype=np.int64)]
    return x


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _stamp_path(path: Path) -> tuple[Stamp | None, str]:
    """The file's stamp, or None and why it cannot be read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return None, "is a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file (a pipe or device?); pass image files"  # opening a FIFO would block
    return _stamp(st), ""


def _file_key(path: Path) -> str:
    # Absolute but not resolved: a symlink's target changing changes the stamp (stat follows it).
    return os.path.abspath(path)


def _known_digest(index: dict[str, Any], path: Path, stamp: Stamp) -> str | None:
    """The recorded digest of ``path`` when its stamp is unchanged and the cache holds that content."""
    record = index["files"].get(_file_key(path))
    if not isinstance(record, list) or len(record) != 5 or tuple(record[:4]) != stamp:
        return None
    digest = str(record[4])
    return digest if digest in index["entries"] or digest in index["failed"] else None


def _read_one(path: Path, contract: PreprocessContract, cached: Container[str]) -> _Read:
    """Hash the file's bytes and, unless the cache holds that content, decode those same bytes.

    Decoding the bytes that were hashed (not re-opening the path) means a file replaced meanwhile
    can never put its pixels under another content's key.
    """
    try:
        with open(path, "rb") as handle:
            stamp = _stamp(os.fstat(handle.fileno()))
            digest = hashlib.sha256()
            if stamp[0] > MAX_FILE_BYTES:  # hashed in chunks (so the key is right), never held or decoded
                data = b""
                for chunk in iter(lambda: handle.read(_READ_CHUNK), b""):
                    digest.update(chunk)
            else:
                data = handle.read()
                digest.update(data)
    except FileNotFoundError:
        return _Read(path, reason="file not found")
    except IsADirectoryError:
        return _Read(path, reason="is a directory, not an image file")
    except OSError as exc:
        return _Read(path, reason=f"cannot read file: {exc.strerror or exc}")
    hexdigest = digest.hexdigest()
    if hexdigest in cached:
        return _Read(path, stamp, hexdigest)
    if stamp[0] > MAX_FILE_BYTES:
        # the runtime's load_image refuses such a file before reading it; same reason here
        reason = f"file is {stamp[0]:,} bytes, over the {MAX_FILE_BYTES:,} byte limit"
        return _Read(path, stamp, hexdigest, reason=reason, decoded=True)
    try:
        array = apply_contract(decode_bytes(data, name=str(path)), contract)
    except ImageDecodeError as exc:
        return _Read(path, stamp, hexdigest, reason=exc.reason, decoded=True)
    return _Read(path, stamp, hexdigest, array, decoded=True)


def _read_into_store(
    store: Path,
    contract: PreprocessContract,
    paths: list[Path],
    index: dict[str, Any],
    progress: bool,
    workers: int,
) -> list[_Read]:
    """Hash ``paths``, decode content the cache lacks into new shards, record stamps; every read."""
    cached = set(index["entries"]) | set(index["failed"])
    bar = tqdm(
        total=len(paths),
        desc=f"reading into {store.name}",
        unit="img",
        disable=not progress,
        file=sys.stderr,
    )
    reads: list[_Read] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        for start in range(0, len(paths), SHARD_ROWS):
            chunk = sorted(paths[start : start + SHARD_ROWS], key=str)
            done: list[_Read] = []
            for read in pool.map(lambda path: _read_one(path, contract, cached), chunk):
                done.append(read)
                bar.update(1)
            _store_chunk(store, contract, done, cached)
            reads.extend(done)
    decoded = sum(r.decoded for r in reads)
    log.info("read %d files, decoded %d into %s", len(reads), decoded, store)
    return reads


def _store_chunk(store: Path, contract: PreprocessContract, reads: list[_Read], cached: set[str]) -> None:
    """Write one chunk's new pixels as a shard and merge its entries, failures and stamps into the index."""
    arrays: list[np.ndarray] = []
    entries: dict[str, list[Any]] = {}
    failed: dict[str, str] = {}
    files: dict[str, list[Any]] = {}
    shard = f"shard-{uuid.uuid4().hex[:16]}.npy"
    racy_after = time.time_ns() - RACY_NS
    for read in reads:
        if read.digest is None or read.stamp is None:
            continue  # unreadable: reported, never recorded
        if read.decoded and read.digest not in cached:
            if read.array is None:
                failed[read.digest] = read.reason
            else:
                entries[read.digest] = [shard, len(arrays)]
                arrays.append(read.array)
            cached.add(read.digest)  # the same content under another name is stored once
        if max(read.stamp[1], read.stamp[2]) < racy_after:
            files[_file_key(read.path)] = [*read.stamp, read.digest]
    if arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.stack(arrays), allow_pickle=False)
        atomic_write_bytes(store / shard, buffer.getvalue())
    with _locked(store):
        index = _read_index(store, contract)
        index["entries"].update(entries)
        index["failed"].update(failed)
        index["files"].update(files)
        atomic_write_json(store / INDEX_FILE, index)


def _warn_manifest_mismatch(samples: Sequence[Sample], digest_of: dict[Path, str]) -> None:
    """Say when files differ from their MANIFEST.csv digests: the cache used the files, not the manifest."""
    differ = [s.path for s in samples if s.sha256 and s.path in digest_of and s.sha256 != digest_of[s.path]]
    if differ:
        log.warning(
            "%d file(s) differ from their MANIFEST.csv sha256 (first: %s); the pixels come from the files "
            "as they are on disk. If the files were replaced on purpose, update MANIFEST.csv",
            len(differ),
            differ[0],
        )


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """Serialize index updates between processes sharing one cache (e.g. two trainings)."""
    with open(store / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_index(store: Path, contract: PreprocessContract) -> dict[str, Any]:
    """The store's index, with entries whose shard file is gone dropped (they get decoded again)."""
    empty: dict[str, Any] = {
        "schema": CACHE_SCHEMA,
        "contract": contract.to_dict(),
        "entries": {},
        "failed": {},
        "files": {},
    }
    path = store / INDEX_FILE
    if not path.is_file():
        if not (store / "contract.json").exists():
            contract.save(store / "contract.json")
        return empty
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable cache index (%s); decoding again", path, exc)
        return empty
    if not isinstance(index, dict) or index.get("contract") != contract.to_dict():
        log.warning("%s: cache index is for another contract; decoding again", path)
        return empty
    shards = {name for name, _ in index.get("entries", {}).values()}
    missing = {name for name in shards if not (store / name).is_file()}
    if missing:
        log.warning("%s: %d cache shard(s) missing; their images will be decoded again", store, len(missing))
        index["entries"] = {k: v for k, v in index["entries"].items() if v[0] not in missing}
    index.setdefault("failed", {})
    index.setdefault("files", {})
    return index
