"""Input sources: files, folders and globs for predict; camera URIs for camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import CameraError
from edge_runtime.sources import CameraSource, expand_inputs, parse_camera_source
from tests.conftest import write_image


def _tree(root: Path) -> None:
    image = np.full((40, 40), 128, np.uint8)
    write_image(root / "a.png", image)
    write_image(root / "sub" / "b.JPEG", image, ".jpg")
    write_image(root / "sub" / "deeper" / "c.png", image)
    write_image(root / ".hidden" / "d.png", image)
    write_image(root / "sub" / ".e.png", image)
    (root / "notes.txt").write_text("not an image")


def test_folders_are_searched_recursively_for_images_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = expand_inputs([str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == [
        "a.png",
        "sub/b.JPEG",
        "sub/deeper/c.png",
    ]
    assert found.failures == []


def test_order_is_kept_and_duplicates_dropped(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = expand_inputs(
        [str(tmp_path / "sub" / "deeper" / "c.png"), str(tmp_path), str(tmp_path / "a.png")]
    )
    assert [p.name for p in found.files] == ["c.png", "a.png", "b.JPEG"]


def test_globs_and_explicit_files_of_any_extension(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = expand_inputs([str(tmp_path / "**" / "*.png"), str(tmp_path / "notes.txt")])
    assert sorted(p.name for p in found.files) == ["a.png", "c.png", "notes.txt"]


def test_arguments_that_match_nothing_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    found = expand_inputs([str(tmp_path / "missing.png"), str(tmp_path / "*.dcm"), str(tmp_path / "empty")])
    assert found.files == []
    assert [reason for _, reason in found.failures] == [
        "no such file or folder",
        "pattern matched no files",
        "folder contains no image files (.png, .jpg, .jpeg, .dcm, ...)",
    ]


def test_camera_uris(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00")
    assert parse_camera_source("0") == CameraSource("v4l2", "/dev/video0", 0)
    assert parse_camera_source("/dev/video2") == CameraSource("v4l2", "/dev/video2", 2)
    assert parse_camera_source("v4l2:///dev/video1") == CameraSource("v4l2", "/dev/video1", 1)
    assert parse_camera_source("csi://1") == CameraSource("csi", "csi://1", 1)
    assert parse_camera_source("rtsp://10.0.0.2:554/stream").kind == "network"
    assert parse_camera_source(str(clip)) == CameraSource("file", str(clip))
    assert parse_camera_source(f"file://{clip}") == CameraSource("file", str(clip))
    for bad, message in (
        ("csi://front", "sensor id"),
        ("v4l2://camera", "v4l2:///dev/videoN"),
        ("", "empty"),
        (str(tmp_path / "nope.mp4"), "no such video file"),
    ):
        with pytest.raises(CameraError, match=message):
            parse_camera_source(bad)
