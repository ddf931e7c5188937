"""Read, decode and preprocess image files on worker threads, ahead of inference, in input order.

On a Jetson the model is the cheap part: a full-size chest X-ray (2-5 megapixels, often a
16-bit PNG) takes tens of milliseconds of CPU to decode and shrink, the engine about one.
OpenCV and NumPy release the GIL while they work, so plain threads decode several files at
once and keep doing so while the main thread runs the model. Memory stays bounded: at most
``ahead`` files are in flight, each holding its full-size pixels only while it is decoded.

Each file is read once: the bytes that are hashed are the bytes that were classified.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ImageDecodeError
from edge_runtime.fileio import sha256_bytes
from edge_runtime.preprocess import apply_contract, decode_bytes, read_image_file

#: most decode threads by default: beyond four, a Jetson's cores are better left to the engine
#: runtime and the rest of the system
MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class DecodedFile:
    """One input, ready for the model, or the reason it cannot be."""

    path: Path
    #: ``contract.input_shape`` uint8 pixels; None when ``error`` says why not
    image: np.ndarray | None
    #: sha256 of the bytes that were decoded
    sha256: str | None
    error: str | None
    #: time spent reading, decoding and preprocessing this file (on its worker thread)
    seconds: float


def default_workers() -> int:
    """Decode threads when none are asked for: the cores, at most :data:`MAX_DEFAULT_WORKERS`."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def read_and_preprocess(path: Path, contract: PreprocessContract) -> DecodedFile:
    """One file to model input; a file that cannot be used gives its reason, never an exception."""
    start = time.perf_counter()
    try:
        data = read_image_file(path)
        image = apply_contract(decode_bytes(data, name=str(path)), contract)
    except ImageDecodeError as exc:
        return DecodedFile(path, None, None, exc.reason, time.perf_counter() - start)
    return DecodedFile(path, image, sha256_bytes(data), None, time.perf_counter() - start)


def decode_ahead(
    paths: Iterable[Path], contract: PreprocessContract, workers: int, ahead: int | None = None
) -> Iterator[DecodedFile]:
    """:func:`read_and_preprocess` for every path, yielded in the order given.

    ``workers`` threads decode up to ``ahead`` files (default four per thread) beyond the one the
    caller waits for. ``workers=0`` decodes in the calling thread, one file when asked: no overlap,
    the baseline that ``pneumo bench decode`` compares against.
    """
    if workers < 0:
        raise ValueError(f"workers = {workers}: expected 0 (decode in the calling thread) or more")
    if workers == 0:
        for path in paths:
            yield read_and_preprocess(Path(path), contract)
        return
    limit = max(1, ahead if ahead is not None else 4 * workers)
    remaining = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[DecodedFile]] = deque()
        try:
            for path in remaining:
                pending.append(pool.submit(read_and_preprocess, Path(path), contract))
                if len(pending) >= limit:
                    break
            while pending:
                decoded = pending.popleft().result()
                following = next(remaining, None)
                if following is not None:
                    pending.append(pool.submit(read_and_preprocess, Path(following), contract))
                yield decoded
        finally:
            # the caller stopped early (Ctrl-C, an error): decode nothing more than what runs now
            for future in pending:
                future.cancel()
