"""Where images come from: files, folders and globs for ``predict``; camera URIs for ``camera``.

Input sources are chosen by what the user typed, in the manner of
jetson-inference: a path to a file, a folder (searched recursively for image
files), a glob pattern, or for cameras ``0``, ``/dev/video0``,
``v4l2:///dev/video0``, ``csi://0``, ``rtsp://...``, ``http(s)://...`` or a
video file. Expansion only lists paths and reads the first bytes of a file
in a folder whose name is not an image name (PACS exports write ``IM000001``);
it never moves or changes anything, and every argument that matches nothing,
and every file in a folder that is not read, is reported, not dropped.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_runtime.errors import CameraError, ImageDecodeError
from edge_runtime.preprocess import decode_bytes, is_image_name, sniff_header

_GLOB_CHARS = re.compile(r"[*?\[]")

# Enough to sniff every format the decoder names: DICOM's 'DICM' follows a 128-byte preamble.
_SNIFF_BYTES = 132


@dataclass
class ExpandedInputs:
    """Files to read, in order and without duplicates, the arguments that named nothing, and
    the files found in folders that are not read because they are not images (name, why)."""

    files: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _not_an_image(path: Path) -> str | None:
    """Why a file found in a folder is not read as an image, or None when it is to be read.

    An image name is enough. Other names are read by content, because PACS exports write
    ``IM000001`` and phones ``.jfif``: what the decoder reads is classified, an image format
    it refuses (WebP, GIF, HEIC, ...) is read so that its refusal names the format, and only
    content that is no image at all is not read. An empty file, or one that cannot be looked
    at, is read, so that the decoder names why rather than it vanishing.
    """
    if is_image_name(path.name):
        return None
    if path.name.upper() == "DICOMDIR":  # PS3.10 fixes this name for the index of a DICOM export
        return "DICOMDIR: the index of a DICOM export, which lists the images and holds none"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file (a pipe, socket or device), so not an image"
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None
    if not head or sniff_header(head).format != "unknown":
        return None
    try:
        decode_bytes(head, str(path))
    except ImageDecodeError as exc:
        # The decoder's own reason: a format it names (WebP, ...) is an image it refuses.
        return exc.reason if exc.reason.startswith("not an image") else None
    return None


def _folder_images(
    folder: Path, failures: list[tuple[str, str]] | None = None, skipped: list[tuple[str, str]] | None = None
) -> list[Path]:
    """Image files under ``folder``; each subfolder that cannot be read is added to ``failures``,
    each other file that is not an image (:func:`_not_an_image`) to ``skipped``.

    Hidden files and folders (``.DS_Store``, ``._x``) are passed over silently. Symbolic links
    to folders are followed once each: a link back up the tree (a loop) is skipped, since its
    images are listed already.
    """
    found: list[Path] = []
    visited = {os.path.realpath(folder)}

    def unreadable(exc: OSError) -> None:
        if failures is not None:
            failures.append((str(exc.filename or folder), f"cannot read folder: {exc.strerror or exc}"))

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        keep = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(root, name))
            if real not in visited:
                visited.add(real)
                keep.append(name)
        dirs[:] = keep
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(root) / name
            reason = _not_an_image(path)
            if reason is None:
                found.append(path)
            elif skipped is not None:
                skipped.append((str(path), reason))
    return found


def expand_inputs(arguments: list[str] | tuple[str, ...]) -> ExpandedInputs:
    """Expand files, folders (recursive, images by name or content) and globs, keeping the order given.

    A file named explicitly is kept whatever its extension: the decoder sniffs
    the content and reports a clear reason if it is not an image. A file in a
    folder that is not an image goes to ``skipped`` with the reason.
    """
    result = ExpandedInputs()
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.normpath(str(path))
        if key not in seen:
            seen.add(key)
            result.files.append(path)

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            before = len(result.failures)
            images = _folder_images(path, result.failures, result.skipped)
            if not images and len(result.failures) == before:
                result.failures.append(
                    (argument, "folder contains no image files (.png, .jpg, .jpeg, .dcm, ...)")
                )
            for image in images:
                add(image)
        elif path.exists():
            add(path)
        elif _GLOB_CHARS.search(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            for folder in (Path(m) for m in matches if Path(m).is_dir()):
                files.extend(_folder_images(folder, result.failures, result.skipped))
            if not files:
                result.failures.append((argument, "pattern matched no files"))
            for match in files:
                add(match)
        else:
            result.failures.append((argument, "no such file or folder"))
    # a folder given twice lists its other files twice; a file named as well is read, not skipped
    unique = dict.fromkeys(result.skipped)
    result.skipped = [(name, why) for name, why in unique if os.path.normpath(name) not in seen]
    return result


SourceKind = Literal["v4l2", "csi", "network", "file"]


@dataclass(frozen=True)
class CameraSource:
    """A parsed ``--source``: its kind and what OpenCV or GStreamer gets."""

    kind: SourceKind
    target: str
    index: int | None = None

    def describe(self) -> str:
        return {
            "v4l2": f"USB/V4L2 camera {self.target}",
            "csi": f"CSI camera sensor {self.index}",
            "network": f"network stream {self.target}",
            "file": f"video file {self.target}",
        }[self.kind]


def parse_camera_source(text: str) -> CameraSource:
    """'0' / '/dev/video0' / 'v4l2:///dev/video0' / 'csi://0' / 'rtsp://...' / 'clip.mp4'."""
    text = text.strip()
    if not text:
        raise CameraError("--source is empty: give 0, /dev/video0, csi://0, rtsp://... or a video file")
    if text.isdigit():
        return CameraSource("v4l2", f"/dev/video{int(text)}", int(text))
    if text.startswith("v4l2://"):
        device = text[len("v4l2://") :]
        match = re.fullmatch(r"/dev/video(\d+)", device)
        if not match:
            raise CameraError(f"--source {text}: expected v4l2:///dev/videoN")
        return CameraSource("v4l2", device, int(match.group(1)))
    match = re.fullmatch(r"/dev/video(\d+)", text)
    if match:
        return CameraSource("v4l2", text, int(match.group(1)))
    if text.startswith("csi://"):
        sensor = text[len("csi://") :]
        if not sensor.isdigit():
            raise CameraError(f"--source {text}: expected csi://N with the sensor id, e.g. csi://0")
        return CameraSource("csi", text, int(sensor))
    if re.match(r"^(rtsp|rtsps|rtmp|http|https)://", text):
        return CameraSource("network", text)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if not Path(text).is_file():
        raise CameraError(
            f"--source {text}: no such video file (and not 0, /dev/videoN, csi://N or a rtsp:// URL)"
        )
    return CameraSource("file", text)
