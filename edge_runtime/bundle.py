"""The deployment bundle: the folder a technician copies onto a Jetson.

Layout (written by ``pneumo export bundle``, read here; no TensorFlow needed)::

    bundle/
      manifest.json          schema, model version, created, sha256 + size of every file below
      contract.json          preprocessing contract (edge_runtime.contract)
      model_info.json        labels, threshold, model version, SYNTHETIC flag
      model_card.json        the training run's model card
      model.onnx             FP32, uint8 NHWC input, scaling inside the graph
      model_fp16.onnx        FP16 typed graph (uint8 input, float32 output)
      model_int8_qdq.onnx    INT8 Q/DQ graph, calibrated on the training split
      calibration/           calib.npy (uint8 images) + calib.json (provenance)
      golden/                images.npy (preprocessed test images) + golden.json (FP32 probabilities)
      export_report.json     parity figures of the export
      engines/               built on the device by ``pneumo edge build``; not in the manifest

Engines are device-specific and live under ``engines/`` with their own
sidecars, so they are outside the manifest: copying a bundle to another
Jetson and rebuilding never invalidates it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.contract import CONTRACT_FILE, MODEL_INFO_FILE, ModelInfo, PreprocessContract
from edge_runtime.errors import BundleError
from edge_runtime.fileio import atomic_write_json, read_json, sha256_file

MANIFEST_FILE = "manifest.json"
BUNDLE_SCHEMA = 1
ENGINES_DIR = "engines"
GOLDEN_DIR = "golden"

# Which ONNX file serves which precision. TensorRT builds FP16 from the FP32
# graph (10.x builder flag) or the typed FP16 graph (11.x strongly typed), and
# INT8 from the Q/DQ graph.
ONNX_FOR_PRECISION = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8_qdq.onnx",
}
REQUIRED_FILES = (CONTRACT_FILE, MODEL_INFO_FILE, "model.onnx")
_UNLISTED_DIRS = (ENGINES_DIR,)


def _listed_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in _UNLISTED_DIRS or (rel.name == MANIFEST_FILE and len(rel.parts) == 1):
            continue
        if path.is_symlink():
            raise BundleError(f"{path}: bundles may not contain symbolic links")
        if path.is_file() and not path.name.startswith("."):
            files.append(path)
    return files


def write_manifest(root: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of the bundle into ``manifest.json`` (atomically)."""
    root = Path(root)
    info = ModelInfo.load(root)
    entries = {
        path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in _listed_files(root)
    }
    for required in REQUIRED_FILES:
        if required not in entries:
            raise BundleError(f"{root / required}: required bundle file is missing")
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "model_version": info.model_version,
        "synthetic": info.synthetic,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": entries,
        **(extra or {}),
    }
    atomic_write_json(root / MANIFEST_FILE, manifest)
    return manifest


def verify_manifest(root: str | Path) -> dict[str, Any]:
    """Check every listed file's size and sha256; raise naming the first bad file."""
    root = Path(root)
    manifest_path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (expected a folder made by 'pneumo export bundle')")
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path}: manifest missing; re-copy the bundle or re-run 'pneumo export bundle'"
            + _looks_like_images(root)
        )
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(
            f"{manifest_path}: not a bundle manifest (expected a JSON object with a 'files' table); "
            "re-copy the bundle or re-run 'pneumo export bundle'"
        )
    if manifest.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(
            f"{manifest_path}: bundle schema {manifest.get('schema')!r} is not {BUNDLE_SCHEMA}, the one this "
            "pneumo-edge reads; re-export the bundle with this version ('pneumo export bundle') or install the "
            "pneumo-edge version that made it"
        )
    files = manifest["files"]
    for required in REQUIRED_FILES:
        if required not in files:
            raise BundleError(f"{manifest_path}: required file {required} is not listed")
    for rel, entry in sorted(files.items()):
        path = root / rel
        if not _well_formed(entry):
            raise BundleError(
                f'{manifest_path}: entry {rel!r} is malformed (expected {{"sha256": 64 hex digits, '
                f"\"bytes\": an integer}}, got {entry!r:.120}); re-copy the bundle or re-run 'pneumo export bundle'"
            )
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing; re-copy the bundle")
        size = path.stat().st_size
        if size != entry["bytes"]:
            how = "smaller (truncated copy?)" if size < entry["bytes"] else "larger (changed or appended to?)"
            raise BundleError(
                f"{path}: {size} bytes, manifest says {entry['bytes']}: {how}; re-copy the bundle"
            )
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{path}: sha256 does not match the manifest (modified or corrupt); re-copy it")
    extra = sorted({p.relative_to(root).as_posix() for p in _listed_files(root)} - set(files))
    if extra:
        others = f" (and {len(extra) - 1} more, e.g. {extra[1]})" if len(extra) > 1 else ""
        raise BundleError(
            f"{root / extra[0]}: file is not in the manifest (added after export?){others}; move or delete it: "
            f"the bundle keeps only the files its manifest lists, {ENGINES_DIR}/ aside"
        )
    return manifest


def _well_formed(entry: Any) -> bool:
    """A manifest entry: ``{"sha256": 64 hex digits, "bytes": int}``."""
    if not isinstance(entry, dict):
        return False
    digest, size = entry.get("sha256"), entry.get("bytes")
    return (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    )


def _looks_like_images(root: Path) -> str:
    """A hint when the folder given as the bundle holds images: the arguments were probably swapped."""
    from edge_runtime.preprocess import is_image_name

    try:
        has_images = any(is_image_name(entry.name) for entry in root.iterdir())
    except OSError:
        return ""
    return (
        f". {root} holds images: the bundle comes first, e.g. 'pneumo edge predict BUNDLE {root}'"
        if has_images
        else ""
    )


def _check_manifest_agrees(root: Path, manifest: dict[str, Any], info: ModelInfo) -> None:
    """The manifest's copies of the safety-relevant facts must equal model_info.json's."""
    problems = []
    if "synthetic" in manifest and bool(manifest["synthetic"]) != info.synthetic:
        problems.append(f"SYNTHETIC flag: manifest {manifest['synthetic']}, model_info.json {info.synthetic}")
    threshold = manifest.get("decision_threshold")
    if isinstance(threshold, (int, float)) and abs(float(threshold) - info.threshold) > 1e-9:
        problems.append(f"decision threshold: manifest {threshold}, model_info.json {info.threshold}")
    if "model_version" in manifest and manifest["model_version"] != info.model_version:
        problems.append(
            f"model version: manifest {manifest['model_version']!r}, model_info.json {info.model_version!r}"
        )
    problems.extend(_records_disagree(root, info))
    if problems:
        raise BundleError(
            f"{root / MANIFEST_FILE}: disagrees with {MODEL_INFO_FILE} on "
            + "; ".join(problems)
            + ". Re-copy the bundle or re-run 'pneumo export bundle'"
        )


# The bundle's other records of the safety-relevant facts (both written by export, both in the manifest).
MODEL_CARD_FILE = "model_card.json"
EXPORT_REPORT_FILE = "export_report.json"


def _records_disagree(root: Path, info: ModelInfo) -> list[str]:
    """Where model_card.json or export_report.json contradict model_info.json.

    The manifest is unsigned: it catches a damaged copy, not a hand edit that re-hashes.
    A model_info.json edited to drop the SYNTHETIC flag or move the threshold still
    contradicts the two records written beside it, so that edit is caught here.
    """
    problems = []
    for name in (MODEL_CARD_FILE, EXPORT_REPORT_FILE):
        path = root / name
        if not path.is_file():
            continue
        try:
            record = read_json(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{name} unreadable ({exc})")
            continue
        if not isinstance(record, dict):
            continue
        if bool(record.get("synthetic")) and not info.synthetic:
            problems.append(f"SYNTHETIC flag: {name} says the model was trained on synthetic images")
        if "model_version" in record and record["model_version"] != info.model_version:
            problems.append(
                f"model version: {name} {record['model_version']!r}, model_info.json {info.model_version!r}"
            )
        # export_report.json: decision_threshold; model_card.json: threshold.value (with how it was chosen)
        threshold = record.get("decision_threshold")
        nested = record.get("threshold")
        if threshold is None and isinstance(nested, dict):
            threshold = nested.get("value")
        if isinstance(threshold, (int, float)) and abs(float(threshold) - info.threshold) > 1e-9:
            problems.append(f"decision threshold: {name} {threshold}, model_info.json {info.threshold}")
    return problems


@dataclass(frozen=True)
class Bundle:
    """An opened (and by default verified) deployment bundle."""

    root: Path
    manifest: dict[str, Any]
    contract: PreprocessContract
    info: ModelInfo

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> Bundle:
        root = Path(root)
        manifest = (
            verify_manifest(root)
            if verify
            else (read_json(root / MANIFEST_FILE) if (root / MANIFEST_FILE).is_file() else {})
        )
        info = ModelInfo.load(root)
        _check_manifest_agrees(root, manifest, info)
        return cls(root, manifest, PreprocessContract.load(root), info)

    def onnx_path(self, precision: str) -> Path:
        if precision not in ONNX_FOR_PRECISION:
            raise BundleError(
                f"unknown precision {precision!r}: expected one of {sorted(ONNX_FOR_PRECISION)}"
            )
        path = self.root / ONNX_FOR_PRECISION[precision]
        if not path.is_file():
            raise BundleError(
                f"{path}: this bundle has no {precision} model; re-run 'pneumo export bundle' with that precision"
            )
        return path

    @property
    def precisions(self) -> list[str]:
        return [p for p, name in ONNX_FOR_PRECISION.items() if (self.root / name).is_file()]

    @property
    def engines_dir(self) -> Path:
        return self.root / ENGINES_DIR

    def golden_sha256(self) -> dict[str, str]:
        """sha256 of each golden-set file: what an engine's recorded self-test is tied to."""
        listed = self.manifest.get("files") or {
            path.relative_to(self.root).as_posix(): None for path in (self.root / GOLDEN_DIR).glob("*")
        }
        return {rel: self.file_sha256(rel) for rel in sorted(listed) if rel.startswith(f"{GOLDEN_DIR}/")}

    def file_sha256(self, rel: str) -> str:
        entry = self.manifest.get("files", {}).get(rel)
        return entry["sha256"] if entry else sha256_file(self.root / rel)
