"""The preprocessing contract: decoding of odd-but-valid files, refusal of bad ones, determinism."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ContractError, ImageDecodeError
from edge_runtime.preprocess import apply_contract, decode_bytes, load_image, preprocess_file, to_uint8
from tests.conftest import REPO, write_image


def test_contract_roundtrip(tmp_path: Path) -> None:
    contract = PreprocessContract(height=128, width=160, color="rgb", interpolation="linear")
    contract.save(tmp_path)
    assert PreprocessContract.load(tmp_path) == contract
    assert contract.input_shape == (128, 160, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"color": "cmyk"}, {"interpolation": "magic"}, {"height": 2}, {"scale": 0.0}, {"resize": "warp"}],
)
def test_contract_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ContractError):
        PreprocessContract(**kwargs)


def test_contract_rejects_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "contract.json").write_text('{"height": 224, "gamma": 2.2}')
    with pytest.raises(ContractError, match="gamma"):
        PreprocessContract.load(tmp_path)


def test_apply_contract_shapes_and_dtype(gray_image: np.ndarray) -> None:
    gray = apply_contract(gray_image, PreprocessContract(height=64, width=80))
    rgb = apply_contract(gray_image, PreprocessContract(height=64, width=80, color="rgb"))
    assert gray.shape == (64, 80, 1) and gray.dtype == np.uint8
    assert rgb.shape == (64, 80, 3)
    # a gray source in RGB mode is the same plane three times
    assert np.array_equal(rgb[:, :, 0], gray[:, :, 0]) and np.array_equal(rgb[:, :, 2], gray[:, :, 0])


def test_stretch_matches_opencv_area(gray_image: np.ndarray) -> None:
    out = apply_contract(gray_image, PreprocessContract(height=100, width=100, interpolation="area"))
    expected = cv2.resize(gray_image, (100, 100), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out[:, :, 0], expected)


def test_letterbox_and_crop_keep_aspect(gray_image: np.ndarray) -> None:
    assert gray_image.shape == (300, 340)
    boxed = apply_contract(gray_image, PreprocessContract(height=64, width=64, resize="letterbox"))
    # 340 wide -> 64: scale 64/340, so 300 tall -> 56 rows, centred with 4 black rows above and below.
    assert boxed.shape == (64, 64, 1)
    assert not boxed[:4].any() and not boxed[60:].any()
    expected = cv2.resize(gray_image, (64, 56), interpolation=cv2.INTER_AREA)
    assert np.array_equal(boxed[4:60, :, 0], expected)
    cropped = apply_contract(gray_image, PreprocessContract(height=64, width=64, resize="center_crop"))
    # The central 300x300 square (20 columns cut on each side), then resized: no stretching.
    expected = cv2.resize(gray_image[:, 20:320], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(cropped[:, :, 0], expected)


def test_png_under_jpeg_name_and_upper_case(tmp_path: Path, gray_image: np.ndarray) -> None:
    path = write_image(tmp_path / "X RAY ünï.JPEG", gray_image, ext=".png")
    assert np.array_equal(load_image(path), gray_image)


def test_16bit_png_12bit_data_is_scaled_not_blackened(tmp_path: Path, gray_image: np.ndarray) -> None:
    twelve_bit = np.rint(gray_image.astype(np.float64) * 4095 / 255).astype(np.uint16)
    path = write_image(tmp_path / "a.png", twelve_bit)
    decoded = load_image(path)
    assert decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - gray_image.astype(int)).max() <= 1


def test_16bit_full_range_maps_back_exactly(gray_image: np.ndarray) -> None:
    assert np.array_equal(to_uint8(gray_image.astype(np.uint16) * 257), gray_image)


def test_rgba_and_palette(tmp_path: Path, gray_image: np.ndarray) -> None:
    bgra = cv2.cvtColor(gray_image, cv2.COLOR_GRAY2BGRA)
    bgra[:, :, 3] = 7
    decoded = load_image(write_image(tmp_path / "rgba.png", bgra))
    assert decoded.shape == (*gray_image.shape, 3)
    assert np.array_equal(
        apply_contract(decoded, PreprocessContract())[:, :, 0],
        apply_contract(gray_image, PreprocessContract())[:, :, 0],
    )


def test_palette_png(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    img = pil.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1)), mode="L").convert("P")
    img.putpalette([v for i in range(64) for v in (4 * i, 4 * i, 4 * i)])  # index i -> gray 4i
    path = tmp_path / "pal.png"
    img.save(path)
    decoded = load_image(path)
    assert decoded.shape[:2] == (64, 64)
    channels = decoded.reshape(64, 64, -1)
    for c in range(channels.shape[2]):
        assert np.array_equal(channels[:, :, c], gradient), "palette indices were read instead of colours"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def test_decompression_bomb_refused_before_decoding() -> None:
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0))
    data = header + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_bytes(data, "bomb.png")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "empty"), (b"hello, I am a text file\n" * 10, "not an image")],
)
def test_bad_bytes(payload: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_bytes(payload, "x.jpg")


def test_truncated_jpeg(tmp_path: Path, gray_image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", gray_image)
    data = buf.tobytes()
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode_bytes(data[: len(data) // 2], "cut.jpg")


def test_directory_and_vanished_file(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path / "dir.jpg")
    with pytest.raises(ImageDecodeError, match="vanished"):
        load_image(tmp_path / "gone.jpg")


def test_dicom_monochrome2(tmp_path: Path, gray_image: np.ndarray) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    pixels = gray_image.astype(np.uint16) * 16
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    decoded = load_image(path)
    assert decoded.shape == gray_image.shape
    lo, hi = int(gray_image.min()), int(gray_image.max())
    expected = np.rint((gray_image.astype(float) - lo) * 255 / (hi - lo))
    assert np.abs(decoded - expected).max() <= 1


def test_preprocess_file_is_deterministic_across_processes(tmp_path: Path, gray_image: np.ndarray) -> None:
    import subprocess
    import sys

    path = write_image(tmp_path / "a.jpeg", gray_image)
    contract = PreprocessContract()
    here = preprocess_file(path, contract)
    there = tmp_path / "there.npy"
    code = (
        "import sys, numpy as np; from pathlib import Path; "
        "from edge_runtime.contract import PreprocessContract; "
        "from edge_runtime.preprocess import preprocess_file; "
        "np.save(sys.argv[2], preprocess_file(Path(sys.argv[1]), PreprocessContract()))"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(there)], check=True, timeout=60, cwd=REPO)
    assert here.dtype == np.uint8 and np.array_equal(here, np.load(there))
