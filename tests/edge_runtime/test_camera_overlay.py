"""Camera overlay text that lines up and fits the frame; ``--jsonl`` appends through AppendLog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.camera import (
    TEXT_MARGIN,
    CameraConfig,
    draw_outlined,
    last_line_start,
    layout_text,
    outline_radius,
    overlay,
)
from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.predictor import Prediction
from tests.edge_runtime.test_camera import make_video, run_headless

GREY = 128


def _prediction() -> Prediction:
    return Prediction(
        source="csi://0",
        probability=0.734,
        label="PNEUMONIA",
        decision="abnormal",
        threshold=0.42,
        model_version="dsconv-seed0-ensemble-of-three-20250101T000000Z",
        model_sha256="x",
        backend="ort-cpu",
        precision="fp32",
        latency_ms=1.0,
        synthetic=True,
    )


def _columns(mask: np.ndarray) -> tuple[int, int]:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_outline_lines_up_with_its_text(scale: float) -> None:
    """OpenCV 5 draws thickness > 1 as a wider bold face: a thick outline ran past its text."""
    image = np.full((80, 900, 3), GREY, np.uint8)
    draw_outlined(image, "Decision support only, not a diagnosis", (10, 50), scale, (0, 200, 0))
    green = (image[..., 1] > 150) & (image[..., 2] < 100)
    dark = image.max(axis=2) < 60
    (g_left, g_right), (d_left, d_right) = _columns(green), _columns(dark)
    radius = outline_radius(scale)
    assert abs(d_left - g_left) <= radius + 1 and abs(d_right - g_right) <= radius + 1


@pytest.mark.parametrize(("width", "height"), [(320, 240), (240, 320), (1280, 720)])
def test_overlay_text_fits_the_frame_whole(width: int, height: int) -> None:
    frame = np.full((height, width, 3), GREY, np.uint8)
    shown = overlay(frame, _prediction(), 29.7, synthetic=True)
    # Nothing reaches the right edge: no line was cut off there.
    assert (shown[:, -(TEXT_MARGIN // 2) :] == GREY).all()
    texts = [
        "PNEUMONIA  p=0.734 (threshold 0.420)",
        f"29.7 FPS  ort-cpu fp32  model {_prediction().model_version}",
        "Decision support only, not a diagnosis",
        SYNTHETIC_WARNING,
    ]
    scale, wrapped, step = layout_text(texts, width, height)
    # Every word is shown (the model version may be split inside), and every line fits the height.
    for text, rows in zip(texts, wrapped):
        assert "".join(rows).replace(" ", "") == text.replace(" ", "")
    assert TEXT_MARGIN + step * sum(len(rows) for rows in wrapped) <= height


def test_last_line_start_finds_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert last_line_start(path) == 0
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert last_line_start(path) == len(b'{"a": 1}\n{"b": 2}\n')
    path.write_bytes(b'{"a": 1}\n')
    assert last_line_start(path) == path.stat().st_size


EARLIER = b'{"earlier": "run"}\n'


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        pytest.param(EARLIER + b'{"frame": 7, "probabil', EARLIER, id="torn-last-line"),
        pytest.param(b'{"frame": 0, "probabil', b"", id="torn-first-line"),
        pytest.param(EARLIER + b"\0" * 4096, EARLIER, id="zeros-after-power-cut"),
        pytest.param(b"\0" * 4096, b"", id="zeros-before-the-first-line"),
        # Larger than the window read to tell a log from another file (LOG_CHECK_BYTES at each end).
        pytest.param(EARLIER * 80_000 + b'{"frame": 7, "pro', EARLIER * 80_000, id="large-log"),
    ],
)
def test_jsonl_torn_by_a_crash_is_repaired_before_appending(
    tiny_bundle: Path, tmp_path: Path, content: bytes, kept: bytes
) -> None:
    video = make_video(tmp_path / "clip.mp4", 3)
    jsonl = tmp_path / "frames.jsonl"
    jsonl.write_bytes(content)  # power cut mid-line
    run_headless(tiny_bundle, CameraConfig(source=str(video), headless=True, jsonl=jsonl))
    raw = jsonl.read_bytes()
    assert raw.startswith(kept) and raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw[len(kept) :].splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2]
