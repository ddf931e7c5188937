"""The INT8 calibration set: class-balanced training-split images, preprocessed by the shared contract.

Stored as ``calibration/calib.npy`` (uint8 NHWC, exactly what the model takes)
and ``calibration/calib.json`` (provenance). The provenance hash is the sha256
of the sorted list of the images' data-set paths, so a TensorRT calibration
cache can record which set it came from and refuse a different one. Images
come from the ``train`` list of split.json only: calibrating on test images
would leak the test split into the model that is then measured on it. Given the
run's test split (:class:`export.run_folder.HeldOutSplit`), no test file, no copy
of one and no image of a test-split patient enters the set.

:func:`iter_batches` is calibrator-agnostic: ONNX Runtime's quantizer and a
TensorRT ``IInt8EntropyCalibrator2`` both take batches from it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file
from export.config import MIN_CALIBRATION_IMAGES, CalibrationConfig
from export.errors import CalibrationError
from export.run_folder import HeldOutSplit, LabelledImage, balanced_sample, load_images

CALIBRATION_DIR = "calibration"
IMAGES_FILE = "calib.npy"
META_FILE = "calib.json"
CALIBRATION_SCHEMA = 1


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images (uint8 NHWC) and their provenance record (``calib.json``)."""

    images: np.ndarray
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def file_list_sha256(self) -> str:
        return str(self.meta["file_list_sha256"])


def file_list_sha256(refs: list[str]) -> str:
    """sha256 of the sorted data-set paths, one per line: the calibration set's identity."""
    return hashlib.sha256("\n".join(sorted(refs)).encode("utf-8")).hexdigest()


def iter_batches(images: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Contiguous uint8 batches of at most ``batch`` images, in order; the last one may be smaller."""
    if batch < 1:
        raise ValueError(f"batch size must be positive, got {batch}")
    for start in range(0, len(images), batch):
        yield np.ascontiguousarray(images[start : start + batch])


def build_calibration_set(
    train_images: list[LabelledImage],
    contract: PreprocessContract,
    info: ModelInfo,
    config: CalibrationConfig,
    held_out: HeldOutSplit | None = None,
) -> CalibrationSet:
    """Sample ``config.size`` class-balanced training images and preprocess them.

    ``held_out``: the run's test split (:meth:`export.run_folder.RunFolder.held_out`). With it,
    a training list that names a test file is an error, and the images of test-split patients
    and copies of test images (the same bytes under another name, which a random split can put
    on both sides) are left out of the sample: the official Kermany test shares patients with its
    train folder. Without it only the lists' own
    ``split`` fields are checked, which catches a caller passing the wrong list and nothing else.
    """
    not_train = [image for image in train_images if image.split != "train"]
    if not_train:
        raise CalibrationError(
            f"{not_train[0].path}: is from the {not_train[0].split!r} split; calibration images must come "
            "from the training split only (test images would leak into the model measured on them)"
        )
    pool, copies = (train_images, 0) if held_out is None else _clear_of_test(train_images, held_out)
    excluded = len(train_images) - len(pool)
    if len(pool) < MIN_CALIBRATION_IMAGES and not config.force:
        parts = [f"{excluded - copies} images of test-split patients"] if excluded > copies else []
        parts += [f"{copies} copies of test images"] if copies else []
        left_out = f" once the {' and the '.join(parts)} are left out" if parts else ""
        raise CalibrationError(
            f"the training split has {len(pool)} images{left_out}, fewer than the {MIN_CALIBRATION_IMAGES} "
            "INT8 calibration needs; use a larger training set, leave out int8 (--precisions fp32,fp16), "
            "or pass --force for a test run"
        )
    chosen = balanced_sample(pool, info.labels, config.size, config.seed)
    images = load_images(chosen, contract)
    refs = [image.ref or image.path.as_posix() for image in chosen]
    counts = {label: sum(1 for image in chosen if image.label == label) for label in info.labels}
    meta = {
        "schema": CALIBRATION_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n": len(chosen),
        "requested": config.size,
        "forced": config.force and len(chosen) < MIN_CALIBRATION_IMAGES,
        "split": "train",
        "sampling": "class-balanced, seeded permutation of each class sorted by path",
        # False / None: built without the run's test split, so test files and patients were not checked.
        "test_split_checked": held_out is not None,
        "excluded_test_patient_images": excluded - copies if held_out is not None else None,
        "excluded_test_image_copies": copies if held_out is not None else None,
        "seed": config.seed,
        "labels": list(info.labels),
        "class_counts": counts,
        "files": sorted(refs),
        "file_list_sha256": file_list_sha256(refs),
        "images_file": IMAGES_FILE,
        "images_sha256": "",
        "shape": list(images.shape),
        "dtype": "uint8",
        "layout": "NHWC",
        "contract": contract.to_dict(),
    }
    return CalibrationSet(images=images, meta=meta)


def _clear_of_test(
    train_images: list[LabelledImage], held_out: HeldOutSplit
) -> tuple[list[LabelledImage], int]:
    """The training images calibration may use, and how many were copies of test images.

    None is a test file (an error: the lists are wrong), of a test-split patient, or a copy of a
    test image (left out, like the patients' images).
    """
    pool, copies = [], 0
    for image in train_images:
        if held_out.is_test_file(image.path):
            raise CalibrationError(
                f"{image.path}: listed for training but also in the test split of {held_out.source}; "
                "calibrating on it would leak the test split into the model measured on it. Fix split.json "
                "(re-run 'pneumo train') so that no file is in both lists"
            )
        patient = held_out.patient(image.path)
        if patient is None:
            raise CalibrationError(
                f"{image.path}: not listed in {held_out.source}; the training images and the test split "
                "must come from the same split.json and the same --data, or the test split cannot be kept out"
            )
        if patient in held_out.patients:
            continue
        if sha256_file(image.path) in held_out.sha256:
            copies += 1
            continue
        pool.append(image)
    return pool, copies


def save_calibration(calibration: CalibrationSet, folder: Path) -> tuple[Path, Path]:
    """Write ``calib.npy`` and ``calib.json`` atomically; the JSON records the .npy's sha256."""
    buffer = io.BytesIO()
    np.save(buffer, calibration.images, allow_pickle=False)
    data = buffer.getvalue()
    calibration.meta["images_sha256"] = sha256_bytes(data)
    images_path, meta_path = folder / IMAGES_FILE, folder / META_FILE
    atomic_write_bytes(images_path, data)
    atomic_write_json(meta_path, calibration.meta)
    return images_path, meta_path


def load_calibration(
    path: Path, contract: PreprocessContract | None = None, *, require_test_split_checked: bool = False
) -> CalibrationSet:
    """Read a calibration folder (or its calib.npy), checking its hash, shape and contract.

    ``require_test_split_checked``: refuse a set whose calib.json does not record that the run's
    test split (files, patients, copies) was kept out of it: made before that check, or by hand.
    """
    folder = path.parent if path.suffix == ".npy" else path
    images_path, meta_path = folder / IMAGES_FILE, folder / META_FILE
    for required in (images_path, meta_path):
        if not required.is_file():
            raise CalibrationError(
                f"{required}: missing; make a calibration set: {rebuild_advice(folder, overwrite=False)}"
            )
    try:
        meta = read_json(meta_path)
        data = images_path.read_bytes()
        images = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{folder}: unreadable calibration set ({exc}); rebuild it") from exc
    if meta.get("images_sha256") != sha256_bytes(data):
        raise CalibrationError(
            f"{images_path}: sha256 does not match {meta_path}; the set was modified, rebuild it"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != meta.get("n"):
        raise CalibrationError(
            f"{images_path}: expected {meta.get('n')} uint8 NHWC images, got {images.dtype} {images.shape}"
        )
    if meta.get("split") != "train":
        raise CalibrationError(
            f"{meta_path}: drawn from split {meta.get('split')!r}; calibration must use 'train'"
        )
    if contract is not None and meta.get("contract") != contract.to_dict():
        raise CalibrationError(
            f"{meta_path}: made with another preprocessing contract than this model's; rebuild it for this model"
        )
    if require_test_split_checked and meta.get("test_split_checked") is not True:
        raise CalibrationError(
            f"{meta_path}: test_split_checked is {meta.get('test_split_checked', 'missing')}: nothing says the "
            "run's test images and patients were kept out of this set, and calibrating on them leaks the test "
            f"split into the engine measured on it. Rebuild it: {rebuild_advice(folder, overwrite=True)}; or "
            "pass --allow-unchecked-calib to use it anyway"
        )
    return CalibrationSet(images=images, meta=meta)


def rebuild_advice(folder: Path, *, overwrite: bool) -> str:
    """The command that makes a calibration set for ``--calib``, never one that writes into a bundle.

    A bundle's calibration/ is listed in its manifest: 'pneumo export calib' writing there would make
    the bundle fail verification, so inside a bundle the advice is a set of its own, or a new bundle.
    """
    from export.bundle import enclosing_bundle  # export.bundle imports this module

    bundle = enclosing_bundle(folder)
    if bundle is None:
        return f"'pneumo export calib RUN -o {folder}{' --overwrite' if overwrite else ''}'"
    return (
        f"{folder} is in the bundle {bundle}, whose files only 'pneumo export bundle' writes, so re-export the "
        f"bundle with 'pneumo export bundle RUN -o {bundle} --overwrite', or make a set outside it with "
        f"'pneumo export calib RUN -o calibration/' and pass --calib calibration/"
    )
