"""Hostile and odd inputs: size checks before decoding (TIFF, DICOM), JPEG trailers, clear refusals.

Every file is really written and decoded; memory claims are measured in a
child process (ru_maxrss), where OpenCV is imported first so its own pixel
limit is the default one and only the header checks can be what saves memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.errors import ImageDecodeError
from edge_runtime.preprocess import (
    MAX_PIXELS,
    decode_bytes,
    jpeg_eoi_offset,
    load_image,
    tiff_size,
    to_uint8,
)
from tests.conftest import REPO, write_image

# Runs in a child: cv2 first (default pixel limit), then one load_image; prints the peak RSS growth.
_MEASURE = """
import json, os, resource, sys
os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
import cv2, numpy as np
from edge_runtime.errors import ImageDecodeError
from edge_runtime.preprocess import load_image
load_image(sys.argv[2])  # warm up every code path on a small file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(sys.argv[1])
    reason = None
except ImageDecodeError as exc:
    reason = exc.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": reason, "growth_mb": (after - before) / 1024}))
"""


def _measure(path: Path, warm: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(warm)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- TIFF -------------------------------------------------------------------------------------


def test_big_deflate_tiff_refused_from_header_with_low_memory(tmp_path: Path, gray_image: np.ndarray) -> None:
    # 144 megapixels of zeros: about 0.5 MB on disk, 144 MB (and more inside libtiff) if decoded.
    path = tmp_path / "bomb.tiff"
    assert cv2.imwrite(str(path), np.zeros((12000, 12000), np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    assert path.stat().st_size < 2_000_000
    with pytest.raises(
        ImageDecodeError, match=r"declares 12000x12000 pixels.*Downscale it to at most 6324x6324"
    ):
        load_image(path)
    measured = _measure(path, write_image(tmp_path / "warm.tiff", gray_image))
    assert measured["reason"] is not None and "declares 12000x12000" in measured["reason"]
    assert measured["growth_mb"] < 40, measured


def _tiff(order: str, width: int, height: int, kind: int, big: bool = False) -> bytes:
    """A minimal TIFF/BigTIFF header + first directory declaring width x height (no pixel data)."""
    mark = b"II" if order == "<" else b"MM"
    value_fmt = {3: "H", 4: "I", 16: "Q"}[kind]
    if big:
        head = mark + struct.pack(order + "HHHQ", 43, 8, 0, 16)
        count, entry, pad = struct.pack(order + "Q", 2), order + "HHQ", 8
    else:
        head = mark + struct.pack(order + "HI", 42, 8)
        count, entry, pad = struct.pack(order + "H", 2), order + "HHI", 4
    entries = b""
    for tag, value in ((256, width), (257, height)):
        packed = struct.pack(order + value_fmt, value)
        entries += struct.pack(entry, tag, kind, 1) + packed + b"\x00" * (pad - len(packed))
    return head + count + entries + b"\x00" * pad


@pytest.mark.parametrize(
    ("order", "kind", "big"),
    [("<", 3, False), (">", 3, False), ("<", 4, False), (">", 4, False), ("<", 16, True), (">", 4, True)],
)
def test_tiff_header_size_both_byte_orders_and_bigtiff(order: str, kind: int, big: bool) -> None:
    data = _tiff(order, 9000, 8000, kind, big)
    assert tiff_size(data) == (9000, 8000)
    with pytest.raises(ImageDecodeError, match="declares 9000x8000 pixels"):
        decode_bytes(data, "crafted.tif")


def test_real_tiffs_report_their_size(tmp_path: Path, gray_image: np.ndarray) -> None:
    for compression in (1, 5, 8):  # none, LZW, deflate
        _, buf = cv2.imencode(".tiff", gray_image, [cv2.IMWRITE_TIFF_COMPRESSION, compression])
        assert tiff_size(buf.tobytes()) == (340, 300)
        assert np.array_equal(decode_bytes(buf.tobytes(), "ok.tiff"), gray_image)


def test_tiff_without_size_is_refused_not_decoded() -> None:
    with pytest.raises(ImageDecodeError, match="corrupt TIFF"):
        decode_bytes(b"II*\x00" + struct.pack("<I", 10_000) + b"\x00" * 64, "cut.tif")


# --- JPEG -------------------------------------------------------------------------------------


def test_jpeg_with_trailer_after_eoi_is_accepted(tmp_path: Path, gray_image: np.ndarray) -> None:
    _, buf = cv2.imencode(".jpg", gray_image)
    plain = buf.tobytes()
    # Phones append data after the EOI; this one even ends in another JPEG's SOI..EOI-less bytes.
    path = tmp_path / "phone.jpg"
    path.write_bytes(plain + b"\x00\x00MotionPhoto_Data" + os.urandom(4096) + b"\xff\xd8\xff\xe1")
    assert jpeg_eoi_offset(path.read_bytes()) == len(plain) - 2
    assert np.array_equal(load_image(path), cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))


def test_progressive_jpeg_eoi_found(gray_image: np.ndarray) -> None:
    _, buf = cv2.imencode(".jpg", gray_image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = buf.tobytes()
    assert data.count(b"\xff\xda") > 1  # several scans, DHT segments between them
    assert jpeg_eoi_offset(data + b"trailer") == len(data) - 2


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_jpeg_still_refused_even_with_padding(gray_image: np.ndarray, keep: float) -> None:
    _, buf = cv2.imencode(".jpg", gray_image)
    data = buf.tobytes()[: int(len(buf) * keep)]
    for payload in (data, data + b"\x00" * 512):  # a half-copied file preallocated with zeros
        assert jpeg_eoi_offset(payload) is None
        with pytest.raises(ImageDecodeError, match="truncated JPEG"):
            decode_bytes(payload, "cut.jpg")


def test_jpeg_whose_exif_thumbnail_has_an_eoi_is_still_checked(gray_image: np.ndarray) -> None:
    _, thumb = cv2.imencode(".jpg", gray_image[:32, :32])
    _, main = cv2.imencode(".jpg", gray_image)
    app1 = b"Exif\x00\x00" + thumb.tobytes()  # the thumbnail's EOI sits inside APP1
    data = main.tobytes()[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + main.tobytes()[2:]
    assert decode_bytes(data, "exif.jpg").shape == gray_image.shape
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_bytes(data[: len(data) - 200], "exif-cut.jpg")


def _cut(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    ("make", "incomplete"),
    [
        (lambda img: b"", True),
        (lambda img: _cut(cv2.imencode(".jpg", img)[1].tobytes()), True),
        (lambda img: _cut(cv2.imencode(".png", img)[1].tobytes()), True),
        (lambda img: _cut(cv2.imencode(".bmp", img)[1].tobytes()), True),
        (lambda img: b"just some text, not an image", False),
        (lambda img: cv2.imencode(".png", img[:4, :4])[1].tobytes(), False),
        (lambda img: b"GIF89a" + b"\x00" * 64, False),
    ],
    ids=["empty", "cut-jpeg", "cut-png", "cut-bmp", "text", "too-small", "gif"],
)
def test_decode_failures_say_whether_an_unfinished_write_could_explain_them(
    gray_image: np.ndarray, make: Any, incomplete: bool
) -> None:
    """The watch daemon holds a maybe-incomplete input for its writer; the others fail at once."""
    with pytest.raises(ImageDecodeError) as info:
        decode_bytes(make(gray_image), "x")
    assert info.value.maybe_incomplete is incomplete, info.value.reason


# --- messages: bombs, links, other formats -----------------------------------------------------


def test_bomb_message_says_what_to_do(tmp_path: Path) -> None:
    # A real PNG header for 8000x8000 (64 MP): refused before its pixel data is even looked at.
    png = cv2.imencode(".png", np.zeros((16, 16), np.uint8))[1].tobytes()
    data = png[:16] + struct.pack(">II", 8000, 8000) + png[24:]
    with pytest.raises(ImageDecodeError) as info:
        decode_bytes(data, "huge.png")
    reason = info.value.reason
    assert "8000x8000" in reason and f"{MAX_PIXELS:,}" in reason
    assert "Downscale it to at most 6324x6324" in reason and MAX_PIXELS >= 6324 * 6324


def test_dangling_symlink_is_named_as_such(tmp_path: Path) -> None:
    link = tmp_path / "xray.png"
    link.symlink_to(tmp_path / "moved-away.png")
    with pytest.raises(ImageDecodeError, match=r"broken symbolic link -> .*moved-away\.png"):
        load_image(link)
    with pytest.raises(ImageDecodeError, match="vanished"):
        load_image(tmp_path / "never-there.png")


def test_webp_and_gif_are_named_with_the_supported_formats(gray_image: np.ndarray) -> None:
    ok, webp = cv2.imencode(".webp", gray_image)
    assert ok
    with pytest.raises(
        ImageDecodeError, match=r"WebP file: .*convert it to PNG.*PNG, JPEG, BMP, TIFF or DICOM"
    ):
        decode_bytes(webp.tobytes(), "scan.webp")
    with pytest.raises(ImageDecodeError, match="GIF file"):
        decode_bytes(b"GIF89a" + b"\x00" * 64, "scan.gif")


def test_16bit_lookup_table_matches_per_pixel_float_scaling() -> None:
    every = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    for peak in (255, 1023, 4095, 16383, 65535):
        image = np.minimum(every, peak).astype(np.uint16)
        full = float((1 << int(peak).bit_length()) - 1)
        expected = np.clip(np.rint(image.astype(np.float32) * (255.0 / full)), 0, 255).astype(np.uint8)
        assert np.array_equal(to_uint8(image), expected)


# --- DICOM ------------------------------------------------------------------------------------


def _dicom(
    path: Path,
    pixels: np.ndarray,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    rescale: tuple[float, float] | None = None,
) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    rows, columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if preamble:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare data set: no preamble, no 'DICM', no file meta (implicit VR little endian)
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return path


def test_big_dicom_refused_from_header_before_pixels(tmp_path: Path, gray_image: np.ndarray) -> None:
    path = _dicom(tmp_path / "huge.dcm", np.zeros((7000, 6000), np.uint8))  # 42 MP, 42 MB on disk
    warm = _dicom(tmp_path / "warm.dcm", gray_image)
    with pytest.raises(ImageDecodeError, match=r"declares 6000x7000 pixels.*Downscale"):
        load_image(path)
    measured = _measure(path, warm)
    assert measured["reason"] is not None and "declares 6000x7000" in measured["reason"]
    # The file's own bytes are read (42 MB); decoding to float32 as before took over 300 MB.
    assert measured["growth_mb"] < 100, measured


def test_multi_frame_dicom_is_named(tmp_path: Path) -> None:
    rgb = np.zeros((3, 256, 2, 3), np.uint8)
    with pytest.raises(ImageDecodeError, match=r"multi-frame DICOM \(3 frames\) is not a single radiograph"):
        load_image(_dicom(tmp_path / "cine.dcm", rgb, frames=3, photometric="RGB"))
    gray = np.zeros((4, 64, 64), np.uint16)
    with pytest.raises(ImageDecodeError, match=r"multi-frame DICOM \(4 frames\)"):
        load_image(_dicom(tmp_path / "stack.dcm", gray, frames=4))


def test_dicom_signed_rescaled_monochrome1_matches_float_formula(
    tmp_path: Path, gray_image: np.ndarray
) -> None:
    stored = (gray_image.astype(np.int16) - 100) * 7  # negative values too
    decoded = load_image(_dicom(tmp_path / "ct.dcm", stored, photometric="MONOCHROME1", rescale=(0.5, -20.0)))
    values = stored.astype(np.float32) * 0.5 + -20.0
    low, high = float(values.min()), float(values.max())
    scaled = 255.0 - (values - low) * (255.0 / (high - low))
    assert np.array_equal(decoded, np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def test_dicom_rgb_single_frame(tmp_path: Path, gray_image: np.ndarray) -> None:
    rgb = np.stack([gray_image, gray_image // 2, gray_image // 3], axis=-1)
    decoded = load_image(_dicom(tmp_path / "photo.dcm", rgb, photometric="RGB"))
    low, high = float(rgb.min()), float(rgb.max())
    expected = (rgb.astype(np.float32) - low) * (255.0 / (high - low))
    assert np.array_equal(decoded, cv2.cvtColor(np.rint(expected).astype(np.uint8), cv2.COLOR_RGB2BGR))


def test_dicom_without_preamble_accepted_by_extension(tmp_path: Path, gray_image: np.ndarray) -> None:
    path = _dicom(tmp_path / "old-pacs.dcm", gray_image.astype(np.uint16) * 16, preamble=False)
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    decoded = load_image(path)
    assert np.array_equal(
        decoded, load_image(_dicom(tmp_path / "new.dcm", gray_image.astype(np.uint16) * 16))
    )
    # Without a DICOM name the bytes are not guessed at, and a text file named .dcm is still not an image.
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_bytes(data, "old-pacs.bin")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_bytes(b"hello, I am a text file\n" * 10, "notes.dcm")


def test_bare_dicom_without_pixels_is_named(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report: no image
    ds.Modality = "SR"
    path = tmp_path / "report.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    with pytest.raises(ImageDecodeError, match="no Rows/Columns|no DICOM header"):
        load_image(path)
