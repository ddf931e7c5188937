"""The one implementation of image decoding and the preprocessing contract.

Training (the decode cache), calibration, parity checks, benchmarks and every
edge command call :func:`load_image` -> :func:`apply_contract`. Nothing else in
the project resizes or converts colour, so train and runtime pixels are the
same bytes (tests/edge_runtime/test_preprocess.py and
tests/train/test_contract_parity.py check that).

Decoding is defensive, because a clinic inbox receives anything:

* the format is sniffed from the bytes, not the extension (PNG content under a
  ``.jpeg`` name is fine; a text file named ``.jpg`` is rejected);
* the declared pixel count is read from the header *before* decoding (PNG,
  JPEG, BMP, TIFF/BigTIFF, DICOM), so a decompression bomb (a small PNG
  declaring 50000x50000, a deflate TIFF of zeros) is refused cheaply;
* JPEGs must reach their end-of-image marker (libjpeg pads a truncated scan
  with grey and reports success) but may carry trailing bytes after it, as
  phones append them;
* 16-bit grayscale is scaled to 8 bits by its bit depth (see
  :func:`to_uint8`), RGBA drops alpha (before the bit depth is chosen, so an
  opaque 16-bit alpha does not darken a 12-bit image), palette images are
  expanded;
* only regular files are read (not a FIFO or a device such as /dev/zero), and
  never more than ``MAX_FILE_BYTES``;
* EXIF orientation is ignored everywhere, on purpose: OpenCV's default would
  rotate some files at runtime and not in training.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import cv2
import numpy as np

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ImageDecodeError

# 40 megapixels: larger than any digital radiograph detector (43x43 cm at
# 100 um is ~18.5 MP), smaller than what would exhaust a Jetson's memory.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024
MIN_SIDE = 16

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
    "lanczos": cv2.INTER_LANCZOS4,
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


@dataclass(frozen=True)
class ImageHeader:
    """What the file's own header declares, read without decoding pixels."""

    format: str
    width: int | None
    height: int | None


def sniff_header(data: bytes) -> ImageHeader:
    """Identify the format from magic bytes and read the declared size."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24:
            return ImageHeader("png", None, None)
        width, height = struct.unpack(">II", data[16:24])
        return ImageHeader("png", width, height)
    if data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(data)
        return ImageHeader("jpeg", width, height)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return ImageHeader("bmp", abs(width), abs(height))
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        width, height = tiff_size(data)
        return ImageHeader("tiff", width, height)
    if len(data) >= 132 and data[128:132] == b"DICM":
        return ImageHeader("dicom", None, None)
    return ImageHeader("unknown", None, None)


SUPPORTED_FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"


def _unsupported_format(data: bytes) -> str | None:
    """Name of a format people do send but we do not decode, so the refusal can say so plainly."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIC/AVIF"
    if data.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if data.startswith(b"%PDF"):
        return "PDF"
    return None


def _unknown_format_reason(data: bytes) -> str:
    label = _unsupported_format(data)
    if label is None:
        return f"not an image: content is not {SUPPORTED_FORMATS}"
    return (
        f"{label} file: this format is not supported; convert it to PNG (lossless) and send it again "
        f"(supported: {SUPPORTED_FORMATS})"
    )


# TIFF field types that can hold ImageWidth/ImageLength: SHORT, LONG, LONG8 (BigTIFF).
_TIFF_INT_TYPES = {3: "H", 4: "I", 16: "Q"}


def tiff_size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) from the first TIFF or BigTIFF directory (tags 256/257), without decoding.

    OpenCV decodes only the first directory, so that is the one whose size matters.
    """
    order = "<" if data[:2] == b"II" else ">"
    try:
        (version,) = struct.unpack_from(order + "H", data, 2)
        if version == 42:
            (ifd,) = struct.unpack_from(order + "I", data, 4)
            count_fmt, entry_size, value_at = "H", 12, 8
        elif version == 43:
            (ifd,) = struct.unpack_from(order + "Q", data, 8)
            count_fmt, entry_size, value_at = "Q", 20, 12
        else:
            return None, None
        (entries,) = struct.unpack_from(order + count_fmt, data, ifd)
        first = ifd + struct.calcsize(count_fmt)
        found: dict[int, int] = {}
        for i in range(min(entries, 4096)):
            at = first + i * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, at)
            if tag in (256, 257) and kind in _TIFF_INT_TYPES:
                # A single value sits left-justified in the entry's value field.
                (found[tag],) = struct.unpack_from(order + _TIFF_INT_TYPES[kind], data, at + value_at)
    except struct.error:  # an offset past the end of the file
        return None, None
    return found.get(256), found.get(257)


JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_sof_offset(data: bytes) -> int | None:
    """Offset of the first JPEG start-of-frame marker (0xFF, SOFn), walking segment lengths."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in JPEG_SOF_MARKERS:
            return pos
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) declared by the first JPEG SOF segment."""
    pos = jpeg_sof_offset(data)
    if pos is None or pos + 9 > len(data):
        return None, None
    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
    return width, height


def jpeg_eoi_offset(data: bytes) -> int | None:
    """Offset of the end-of-image marker that closes the first image, or None if it never comes.

    Walks the segments (so APP segments holding EXIF thumbnails, themselves small
    JPEGs, are skipped) and the entropy-coded scans, where 0xFF is always
    followed by 0x00 or a restart marker, so the first other marker ends the
    scan. Bytes after the EOI (phone trailers, appended gain maps) are allowed.
    """
    pos = 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if pos + 4 > len(data):
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data after its header
            pos = _end_of_scan(data, pos)
    return None


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker;
# anything else is the marker that ends the scan. A regex keeps this scan in C.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _end_of_scan(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data starting at ``pos`` (len(data) if none)."""
    found = _SCAN_END.search(data, pos)
    return len(data) if found is None else found.start()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Bring any decoded pixel array to uint8.

    16-bit data is scaled by the smallest bit depth that holds its maximum
    (8, 10, 12, 14 or 16 bits): X-ray exports often store 12-bit values in a
    16-bit PNG, and a plain ``>> 8`` would make them nearly black, while an
    8-bit image stored as 16 bits (values x257) maps back exactly.

    The peak (and a float image's range) is taken over every channel, so
    callers drop alpha first (:func:`_to_gray_or_bgr`).
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        peak = int(image.max()) if image.size else 0
        depth = next((bits for bits in (8, 10, 12, 14) if peak < (1 << bits)), 16)
        full = float((1 << depth) - 1)
        # The same float32 arithmetic as scaling every pixel, done once per possible value.
        codes = np.arange(1 << 16, dtype=np.float32)
        lut = np.clip(np.rint(codes * (255.0 / full)), 0, 255).astype(np.uint8)
        return apply_lut(image, lut)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float32))
        low, high = float(finite.min()), float(finite.max())
        span = high - low if high > low else 1.0
        return np.clip(np.rint((finite - low) * (255.0 / span)), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {image.dtype}")


_LUT_CHUNK = 1 << 20


def apply_lut(codes: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[codes]`` for 8/16-bit unsigned codes, in chunks.

    NumPy turns index arrays into 8-byte integers, so one ``lut[codes]`` on a
    40-megapixel image would briefly take 320 MB; chunks of rows keep that to
    about 8 MB, and the result is uint8 without any float32 copy of the image.
    ``codes`` may be a strided view (BGR of a BGRA image): only a chunk is copied at a time.
    """
    out = np.empty(codes.shape, dtype=lut.dtype)
    if codes.ndim == 0 or codes.size == 0:  # nothing to chunk (and no row size to divide by)
        out[...] = np.take(lut, codes)
        return out
    rows = max(1, _LUT_CHUNK // (codes.size // codes.shape[0]))
    for start in range(0, codes.shape[0], rows):
        np.take(lut, codes[start : start + rows], out=out[start : start + rows])
    return out


def _to_gray_or_bgr(image: np.ndarray) -> np.ndarray:
    """Drop alpha, keep 1 channel (2-D) or 3 channels (BGR), in the decoded pixel type.

    Runs before :func:`to_uint8`: an opaque 16-bit alpha (65535) would
    otherwise set the bit depth of a 12-bit image to 16 and darken it 16x.
    Alpha is dropped as a view (no copy of a 16-bit image); :func:`decode_bytes`
    makes the uint8 result contiguous.
    """
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"unsupported image shape {image.shape}")


def too_many_pixels(
    name: str, width: int, height: int, max_pixels: int, declared: bool = True
) -> ImageDecodeError:
    """The refusal of an image over ``max_pixels``, with the size it would have to be scaled down to."""
    count = width * height
    scale = math.sqrt(max_pixels / count)
    fit_w, fit_h = max(1, int(width * scale)), max(1, int(height * scale))
    return ImageDecodeError(
        name,
        f"{'declares' if declared else 'is'} {width}x{height} pixels ({count:,}), over the limit of "
        f"{max_pixels:,} pixels: refusing a possible decompression bomb, which would also exhaust this "
        f"device's memory. Downscale it to at most {fit_w}x{fit_h} (same aspect ratio; any digital "
        "radiograph fits) and send it again",
    )


DICOM_SUFFIXES = (".dcm", ".dicom")


def _is_raw_dicom(data: bytes, name: str) -> bool:
    """A DICOM data set without the 128-byte preamble and 'DICM' (older PACS exports).

    There is no magic number to sniff, so only a .dcm/.dicom name whose bytes
    start with a little-endian group 0002 or 0008 tag is tried as one.
    """
    return name.lower().endswith(DICOM_SUFFIXES) and data[:2] in (b"\x02\x00", b"\x08\x00")


def decode_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes to uint8, 2-D grayscale or 3-channel BGR."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)", maybe_incomplete=True)
    header = sniff_header(data)
    if header.format == "unknown" and _is_raw_dicom(data, name):
        header = ImageHeader("dicom-raw", None, None)
    if header.format == "unknown":
        raise ImageDecodeError(name, _unknown_format_reason(data))
    if header.format == "tiff" and (header.width is None or header.height is None):
        # Refused rather than decoded blind: the size check below is what keeps memory bounded.
        raise ImageDecodeError(
            name, "corrupt TIFF: no image width and height in its first directory", maybe_incomplete=True
        )
    if header.width is not None and header.height is not None and header.width * header.height > max_pixels:
        raise too_many_pixels(name, header.width, header.height, max_pixels)
    if header.format.startswith("dicom"):
        image = _decode_dicom(data, name, max_pixels, raw=header.format == "dicom-raw")
    else:
        if header.format == "jpeg" and jpeg_eoi_offset(data) is None:
            # Checked first: some libjpeg builds fill a truncated scan with grey and return success.
            raise ImageDecodeError(
                name,
                "truncated JPEG: the image data ends before its end-of-image marker; send the file again",
                maybe_incomplete=True,
            )
        buffer = np.frombuffer(data, dtype=np.uint8)
        flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
        try:
            decoded = cv2.imdecode(buffer, flags)
        except cv2.error as exc:
            raise ImageDecodeError(
                name, f"{header.format} decoder failed: {exc}", maybe_incomplete=True
            ) from exc
        if decoded is None:
            raise ImageDecodeError(name, f"corrupt or truncated {header.format} data", maybe_incomplete=True)
        image = decoded
    if image.shape[0] * image.shape[1] > max_pixels:
        raise too_many_pixels(name, image.shape[1], image.shape[0], max_pixels, declared=False)
    if min(image.shape[:2]) < MIN_SIDE:
        raise ImageDecodeError(name, f"image is {image.shape[1]}x{image.shape[0]}: too small to read")
    try:
        return np.ascontiguousarray(to_uint8(_to_gray_or_bgr(image)))
    except ValueError as exc:
        raise ImageDecodeError(name, str(exc)) from exc


def _dicom_int(dataset: object, keyword: str, default: int) -> int:
    value = getattr(dataset, keyword, None)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _decode_dicom(data: bytes, name: str, max_pixels: int, raw: bool = False) -> np.ndarray:
    """DICOM -> uint8: size checked from the header first, then one frame decoded and windowed."""
    try:
        import io

        import pydicom
    except ImportError as exc:
        raise ImageDecodeError(
            name,
            "DICOM file, but pydicom is not installed: pip install 'pydicom>=2.4' (in a checkout: pip install -e '.[dicom]')",
        ) from exc
    try:
        # Header only: the pixel data is neither copied nor decoded until the size is known to be sane.
        meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=raw)
    except Exception as exc:
        raise ImageDecodeError(name, f"unreadable DICOM: {exc}", maybe_incomplete=True) from exc
    rows, columns = _dicom_int(meta, "Rows", 0), _dicom_int(meta, "Columns", 0)
    if rows <= 0 or columns <= 0:
        what = "not an image: no DICOM header found" if raw else "DICOM without an image (no Rows/Columns)"
        raise ImageDecodeError(name, f"{what}; send the radiograph's image object")
    frames = _dicom_int(meta, "NumberOfFrames", 1)
    if frames > 1:
        raise ImageDecodeError(
            name,
            f"multi-frame DICOM ({frames} frames) is not a single radiograph; export the one image to classify",
        )
    samples = _dicom_int(meta, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise ImageDecodeError(
            name, f"DICOM with {samples} samples per pixel: expected 1 (grayscale) or 3 (colour)"
        )
    if rows * columns > max_pixels:
        raise too_many_pixels(name, columns, rows, max_pixels)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=raw)
        if raw:
            _set_transfer_syntax_from_encoding(dataset)
        pixels = dataset.pixel_array
    except Exception as exc:
        raise ImageDecodeError(name, f"unreadable DICOM pixel data: {exc}", maybe_incomplete=True) from exc
    if pixels.shape[:2] != (rows, columns) or pixels.ndim != (2 if samples == 1 else 3):
        raise ImageDecodeError(
            name, f"DICOM pixel data has shape {pixels.shape}, header says {rows}x{columns}"
        )
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    # MONOCHROME1 stores bone dark; flip to the usual look.
    invert = str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    image = _window_dicom(pixels, slope, intercept, invert)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return image


def _set_transfer_syntax_from_encoding(dataset: Any) -> None:
    """A data set without file meta has no transfer syntax; pydicom needs one to decode pixels.

    Such files are always uncompressed, in the encoding pydicom detected on reading.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(dataset, "original_encoding", None) or (
            dataset.is_implicit_VR,
            dataset.is_little_endian,
        )
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    dataset.file_meta = meta


def _window_dicom(pixels: np.ndarray, slope: float, intercept: float, invert: bool) -> np.ndarray:
    """Rescale (slope, intercept), stretch min..max to 0..255, optionally invert.

    8- and 16-bit data (every radiograph) go through a lookup table computed
    with the same float32 arithmetic per possible value, so the result equals
    the per-pixel computation without 3-4 float32 copies of the image.
    """
    if pixels.dtype.itemsize not in (1, 2) or pixels.dtype.kind not in "ui" or pixels.size == 0:
        return _window_float(pixels.astype(np.float32), slope, intercept, invert)
    if not pixels.dtype.isnative:  # the unsigned view below reinterprets bytes in native order
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    unsigned = pixels.view(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)
    # Code c of the unsigned view is the stored value codes[c] (two's complement for signed data).
    mask = (1 << (8 * pixels.dtype.itemsize)) - 1
    codes = np.arange(mask + 1, dtype=unsigned.dtype).view(pixels.dtype)
    values = codes.astype(np.float32) * slope + intercept
    # Rescaling is monotonic, so its extremes are those of the stored minimum and maximum.
    ends = values[[int(pixels.min()) & mask, int(pixels.max()) & mask]]
    low, high = float(ends.min()), float(ends.max())
    return apply_lut(unsigned, _stretch(values, low, high, invert))


def _window_float(pixels: np.ndarray, slope: float, intercept: float, invert: bool) -> np.ndarray:
    pixels = pixels * slope + intercept
    return _stretch(pixels, float(pixels.min()), float(pixels.max()), invert)


def _stretch(values: np.ndarray, low: float, high: float, invert: bool) -> np.ndarray:
    scaled = (values - low) * (255.0 / (high - low if high > low else 1.0))
    if invert:
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode one file. Never follows the caller into writing or deleting it."""
    return decode_bytes(read_image_file(path), name=str(path), max_pixels=max_pixels)


def read_image_file(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one regular file, at most ``max_bytes``; ImageDecodeError naming the file otherwise.

    A FIFO or a device (/dev/zero) lists size 0, so the size check alone would
    let a read block for ever or run out of memory: such paths are refused
    from ``stat`` before any open, and no read goes past ``max_bytes + 1``.
    """
    name = str(path)
    try:
        info = os.stat(path)  # follows symlinks: a link to an image file is fine
        _check_regular(name, info.st_mode)
        if info.st_size > max_bytes:
            raise ImageDecodeError(name, f"file is {info.st_size:,} bytes, over the {max_bytes:,} byte limit")
        with open(path, "rb", opener=_open_nonblocking) as file:
            # Checked again on the open file: the path may have been swapped for a FIFO since the stat.
            _check_regular(name, os.fstat(file.fileno()).st_mode)
            data = _read_at_most(file, max_bytes + 1, info.st_size)
    except IsADirectoryError as exc:
        raise ImageDecodeError(name, "is a directory, not an image file") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(name, _missing_reason(path)) from exc
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        # Files in /proc list size 0, and a file may grow between the stat and the read.
        raise ImageDecodeError(
            name,
            f"file is over the {max_bytes:,} byte limit, though it listed {info.st_size:,} bytes (it grew "
            "while being read, or is a special file); send a finished image file under the limit",
        )
    return data


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(name: str, mode: int) -> None:
    """Refuse anything but a regular file, saying what the path is instead."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageDecodeError(name, "is a directory, not an image file")
    kind = next((label for test, label in _SPECIAL_FILES if test(mode)), "a special file")
    raise ImageDecodeError(
        name,
        f"is {kind}, not a regular file: only image files are read; save the image to a file and pass that path",
    )


_READ_CHUNK = 1 << 20


def _read_at_most(file: BinaryIO, limit: int, expected: int) -> bytes:
    """At most ``limit`` bytes of ``file``, in one read when it holds the ``expected`` size.

    ``read(limit)`` would reserve ``limit`` bytes (256 MB) up front even for a
    small file; the rest is read in chunks only when the file has more than it listed.
    """
    first = file.read(min(limit, expected + 1))
    chunks = [first]
    total = len(first)
    while total < limit and chunks[-1]:
        chunks.append(file.read(min(limit - total, _READ_CHUNK)))
        total += len(chunks[-1])
    # The usual case (the file held what it listed) returns the one read: a join would copy it.
    return first if total == len(first) else b"".join(chunks)


def _open_nonblocking(path: str, flags: int) -> int:
    """os.open that cannot wait for a FIFO's writer (O_NONBLOCK changes nothing for regular files)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _missing_reason(path: str | os.PathLike[str]) -> str:
    """Why a path could not be found: a dangling symlink is a setup mistake, not a race."""
    try:
        target = os.readlink(path)
    except OSError:
        return "file vanished before it could be read"
    return f"broken symbolic link -> {target} (the target does not exist); fix or remove the link"


def apply_contract(image: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Decoded uint8 image (2-D gray or HxWx3 BGR) -> uint8 ``contract.input_shape``."""
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if contract.color == "grayscale" else image
    if contract.color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
    image = _resize(image, contract)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    return np.ascontiguousarray(image, dtype=np.uint8)


def _resize(image: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    height, width = image.shape[:2]
    target_h, target_w = contract.height, contract.width
    interpolation = _INTERPOLATION[contract.interpolation]
    if contract.resize == "center_crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    elif contract.resize == "letterbox":
        ratio = min(target_h / height, target_w / width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        canvas = np.zeros((target_h, target_w, *resized.shape[2:]), dtype=np.uint8)
        top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = resized
        return canvas
    if image.shape[:2] == (target_h, target_w):
        return image
    return cv2.resize(image, (target_w, target_h), interpolation=interpolation)


def preprocess_file(path: str | os.PathLike[str], contract: PreprocessContract) -> np.ndarray:
    """load_image + apply_contract: the path every stage takes from file to model input."""
    return apply_contract(load_image(path), contract)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)
