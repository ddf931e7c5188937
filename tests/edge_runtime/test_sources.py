"""Input sources: files, folders and globs for predict; camera URIs for camera."""

from __future__ import annotations

import json
import os
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
    # a file in a folder that is not an image is listed with the reason; hidden ones are passed over
    assert found.skipped == [
        (str(tmp_path / "notes.txt"), "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM")
    ]


def test_files_without_an_image_name_are_read_by_content(tmp_path: Path) -> None:
    """PACS exports name images IM000001, phones .jfif: classified by content, the rest listed, none dropped."""
    import cv2

    image = np.full((40, 40), 128, np.uint8)
    write_image(tmp_path / "a.png", image)
    write_image(tmp_path / "IM000001", image, ".png")
    write_image(tmp_path / "c.jfif", image, ".jpg")
    ok, webp = cv2.imencode(".webp", image)
    assert ok
    (tmp_path / "b.webp").write_bytes(webp.tobytes())  # read: the decoder's refusal names WebP
    (tmp_path / "empty").write_bytes(b"")  # read: the decoder says it is empty
    dicom_index = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"
    (tmp_path / "DICOMDIR").write_bytes(dicom_index)
    (tmp_path / "README.TXT").write_text("Viewer: run autorun.exe")
    os.mkfifo(tmp_path / "pipe")  # never opened: it would block
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: hidden, passed over
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    found = expand_inputs([str(tmp_path)])
    assert [p.name for p in found.files] == ["IM000001", "a.png", "b.webp", "c.jfif", "empty"]
    assert found.failures == []
    assert found.skipped == [
        (
            str(tmp_path / "DICOMDIR"),
            "DICOMDIR: the index of a DICOM export, which lists the images and holds none",
        ),
        (str(tmp_path / "README.TXT"), "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM"),
        (str(tmp_path / "pipe"), "not a regular file (a pipe, socket or device), so not an image"),
    ]


def test_a_file_named_and_in_a_folder_given_is_read_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    found = expand_inputs([str(tmp_path), str(tmp_path), str(tmp_path / "notes.txt")])
    assert found.files == [tmp_path / "notes.txt"] and found.skipped == []
    found = expand_inputs([str(tmp_path), str(tmp_path)])
    assert found.skipped == [
        (str(tmp_path / "notes.txt"), "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM")
    ]


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


def test_linked_folders_are_followed_once_and_loops_end(tmp_path: Path) -> None:
    _tree(tmp_path / "scans")
    write_image(tmp_path / "elsewhere" / "f.png", np.full((40, 40), 9, np.uint8))
    (tmp_path / "scans" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "scans" / "sub" / "loop").symlink_to(tmp_path / "scans")
    found = expand_inputs([str(tmp_path / "scans")])
    assert [p.relative_to(tmp_path / "scans").as_posix() for p in found.files] == [
        "a.png",
        "linked/f.png",
        "sub/b.JPEG",
        "sub/deeper/c.png",
    ]
    assert found.failures == []


def test_an_unreadable_subfolder_is_reported_not_skipped(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    _tree(tmp_path / "scans")
    locked = tmp_path / "scans" / "sub" / "deeper"
    locked.chmod(0o000)
    try:
        if os.geteuid() != 0:
            found = expand_inputs([str(tmp_path / "scans")])
            failures = [list(f) for f in found.failures]
        else:
            # root reads any folder; an unprivileged user namespace maps us to nobody, who cannot.
            if shutil.which("unshare") is None:
                pytest.skip("running as root without unshare: no way to make a folder unreadable")
            script = (
                "import json, sys; from edge_runtime.sources import expand_inputs; "
                "print(json.dumps(expand_inputs([sys.argv[1]]).failures))"
            )
            done = subprocess.run(
                ["unshare", "-U", sys.executable, "-c", script, str(tmp_path / "scans")],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            if done.returncode != 0:
                pytest.skip(f"unshare -U is not permitted here: {done.stderr.strip()[:200]}")
            failures = json.loads(done.stdout)
    finally:
        locked.chmod(0o755)
    assert failures == [[str(locked), "cannot read folder: Permission denied"]]
