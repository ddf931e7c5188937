"""Decoding ahead on threads: the same pixels and hashes as the serial path, in order, bounded, stoppable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.decode_pool import decode_ahead, default_workers, read_and_preprocess
from edge_runtime.fileio import sha256_file
from edge_runtime.preprocess import preprocess_file
from tests.conftest import write_image

CONTRACT = PreprocessContract(height=32, width=32)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Files of very different decode cost (a 16-bit 1500x1200 PNG beside 40x40 ones) and two bad ones."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(12):
        if i % 4 == 0:
            image = rng.integers(0, 65535, (1200, 1500), dtype=np.uint16)
            paths.append(write_image(tmp_path / f"{i:02d} large.png", image))
        else:
            image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            paths.append(write_image(tmp_path / f"{i:02d} small.jpg", image))
    (tmp_path / "05 text.png").write_text("not an image")
    (tmp_path / "09 empty.jpg").write_bytes(b"")
    return sorted(tmp_path.iterdir())


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_the_same_pixels_hashes_and_order_as_the_serial_path(files: list[Path], workers: int) -> None:
    decoded = list(decode_ahead(files, CONTRACT, workers, ahead=2))
    assert [d.path for d in decoded] == files
    for d in decoded:
        if d.path.name in ("05 text.png", "09 empty.jpg"):
            assert d.image is None and d.sha256 is None and d.error
            continue
        assert d.error is None and d.sha256 == sha256_file(d.path)
        assert d.image is not None and np.array_equal(d.image, preprocess_file(d.path, CONTRACT))
        assert d.image.shape == CONTRACT.input_shape and d.seconds > 0


def test_a_bad_file_gives_its_reason_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "report.jpg").write_text("a text file")
    decoded = read_and_preprocess(tmp_path / "report.jpg", CONTRACT)
    assert decoded.image is None and "not an image" in (decoded.error or "")
    missing = read_and_preprocess(tmp_path / "absent.png", CONTRACT)
    assert missing.image is None and "vanished" in (missing.error or "")


class CountingPaths:
    """An iterator of paths that counts how many were taken: how far the pool read ahead."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.taken = paths, 0

    def __iter__(self) -> Iterator[Path]:
        for path in self.paths:
            self.taken += 1
            yield path


def test_reading_ahead_is_bounded_and_stops_when_the_caller_does(files: list[Path]) -> None:
    many = CountingPaths(files * 10)
    stream = decode_ahead(many, CONTRACT, workers=2, ahead=3)
    first = next(stream)
    assert first.path == files[0]
    assert many.taken <= 4, f"{many.taken} files taken to give the first: read-ahead is not bounded"
    for _ in range(5):
        next(stream)
    assert many.taken <= 9
    stream.close()  # the caller stops: nothing more is taken
    assert many.taken <= 9


def test_worker_counts() -> None:
    assert 1 <= default_workers() <= 4
    with pytest.raises(ValueError, match="workers = -1"):
        list(decode_ahead([], CONTRACT, workers=-1))
