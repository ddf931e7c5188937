"""Decode a data set once into uint8 arrays, keyed by the preprocessing contract and file hashes.

Decoding 5,856 JPEGs costs far more than an epoch of a small CNN, so every
image is decoded **once** per contract with the runtime's own
:func:`edge_runtime.preprocess.preprocess_file` (the one preprocessing
implementation) and stored as ``uint8`` ``.npy`` shards. A small JSON index
maps each file's SHA-256 (the MANIFEST.csv digest when the folder has one,
else the digest of the file's bytes) to a shard row. Later runs, seeds,
splits and epochs read the shards (memory-mapped) and never decode again.

Layout: ``CACHE_DIR/arrays/<contract key>/{index.json, contract.json, shard-*.npy}``.
The key hashes the contract, the OpenCV version (its resize kernels define the
pixels) and the cache schema, so a new contract or OpenCV never reuses old
pixels. Files that fail to decode are skipped with their reason, remembered
in the index (so they are not retried), counted, and never touched: the cache
only ever reads the data folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ImageDecodeError
from edge_runtime.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from edge_runtime.preprocess import preprocess_file
from train.data import Sample
from train.errors import DataError

CACHE_ENV = "PNEUMO_CACHE"
CACHE_SCHEMA = 1
INDEX_FILE = "index.json"
# Rows per shard: a crash loses at most one shard of decoding work.
SHARD_ROWS = 1024

log = logging.getLogger(__name__)


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

    def __len__(self) -> int:
        return int(self.x.shape[0])


def default_cache_dir() -> Path:
    """``$PNEUMO_CACHE`` or ``~/.cache/pneumo-edge``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pneumo-edge"


def contract_key(contract: PreprocessContract) -> str:
    """Stable key of everything that defines the cached pixels."""
    payload = {"contract": contract.to_dict(), "opencv": cv2.__version__, "schema": CACHE_SCHEMA}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def store_dir(contract: PreprocessContract, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "arrays" / contract_key(contract)


def load_arrays(
    samples: Sequence[Sample],
    labels: Sequence[str],
    contract: PreprocessContract,
    cache_dir: Path | None = None,
    progress: bool = True,
    workers: int = 2,
) -> ArraySet:
    """Model inputs for ``samples`` under ``contract``, decoding only files the cache has not seen."""
    index_of = {label: i for i, label in enumerate(labels)}
    for sample in samples:
        if sample.label not in index_of:
            raise DataError(f"{sample.path}: label {sample.label!r} is not one of {list(labels)}")
    store = store_dir(contract, cache_dir)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{store}: cannot create the decode cache ({exc}); set ${CACHE_ENV} to a writable folder"
        ) from exc

    skipped: list[tuple[str, str]] = []
    digests: list[str | None] = []
    for sample in samples:
        digest, reason = _digest(sample)
        digests.append(digest)
        if reason:
            skipped.append((str(sample.path), reason))

    with _locked(store):
        index = _read_index(store, contract)
    todo: dict[str, Path] = {}
    for sample, digest in zip(samples, digests):
        if digest and digest not in index["entries"] and digest not in index["failed"]:
            todo.setdefault(digest, sample.path)
    decoded = _decode_into_store(store, contract, todo, progress, workers) if todo else 0
    if decoded:
        with _locked(store):
            index = _read_index(store, contract)

    rows: list[tuple[int, str, int]] = []  # (output position, shard, row)
    kept: list[Sample] = []
    from_cache = 0
    for sample, digest in zip(samples, digests):
        if digest is None:
            continue
        if digest in index["failed"]:
            skipped.append((str(sample.path), index["failed"][digest]))
            continue
        shard, row = index["entries"][digest]
        rows.append((len(kept), shard, int(row)))
        kept.append(sample)
        from_cache += digest not in todo
    x = np.empty((len(kept), *contract.input_shape), dtype=np.uint8)
    by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for position, shard, row in rows:
        by_shard[shard].append((position, row))
    for shard, pairs in by_shard.items():
        data = np.load(store / shard, mmap_mode="r")
        positions = np.array([p for p, _ in pairs], dtype=np.int64)
        x[positions] = data[np.array([r for _, r in pairs], dtype=np.int64)]
    y = np.array([index_of[s.label] for s in kept], dtype=np.int64)
    if skipped:
        log.warning(
            "%d of %d files skipped (could not be decoded); nothing was deleted", len(skipped), len(samples)
        )
    return ArraySet(
        x=x,
        y=y,
        paths=[str(s.path) for s in kept],
        skipped=skipped,
        decoded=decoded,
        from_cache=from_cache,
        cache_dir=str(store),
    )


def _digest(sample: Sample) -> tuple[str | None, str]:
    if sample.sha256:
        return sample.sha256.lower(), ""
    try:
        return sha256_file(sample.path), ""
    except FileNotFoundError:
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory, not an image file"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"


def _decode_one(path: Path, contract: PreprocessContract) -> tuple[np.ndarray | None, str]:
    try:
        return preprocess_file(path, contract), ""
    except ImageDecodeError as exc:
        return None, exc.reason


def _decode_into_store(
    store: Path, contract: PreprocessContract, todo: dict[str, Path], progress: bool, workers: int
) -> int:
    """Decode ``todo`` (digest -> a path with that content) into new shards; return files decoded."""
    items = sorted(todo.items(), key=lambda item: str(item[1]))
    bar = tqdm(
        total=len(items),
        desc=f"decoding into {store.name}",
        unit="img",
        disable=not progress,
        file=sys.stderr,
    )
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        for start in range(0, len(items), SHARD_ROWS):
            chunk = items[start : start + SHARD_ROWS]
            arrays: list[np.ndarray] = []
            entries: dict[str, list[Any]] = {}
            failed: dict[str, str] = {}
            shard = f"shard-{uuid.uuid4().hex[:16]}.npy"
            for (digest, _), (array, reason) in zip(
                chunk, pool.map(lambda item: _decode_one(item[1], contract), chunk)
            ):
                if array is None:
                    failed[digest] = reason
                else:
                    entries[digest] = [shard, len(arrays)]
                    arrays.append(array)
                bar.update(1)
            if arrays:
                buffer = io.BytesIO()
                np.save(buffer, np.stack(arrays), allow_pickle=False)
                atomic_write_bytes(store / shard, buffer.getvalue())
            with _locked(store):
                index = _read_index(store, contract)
                index["entries"].update(entries)
                index["failed"].update(failed)
                atomic_write_json(store / INDEX_FILE, index)
            done += len(chunk)
    log.info("decoded %d files into %s", done, store)
    return done


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
    return index
