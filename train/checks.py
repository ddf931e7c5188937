"""Inspect every file of a data folder without changing anything: ``pneumo data check``.

Each image-named file is read, hashed, its header parsed, and decoded with the
runtime's own :func:`edge_runtime.preprocess.load_image`, so "readable" here
means readable by training and by the Jetson alike. Problems are reported,
never fixed: seed 000 deleted files it could not open; this only reads.

Errors (the folder is not usable as is): empty, not-image, truncated,
unreadable files and a broken layout. Warnings: wrong-extension (content
format differs from the extension), 16-bit, alpha, palette, tiny (< 64 px
side), huge (> 40 MP or > 50 MB), exact duplicates (SHA-256 groups, with
whether a group crosses splits or labels), MANIFEST.csv digest mismatches,
files ignored for their name.

The report also shows image counts and patients per split and class, patient
overlap between official splits, and the size / aspect distribution per split
and MANIFEST source with the sharpness each group keeps after the default
preprocessing contract (the resolution gap of the mixed Kermany copy).
"""

from __future__ import annotations

import statistics
import struct
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge_runtime.contract import PreprocessContract
from edge_runtime.errors import ImageDecodeError
from edge_runtime.fileio import sha256_bytes
from edge_runtime.preprocess import (
    MAX_PIXELS,
    apply_contract,
    is_image_name,
    jpeg_sof_offset,
    load_image,
    sniff_header,
)
from train.data import (
    OFFICIAL_SPLITS,
    UNKNOWN_SOURCE,
    Layout,
    ManifestRow,
    describe_layout,
    parse_patient_id,
    read_manifest,
)
from train.errors import DataError

TINY_SIDE = 64
HUGE_PIXELS = MAX_PIXELS
HUGE_BYTES = 50 * 1024 * 1024

# code -> (severity, what it means)
ISSUES: dict[str, tuple[str, str]] = {
    "empty": ("error", "0-byte file"),
    "not-image": ("error", "content is not PNG, JPEG, BMP, TIFF or DICOM"),
    "truncated": ("error", "image data cut short (no end marker)"),
    "unreadable": ("error", "the runtime decoder refuses it"),
    "wrong-extension": ("warning", "content format differs from the file extension"),
    "16-bit": ("warning", "16-bit samples (scaled to 8 bits by bit depth)"),
    "alpha": ("warning", "has an alpha channel (dropped)"),
    "palette": ("warning", "palette image (expanded)"),
    "tiny": ("warning", f"a side under {TINY_SIDE} px"),
    "huge": ("warning", f"over {HUGE_PIXELS // 1_000_000} MP or {HUGE_BYTES // (1024 * 1024)} MB"),
    "duplicate": ("warning", "byte-identical to another file"),
    "manifest-mismatch": ("warning", "SHA-256 differs from MANIFEST.csv"),
    "ignored-name": ("warning", "not an image file name: training ignores it"),
}
ERROR_CODES = tuple(code for code, (severity, _) in ISSUES.items() if severity == "error")

_EXTENSION_FORMAT = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".bmp": "bmp",
    ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom",
}  # fmt: skip
_PNG_COLOR = {0: "gray", 2: "rgb", 3: "palette", 4: "gray+alpha", 6: "rgba"}


@dataclass
class FileCheck:
    """What one file is, as found; nothing about it is changed."""

    path: str  # relative to the data root
    split: str
    label: str
    bytes: int = 0
    sha256: str = ""
    format: str = "unknown"  # sniffed from the content
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    color: str = ""  # gray, rgb, palette, gray+alpha, rgba, ycbcr, cmyk ...
    source: str = UNKNOWN_SOURCE
    patient_id: str = ""
    readable: bool = False
    error: str = ""
    issues: list[str] = field(default_factory=list)
    # Laplacian variance of the default contract's 224x224 input: how much detail survives.
    sharpness: float | None = None


@dataclass
class CheckReport:
    root: str
    layout: str  # "split", "flat" or "" when the layout is broken
    layout_error: str
    classes: list[str]
    files: list[FileCheck]
    duplicates: list[dict[str, Any]]
    counts: dict[str, dict[str, dict[str, int]]]  # split -> class -> {"images", "patients"}
    patient_overlap: dict[str, dict[str, int]]
    geometry: list[dict[str, Any]]
    ignored_folders: list[str]

    @property
    def unreadable(self) -> list[FileCheck]:
        return [f for f in self.files if not f.readable and f.issues and f.issues[0] in ERROR_CODES]

    @property
    def usable(self) -> bool:
        return not self.layout_error and not self.unreadable and any(f.readable for f in self.files)

    def issue_counts(self) -> dict[str, int]:
        counts = Counter(code for f in self.files for code in f.issues)
        return {code: counts[code] for code in ISSUES if counts.get(code)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "usable": self.usable,
            "layout": self.layout,
            "layout_error": self.layout_error,
            "classes": self.classes,
            "n_files": len(self.files),
            "n_readable": sum(f.readable for f in self.files),
            "issue_counts": self.issue_counts(),
            "issue_meaning": {code: {"severity": s, "meaning": m} for code, (s, m) in ISSUES.items()},
            "counts": self.counts,
            "patient_overlap": self.patient_overlap,
            "geometry": self.geometry,
            "duplicates": self.duplicates,
            "ignored_folders": self.ignored_folders,
            "problems": [asdict(f) for f in self.files if f.issues],
            "files": [asdict(f) for f in self.files],
        }


def check_folder(root: str | Path, workers: int = 2, progress: bool = True) -> CheckReport:
    """Inspect every file under ``root``; raises DataError only when ``root`` is not a folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: not a folder; pass a data folder (ROOT/{{train,val,test}}/{{CLASS}}/ or ROOT/{{CLASS}}/)"
        )
    root = root.resolve()
    layout_error = ""
    layout: Layout | None = None
    try:
        layout = describe_layout(root)
    except DataError as exc:
        layout_error = str(exc)
    manifest = read_manifest(root)
    entries = _enumerate(root, layout)
    contract = PreprocessContract()
    bar = tqdm(total=len(entries), desc="checking", unit="file", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        files = []
        for result in pool.map(lambda e: _check_file(root, e, manifest, contract), entries):
            files.append(result)
            bar.update(1)
    duplicates = _mark_duplicates(files)
    if layout is not None and not layout_error:
        layout_error = _empty_class_error(layout, files)
    counts, overlap = _counts(files)
    return CheckReport(
        root=str(root),
        layout=layout.kind if layout else "",
        layout_error=layout_error,
        classes=list(layout.classes) if layout else [],
        files=files,
        duplicates=duplicates,
        counts=counts,
        patient_overlap=overlap,
        geometry=geometry_table(files),
        ignored_folders=list(layout.ignored) if layout else [],
    )


def _enumerate(root: Path, layout: Layout | None) -> list[tuple[Path, str, str]]:
    """(file, split, class folder) for every non-hidden file in the class folders."""
    if layout is None:
        # No usable layout: still look at every file so the report is complete.
        return [
            (p, "", p.parent.name)
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and (p.parent != root or is_image_name(p.name))
        ]
    entries = []
    for split in layout.splits:
        for label in layout.classes:
            folder = layout.class_dir(split, label)
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    entries.append((path, split, label))
    return entries


def _check_file(
    root: Path, entry: tuple[Path, str, str], manifest: dict[str, ManifestRow], contract: PreprocessContract
) -> FileCheck:
    path, split, label = entry
    rel = path.relative_to(root).as_posix()
    row = manifest.get(rel, ManifestRow())
    check = FileCheck(
        path=rel,
        split=split,
        label=label,
        source=row.source or UNKNOWN_SOURCE,
        patient_id=row.patient_id or parse_patient_id(path.name),
    )
    if not is_image_name(path.name):
        check.issues.append("ignored-name")
        check.error = "not an image file name"
        return check
    try:
        data = path.read_bytes()
    except OSError as exc:
        check.issues.append("unreadable")
        check.error = f"cannot read file: {exc.strerror or exc}"
        return check
    check.bytes = len(data)
    check.sha256 = sha256_bytes(data)
    _read_header(data, check)
    try:
        image = load_image(path)
    except ImageDecodeError as exc:
        check.error = exc.reason
        check.issues.insert(0, _failure_code(data, check.format))
    else:
        check.readable = True
        check.height, check.width = image.shape[:2]
        model_input = apply_contract(image, contract)
        check.sharpness = round(float(cv2.Laplacian(model_input[:, :, 0], cv2.CV_64F).var()), 2)
    expected = _EXTENSION_FORMAT.get(path.suffix.lower())
    if check.format != "unknown" and expected and expected != check.format:
        check.issues.append("wrong-extension")
    if check.bit_depth is not None and check.bit_depth > 8:
        check.issues.append("16-bit")
    if "alpha" in check.color or check.color == "rgba":
        check.issues.append("alpha")
    if check.color == "palette":
        check.issues.append("palette")
    if check.width and check.height:
        if min(check.width, check.height) < TINY_SIDE:
            check.issues.append("tiny")
        if check.width * check.height > HUGE_PIXELS:
            check.issues.append("huge")
    if check.bytes > HUGE_BYTES and "huge" not in check.issues:
        check.issues.append("huge")
    if row.sha256 and row.sha256 != check.sha256:
        check.issues.append("manifest-mismatch")
    return check


def _failure_code(data: bytes, fmt: str) -> str:
    """Classify a decode failure from the bytes themselves, not from message text."""
    if not data:
        return "empty"
    if fmt == "unknown":
        return "not-image"
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated"
    if fmt == "png" and b"IEND" not in data[-32:]:
        return "truncated"
    return "unreadable"


def _read_header(data: bytes, check: FileCheck) -> None:
    """Format, declared size, bit depth and colour model from the header bytes."""
    header = sniff_header(data)
    check.format = header.format
    check.width, check.height = header.width, header.height
    if header.format == "png" and len(data) >= 26:
        check.bit_depth = data[24]
        check.color = _PNG_COLOR.get(data[25], f"png-color-{data[25]}")
    elif header.format == "jpeg":
        precision, components = _jpeg_sof(data)
        check.bit_depth = precision
        check.color = {1: "gray", 3: "ycbcr", 4: "cmyk"}.get(components or 0, "")
    elif header.format == "bmp" and len(data) >= 30:
        (bits,) = struct.unpack("<H", data[28:30])
        check.bit_depth = 8 if bits >= 8 else bits
        check.color = {8: "palette", 24: "rgb", 32: "rgba"}.get(bits, f"bmp-{bits}bit")
    elif (
        header.format == "tiff"
        and header.width
        and header.height
        and header.width * header.height <= MAX_PIXELS
    ):
        # Decoded only once the header's size is known to be safe: a few-MB compressed TIFF can
        # expand to gigabytes. An over-size one is refused by load_image below, with its size.
        raw = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
        )
        if raw is not None:
            check.bit_depth = 16 if raw.dtype == np.uint16 else 8
            channels = 1 if raw.ndim == 2 else raw.shape[2]
            check.color = {1: "gray", 3: "rgb", 4: "rgba"}.get(channels, "")


def _jpeg_sof(data: bytes) -> tuple[int | None, int | None]:
    """(sample precision, component count) of the first JPEG SOF segment."""
    pos = jpeg_sof_offset(data)
    if pos is None or pos + 10 > len(data):
        return None, None
    return data[pos + 4], data[pos + 9]


def _mark_duplicates(files: list[FileCheck]) -> list[dict[str, Any]]:
    groups: dict[str, list[FileCheck]] = defaultdict(list)
    for check in files:
        if check.sha256 and check.bytes:
            groups[check.sha256].append(check)
    duplicates = []
    for digest, members in sorted(groups.items(), key=lambda item: item[1][0].path):
        if len(members) < 2:
            continue
        for member in members:
            member.issues.append("duplicate")
        duplicates.append(
            {
                "sha256": digest,
                "files": [m.path for m in members],
                "splits": sorted({m.split for m in members}),
                "crosses_splits": len({m.split for m in members}) > 1,
                "crosses_labels": len({m.label for m in members}) > 1,
                "patients": sorted({m.patient_id for m in members}),
            }
        )
    return duplicates


def _empty_class_error(layout: Layout, files: list[FileCheck]) -> str:
    present = {(f.split, f.label) for f in files if is_image_name(f.path)}
    for split in layout.splits:
        for label in layout.classes:
            if (split, label) not in present:
                return f"{layout.class_dir(split, label)}: no image files in this class folder"
    return ""


def _counts(files: list[FileCheck]) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, dict[str, int]]]:
    images: dict[str, Counter[str]] = defaultdict(Counter)
    patients: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for check in files:
        if check.readable:
            split = check.split or "flat"
            images[split][check.label] += 1
            patients[split][check.label].add(check.patient_id)
    counts = {
        split: {
            label: {"images": images[split][label], "patients": len(patients[split][label])}
            for label in sorted(images[split])
        }
        for split in sorted(images, key=_split_order)
    }
    by_split = {split: set().union(*patients[split].values()) for split in patients}
    overlap: dict[str, dict[str, int]] = {}
    names = sorted(by_split, key=_split_order)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = by_split[first] & by_split[second]
            overlap[f"{first}-{second}"] = {
                "patients": len(shared),
                f"{second}_images": sum(
                    1
                    for f in files
                    if f.readable and (f.split or "flat") == second and f.patient_id in shared
                ),
            }
    return counts, overlap


def _split_order(split: str) -> int:
    return OFFICIAL_SPLITS.index(split) if split in OFFICIAL_SPLITS else len(OFFICIAL_SPLITS)


def geometry_table(files: Sequence[FileCheck]) -> list[dict[str, Any]]:
    """Size, aspect and post-contract sharpness per (split, source) of the readable files."""
    groups: dict[tuple[str, str], list[FileCheck]] = defaultdict(list)
    for check in files:
        if check.readable and check.width and check.height:
            groups[(check.split or "flat", check.source)].append(check)
    rows = []
    for (split, source), members in sorted(
        groups.items(), key=lambda item: (_split_order(item[0][0]), item[0][1])
    ):
        widths = [m.width or 0 for m in members]
        heights = [m.height or 0 for m in members]
        aspects = [(m.width or 0) / (m.height or 1) for m in members]
        sharp = [m.sharpness for m in members if m.sharpness is not None]
        rows.append(
            {
                "split": split,
                "source": source,
                "images": len(members),
                "width": _spread(widths),
                "height": _spread(heights),
                "short_side": _spread([min(w, h) for w, h in zip(widths, heights)]),
                "aspect_w_h": _spread(aspects, digits=3),
                "square": sum(1 for w, h in zip(widths, heights) if w == h),
                "sharpness_at_contract_median": round(statistics.median(sharp), 1) if sharp else None,
                "sharpness_by_class": _median_by_class(members),
            }
        )
    return rows


def _median_by_class(members: Sequence[FileCheck]) -> dict[str, float]:
    by_class: dict[str, list[float]] = defaultdict(list)
    for member in members:
        if member.sharpness is not None:
            by_class[member.label].append(member.sharpness)
    return {label: round(statistics.median(values), 1) for label, values in sorted(by_class.items())}


def _spread(values: Sequence[float], digits: int = 0) -> dict[str, float]:
    def fmt(value: float) -> float:
        return round(float(value), digits) if digits else float(round(value))

    return {"min": fmt(min(values)), "median": fmt(statistics.median(values)), "max": fmt(max(values))}


# --------------------------------------------------------------------------- text report


def format_report(report: CheckReport, max_examples: int = 5) -> str:
    """The human-readable report: counts, geometry, issues, duplicates, verdict and next step."""
    lines = [f"data check: {report.root}"]
    if report.layout:
        lines.append(f"layout: {report.layout}; classes: {', '.join(report.classes)}")
    if report.ignored_folders:
        lines.append(f"ignored folders beside the splits: {', '.join(report.ignored_folders)}")
    if report.layout_error:
        lines.append(f"LAYOUT ERROR: {report.layout_error}")
    lines += ["", f"{'split':<6} {'class':<12} {'images':>7} {'patients':>9}"]
    for split, per_class in report.counts.items():
        for label, count in per_class.items():
            lines.append(f"{split:<6} {label:<12} {count['images']:>7} {count['patients']:>9}")
    if report.patient_overlap:
        shared = [
            f"{pair}: {v['patients']} patients"
            + "".join(f" ({n} {k.replace('_', ' ')})" for k, n in v.items() if k != "patients")
            for pair, v in report.patient_overlap.items()
        ]
        lines.append("patient ids shared between splits: " + "; ".join(shared))
    if report.geometry:
        lines += [
            "",
            "size and aspect per split and source (min/median/max); sharpness = Laplacian variance of the default "
            "224x224 contract input (median)",
            f"{'split':<6} {'source':<22} {'images':>6} {'width':>13} {'height':>13} {'aspect w/h':>17} "
            f"{'square':>6} {'sharpness':>9}  by class",
        ]
        for row in report.geometry:
            lines.append(
                f"{row['split']:<6} {row['source']:<22} {row['images']:>6} {_fmt_spread(row['width']):>13} "
                f"{_fmt_spread(row['height']):>13} {_fmt_spread(row['aspect_w_h']):>17} {row['square']:>6} "
                f"{row['sharpness_at_contract_median'] if row['sharpness_at_contract_median'] is not None else '-':>9}"
                f"  {', '.join(f'{k} {v:g}' for k, v in row['sharpness_by_class'].items())}"
            )
    counts = report.issue_counts()
    lines += ["", f"files: {len(report.files)}, readable: {sum(f.readable for f in report.files)}"]
    if counts:
        lines.append(f"{'issue':<18} {'severity':<8} {'files':>6}  examples")
        for code, n in counts.items():
            examples = [f.path for f in report.files if code in f.issues][:max_examples]
            more = f" (+{n - len(examples)} more)" if n > len(examples) else ""
            lines.append(f"{code:<18} {ISSUES[code][0]:<8} {n:>6}  {', '.join(examples)}{more}")
        for check in report.unreadable[:max_examples]:
            lines.append(f"  {check.path}: {check.error}")
    else:
        lines.append("no file issues")
    if report.duplicates:
        crossing = sum(d["crosses_splits"] for d in report.duplicates)
        labels = sum(d["crosses_labels"] for d in report.duplicates)
        lines.append(
            f"duplicate groups: {len(report.duplicates)} ({crossing} cross splits, {labels} cross labels); "
            f"e.g. {' = '.join(report.duplicates[0]['files'][:3])}"
        )
    lines.append("")
    if report.usable:
        warnings = sum(n for code, n in counts.items() if ISSUES[code][0] == "warning")
        lines.append(f"verdict: usable ({warnings} warnings). Nothing was modified or deleted.")
        lines.append(f"next: pneumo train --data {report.root} --out runs/NAME")
    else:
        if report.layout_error:
            why = "the layout error above"
        elif report.unreadable:
            why = f"{len(report.unreadable)} unreadable files"
        else:
            why = "no readable image"
        lines.append(
            f"verdict: NOT usable as is: {why}. Nothing was modified or deleted; move the listed files out "
            "of the class folders (training would skip them) and run the check again."
        )
    return "\n".join(lines)


def _fmt_spread(spread: dict[str, float]) -> str:
    return "/".join(f"{v:g}" for v in (spread["min"], spread["median"], spread["max"]))
