"""The one implementation of image decoding and the preprocessing contract.

Training (the decode cache), calibration, parity checks, benchmarks and every
edge command call :func:`load_image` -> :func:`apply_contract`. Nothing else in
the project resizes or converts colour, so train and runtime pixels are the
same bytes (tests/edge_runtime/test_preprocess.py and
tests/train/test_contract_parity.py check that).

Decoding is defensive, because a clinic inbox receives anything:

* the format is sniffed from the bytes, not the extension (PNG content under a
  ``.jpeg`` name is fine; a text file named ``.jpg`` is rejected);
* the declared pixel count is read from the header *before* decoding, so a
  decompression bomb (a small PNG declaring 50000x50000) is refused cheaply;
* 16-bit grayscale is scaled to 8 bits by its bit depth (see
  :func:`to_uint8`), RGBA drops alpha, palette images are expanded;
* EXIF orientation is ignored everywhere, on purpose: OpenCV's default would
  rotate some files at runtime and not in training.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

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
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageHeader("tiff", None, None)
    if len(data) >= 132 and data[128:132] == b"DICM":
        return ImageHeader("dicom", None, None)
    return ImageHeader("unknown", None, None)


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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Bring any decoded pixel array to uint8.

    16-bit data is scaled by the smallest bit depth that holds its maximum
    (8, 10, 12, 14 or 16 bits): X-ray exports often store 12-bit values in a
    16-bit PNG, and a plain ``>> 8`` would make them nearly black, while an
    8-bit image stored as 16 bits (values x257) maps back exactly.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        peak = int(image.max()) if image.size else 0
        depth = next((bits for bits in (8, 10, 12, 14) if peak < (1 << bits)), 16)
        full = float((1 << depth) - 1)
        return np.clip(np.rint(image.astype(np.float32) * (255.0 / full)), 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float32))
        low, high = float(finite.min()), float(finite.max())
        span = high - low if high > low else 1.0
        return np.clip(np.rint((finite - low) * (255.0 / span)), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {image.dtype}")


def _to_gray_or_bgr(image: np.ndarray) -> np.ndarray:
    """Drop alpha, keep 1 channel (2-D) or 3 channels (BGR)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"unsupported image shape {image.shape}")


def decode_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes to uint8, 2-D grayscale or 3-channel BGR."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    header = sniff_header(data)
    if header.format == "unknown":
        raise ImageDecodeError(name, "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM")
    if header.width is not None and header.height is not None:
        declared = header.width * header.height
        if declared > max_pixels:
            raise ImageDecodeError(
                name,
                f"declares {header.width}x{header.height} pixels ({declared:,}), over the limit of "
                f"{max_pixels:,}: refusing a possible decompression bomb",
            )
    if header.format == "dicom":
        image = _decode_dicom(data, name)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
        flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
        try:
            decoded = cv2.imdecode(buffer, flags)
        except cv2.error as exc:
            raise ImageDecodeError(name, f"{header.format} decoder failed: {exc}") from exc
        if decoded is None:
            raise ImageDecodeError(name, f"corrupt or truncated {header.format} data")
        image = decoded
        if header.format == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            # libjpeg fills a truncated scan with grey and returns success.
            raise ImageDecodeError(name, "truncated JPEG (no end-of-image marker)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageDecodeError(name, f"{image.shape[1]}x{image.shape[0]} pixels is over the limit")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ImageDecodeError(name, f"image is {image.shape[1]}x{image.shape[0]}: too small to read")
    try:
        return _to_gray_or_bgr(to_uint8(image))
    except ValueError as exc:
        raise ImageDecodeError(name, str(exc)) from exc


def _decode_dicom(data: bytes, name: str) -> np.ndarray:
    try:
        import io

        import pydicom
    except ImportError as exc:
        raise ImageDecodeError(
            name, "DICOM file, but pydicom is not installed: pip install 'pneumo-edge[dicom]'"
        ) from exc
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = dataset.pixel_array.astype(np.float32)
    except Exception as exc:
        raise ImageDecodeError(name, f"unreadable DICOM: {exc}") from exc
    if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low if high > low else 1.0))
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled  # MONOCHROME1 stores bone dark; flip to the usual look
    image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return image


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode one file. Never follows the caller into writing or deleting it."""
    name = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(name, f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,} byte limit")
        data = Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise ImageDecodeError(name, "is a directory, not an image file") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(name, "file vanished before it could be read") from exc
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file: {exc.strerror or exc}") from exc
    return decode_bytes(data, name=name, max_pixels=max_pixels)


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
