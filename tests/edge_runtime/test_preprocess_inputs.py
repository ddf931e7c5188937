"""Inputs that decoded wrongly or could not be read safely: 16-bit images with alpha, non-regular files.

Every image is a real file written by OpenCV (or, for gray+alpha, which
OpenCV cannot write, a hand-built PNG) and read back through load_image.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import ImageDecodeError
from edge_runtime.preprocess import load_image, read_image_file
from tests.conftest import REPO, write_image


def _twelve_bit(gray_image: np.ndarray) -> np.ndarray:
    """An X-ray export's 12-bit values (0..4095) in a uint16 array."""
    return np.rint(gray_image.astype(np.float64) * 4095 / 255).astype(np.uint16)


def _expected_8bit(twelve_bit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(twelve_bit.astype(np.float32) * (255.0 / 4095.0)), 0, 255).astype(np.uint8)


def _alpha(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "opaque":
        return np.full(shape, 65535, np.uint16)
    # Partly transparent: a left-to-right ramp over the whole 16-bit range.
    ramp = np.linspace(0, 65535, shape[1]).astype(np.uint16)
    return np.broadcast_to(ramp, shape).copy()


@pytest.mark.parametrize("alpha", ["opaque", "partial"])
def test_16bit_bgra_png_decodes_like_the_same_image_without_alpha(
    tmp_path: Path, gray_image: np.ndarray, alpha: str
) -> None:
    twelve = _twelve_bit(gray_image)
    bgr = np.dstack([twelve, twelve // 2, twelve // 3])  # distinct channels: their order is checked too
    bgra = np.dstack([bgr, _alpha(alpha, twelve.shape)])
    assert bgra.dtype == np.uint16 and bgra[:, :, 3].max() == 65535
    without = load_image(write_image(tmp_path / "bgr16.png", bgr))
    with_alpha = load_image(write_image(tmp_path / "bgra16.png", bgra))
    expected = np.dstack([_expected_8bit(bgr[:, :, c]) for c in range(3)])
    assert np.array_equal(without, expected)
    # Before the fix the alpha's 65535 made the image count as 16-bit: mean 4.9 instead of 77.7.
    assert with_alpha.shape == without.shape and with_alpha.dtype == np.uint8
    assert np.array_equal(with_alpha, without)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _gray_alpha_png16(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (colour type 4), which cv2.imwrite cannot produce."""
    height, width = gray.shape
    pixels = np.dstack([gray, alpha]).astype(">u2")
    rows = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter 0 on each row
    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("alpha", ["opaque", "partial"])
def test_16bit_gray_alpha_png_decodes_like_the_same_gray_png(
    tmp_path: Path, gray_image: np.ndarray, alpha: str
) -> None:
    twelve = _twelve_bit(gray_image)
    gray = load_image(write_image(tmp_path / "gray16.png", twelve))
    assert np.array_equal(gray, _expected_8bit(twelve))
    path = tmp_path / "la16.png"
    path.write_bytes(_gray_alpha_png16(twelve, _alpha(alpha, twelve.shape)))
    decoded = load_image(path)
    # OpenCV expands gray+alpha to BGRA; once alpha is dropped each plane is the gray image.
    assert decoded.shape == (*gray.shape, 3) and decoded.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(decoded[:, :, channel], gray), f"channel {channel}"


def test_float_tiff_alpha_is_left_out_of_the_stretch(tmp_path: Path, gray_image: np.ndarray) -> None:
    # Values 100..3100 with alpha 1.0: stretched with the alpha, the darkest pixel would not be 0.
    bgr = np.dstack([gray_image, gray_image // 2, gray_image // 3]).astype(np.float32) * 10 + 100
    bgra = np.dstack([bgr, np.ones(gray_image.shape, np.float32)])
    assert cv2.imwrite(str(tmp_path / "bgr.tiff"), bgr) and cv2.imwrite(str(tmp_path / "bgra.tiff"), bgra)
    without = load_image(tmp_path / "bgr.tiff")
    assert without.min() == 0 and without.max() == 255
    assert np.array_equal(load_image(tmp_path / "bgra.tiff"), without)


# --- files that are not regular files ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def load() -> None:
        try:
            outcome.append(load_image(fifo))
        except ImageDecodeError as exc:  # handed to the test thread, which asserts on it
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        # Blocked in open() waiting for a writer: be that writer (and close at once) so the thread ends.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
        pytest.fail("load_image blocked on a FIFO instead of refusing it")
    [result] = outcome
    assert isinstance(result, ImageDecodeError), result
    assert result.path == str(fifo) and not result.maybe_incomplete
    assert "is a named pipe (FIFO), not a regular file" in result.reason
    assert "save the image to a file" in result.reason


# Runs in a child whose address space is capped after imports: an unbounded read of
# /dev/zero then ends in a MemoryError there, not in this test process or the machine.
_READ_DEVICE = """
import json, resource, sys
from edge_runtime.errors import ImageDecodeError
from edge_runtime.preprocess import load_image
with open("/proc/self/status") as status:
    vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
cap = (vm_kb + 512 * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
results = []
for path in sys.argv[1:]:
    try:
        load_image(path)
        results.append({"path": path, "outcome": "decoded"})
    except ImageDecodeError as exc:
        results.append({"path": exc.path, "outcome": exc.reason})
    except MemoryError:
        results.append({"path": path, "outcome": "MemoryError"})
print(json.dumps(results))
"""


@pytest.mark.skipif(not Path("/dev/zero").exists() or not Path("/proc/self/status").exists(), reason="Linux")
def test_dev_zero_and_a_link_to_it_are_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "xray.png"
    link.symlink_to("/dev/zero")  # stat follows the link: what counts is what it points to
    done = subprocess.run(
        [sys.executable, "-c", _READ_DEVICE, "/dev/zero", str(link)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["path"] for r in results] == ["/dev/zero", str(link)]
    for result in results:
        assert result["outcome"].startswith("is a character device, not a regular file"), result


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_read_stops_past_the_limit_when_the_listed_size_is_wrong(
    tmp_path: Path, gray_image: np.ndarray
) -> None:
    maps = Path("/proc/self/maps")
    # A regular file that lists 0 bytes and holds more: only the byte limit stops the read.
    assert maps.stat().st_size == 0
    with pytest.raises(ImageDecodeError, match=r"over the 1,000 byte limit, though it listed 0 bytes"):
        read_image_file(maps, max_bytes=1000)
    # A symlink to a regular file is read as that file, whole.
    png = write_image(tmp_path / "real.png", gray_image)
    link = tmp_path / "link.png"
    link.symlink_to(png)
    assert read_image_file(link, max_bytes=png.stat().st_size) == png.read_bytes()
