"""Labelled image sets: class folders, and the split lists a training run writes (split.json).

One reader for all three stages. Training scans class folders with
:func:`image_files`; export draws calibration, parity and test images from a
run's split.json with :func:`read_split`; the benchmarks read the same test
list on the device, where ``train`` is not installed. Labels are class folder
names, compared exactly everywhere (a model's ``NORMAL`` is not a folder's
``normal``); :func:`case_hint` says what to rename.

split.json = ``{"root": DATA_ROOT, "labels": [...], "train": [{"path", "label", ...}],
"val": [...], "test": [...]}``, paths absolute or relative to ``root``. Every reader resolves them the
same way (:func:`split_root`, :func:`locate`): under ``--data`` when one is given (the data set's folder
now), else under ``root``; a relative ``root`` is relative to the split file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import LabelledSetError
from edge_runtime.fileio import read_json
from edge_runtime.preprocess import is_image_name

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    """One image file with its true label and the split it belongs to."""

    path: Path
    label: str
    split: str
    # The path as the data set names it (relative to its root where possible): stable across machines,
    # so provenance hashes do not change when the data set moves.
    ref: str = ""


def image_files(folder: Path) -> list[Path]:
    """Image-named files under ``folder`` (recursive, sorted), skipping hidden files like ._x.jpeg."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name) and not p.name.startswith(".")
    )


def case_hint(label: str, labels: Sequence[str]) -> str:
    """A note for a label that matches one of ``labels`` only when case is ignored, else ''."""
    near = [known for known in labels if known.casefold() == label.casefold() and known != label]
    return f" (labels are case-sensitive: rename {label!r} to {near[0]!r})" if near else ""


def read_split(
    path: Path, split: str, labels: Sequence[str], data_root: Path | None = None
) -> list[LabelledImage]:
    """The entries of ``split`` in a split.json, paths resolved, labels checked, every file checked to exist.

    ``data_root``: where the data set is now (``--data``); every path recorded under the split file's
    root is read from the same relative place under it.
    """
    if split not in SPLITS:
        raise LabelledSetError(f"unknown split {split!r}: expected one of {SPLITS}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise LabelledSetError(
            f"{path}: cannot read split JSON ({exc}); re-run 'pneumo train' to rewrite it, or pass the images with --data"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get(split), list):
        raise LabelledSetError(f"{path}: no {split!r} list; expected the split.json 'pneumo train' writes")
    for entry in data[split]:
        if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
            raise LabelledSetError(f"{path}: a {split} entry lacks 'path' or 'label': {entry!r}")
    recorded = split_root(data.get("root"), path.parent, recorded_paths(data))
    images = []
    for entry in data[split]:
        where, ref = locate(str(entry["path"]), recorded, data_root)
        image = LabelledImage(path=where, label=str(entry["label"]), split=split, ref=ref)
        if image.label not in labels:
            raise LabelledSetError(
                f"{path}: {image.path} has label {image.label!r}, not one of the model's labels {list(labels)}"
                f"{case_hint(image.label, labels)}"
            )
        images.append(image)
    missing = [image.path for image in images if not image.path.is_file()]
    if missing:
        hint = (
            "pass --data ROOT where the data set now lives"
            if data_root is None
            else f"check --data {data_root}"
        )
        raise LabelledSetError(
            f"{missing[0]}: listed in {path} ({split}) but not found ({len(missing)} of {len(images)} missing); {hint}"
        )
    return images


def recorded_paths(data: dict[str, Any]) -> list[Path]:
    """Every entry path of a split.json's split lists, as written."""
    return [
        Path(str(entry["path"]))
        for name in SPLITS
        for entry in data.get(name) or []
        if isinstance(entry, dict) and "path" in entry
    ]


def split_root(root: Any, base: Path, paths: Sequence[Path] = ()) -> Path:
    """The absolute data root a split.json names in its ``root`` field.

    An absolute ``root`` is taken as it is. A relative one is relative to ``base`` (the split file's
    folder; none at all means ``base`` itself), except in files written before session 21: those
    recorded ``--data`` as typed, relative to a working folder this reader cannot know, with absolute
    entry paths; their root is then the ancestor of those paths that ends in the typed root's names.
    """
    if root is None or str(root) == "":
        return base
    given = Path(str(root)).expanduser()
    if given.is_absolute():
        return given
    absolute = [p for p in paths if p.is_absolute()]
    if not absolute:
        return base / given
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names = tuple(part for part in Path(os.path.normpath(given)).parts if part not in (os.curdir, os.pardir))
    for candidate in (common, *common.parents):
        if not names or candidate.parts[-len(names) :] == names:
            return candidate
    return common


def locate(recorded: str, root: Path, data_root: Path | None = None) -> tuple[Path, str]:
    """Where a split.json entry is, and its ref: the path relative to the data root.

    A path under ``root`` (relative, or absolute under it) is read under ``data_root`` when given, so a
    data set that moved is found again, and its ref names it relative to the root: stable across
    machines, so provenance hashes do not change when the data set moves. An absolute path outside
    ``root`` is kept as recorded.
    """
    raw = Path(recorded)
    if not raw.is_absolute():
        return (data_root or root) / raw, raw.as_posix()
    # entries are recorded resolved; a root recorded through a symlink is compared resolved too
    for base in (root, root.resolve()):
        try:
            relative = raw.relative_to(base)
        except ValueError:
            continue
        return (raw if data_root is None else data_root / relative), relative.as_posix()
    return raw, raw.as_posix()
