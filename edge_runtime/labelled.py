"""Labelled image sets: class folders, and the split lists a training run writes (split.json).

One reader for all three stages. Training scans class folders with
:func:`image_files`; export draws calibration, parity and test images from a
run's split.json with :func:`read_split`; the benchmarks read the same test
list on the device, where ``train`` is not installed. Labels are class folder
names, compared exactly everywhere (a model's ``NORMAL`` is not a folder's
``normal``); :func:`case_hint` says what to rename.

split.json = ``{"root": DATA_ROOT, "labels": [...], "train": [{"path", "label", ...}],
"val": [...], "test": [...]}``, paths absolute or relative to ``root``.
"""

from __future__ import annotations

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

    ``data_root`` re-roots the paths when the data set has moved since training.
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
    split_root = Path(str(data.get("root") or path.parent))
    images = []
    for entry in data[split]:
        image = _entry(entry, split, split_root, data_root, path)
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


def _entry(entry: Any, split: str, split_root: Path, data_root: Path | None, source: Path) -> LabelledImage:
    if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
        raise LabelledSetError(f"{source}: a {split} entry lacks 'path' or 'label': {entry!r}")
    raw = Path(str(entry["path"]))
    if raw.is_absolute():
        path = raw
        if data_root is not None and not raw.exists():
            # The data set moved: keep the path relative to the old root under the new one.
            try:
                path = data_root / raw.relative_to(split_root)
            except ValueError:
                path = raw
    else:
        path = (data_root or split_root) / raw
    try:
        ref = raw.relative_to(split_root).as_posix() if raw.is_absolute() else raw.as_posix()
    except ValueError:
        ref = raw.as_posix()
    return LabelledImage(path=path, label=str(entry["label"]), split=split, ref=ref)
