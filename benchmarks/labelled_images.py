"""The labelled test images a benchmark scores every precision on, and the files its end-to-end loop reads.

Sources, in order: ``--data TESTDIR`` (``TESTDIR/{LABEL}/*`` or a data-set
root holding ``test/{LABEL}/*``), else the ``test`` entries of the training
run's ``split.json``. Each file goes through the one preprocessing
implementation (:func:`edge_runtime.preprocess.preprocess_file`), once, and
the resulting uint8 batch is reused by every backend and precision so their
accuracies are comparable image for image.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.errors import BenchInputError
from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.errors import ImageDecodeError, LabelledSetError
from edge_runtime.labelled import case_hint, image_files, read_split
from edge_runtime.preprocess import load_image, preprocess_file


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label_index: int


@dataclass(frozen=True)
class LabelledImages:
    """Preprocessed test images, their labels (indices into ModelInfo.labels) and where they came from."""

    source: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    images: np.ndarray
    skipped_files: int = 0

    def __len__(self) -> int:
        return len(self.paths)


def files_from_folder(folder: Path, info: ModelInfo) -> list[LabelledFile]:
    """``folder/{LABEL}/**`` image files, hidden ones skipped; class folders named exactly as the labels.

    The same rules as training's scanner (:func:`edge_runtime.labelled.image_files`), so a folder that
    trains also benchmarks, and one that does not is refused here too.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BenchInputError(f"{folder}: test folder not found (--data)")
    if not _class_dirs(folder, info) and (folder / "test").is_dir():
        folder = folder / "test"
    class_dirs = _class_dirs(folder, info)
    if not class_dirs:
        hints = "".join(case_hint(child.name, info.labels) for child in folder.iterdir() if child.is_dir())
        raise BenchInputError(
            f"{folder}: no class folders named like the model's labels {list(info.labels)}{hints} "
            "(expected TESTDIR/<LABEL>/images, e.g. chest_xray/test)"
        )
    unknown = _unknown_class_dirs(folder, info)
    if unknown:
        # Left out, these images would make a smaller test set look like the whole one.
        hints = "".join(case_hint(name, info.labels) for name in unknown)
        raise BenchInputError(
            f"{folder}: class folder(s) {unknown} hold images but are not labels of this model "
            f"{list(info.labels)}{hints}; benchmark on a folder with only the model's classes"
        )
    files = [
        LabelledFile(path, label_index)
        for label_index, class_dir in class_dirs
        for path in image_files(class_dir)
    ]
    if not files:
        raise BenchInputError(f"{folder}: class folders hold no image files")
    return files


def missing_labels(files: Iterable[LabelledFile], info: ModelInfo) -> list[str]:
    """The model's labels no test image has: a set without them cannot give sensitivity or specificity."""
    present = {f.label_index for f in files}
    return [label for i, label in enumerate(info.labels) if i not in present]


def files_from_split_json(split_json: Path, info: ModelInfo) -> list[LabelledFile]:
    """The ``test`` entries of a training run's split.json, read by :func:`edge_runtime.labelled.read_split`.

    Only the entry lists are read, not the data configuration, so a split written by an older or
    hand-made run still serves.
    """
    try:
        images = read_split(split_json, "test", info.labels)
    except LabelledSetError as exc:
        raise BenchInputError(str(exc)) from exc
    if not images:
        raise BenchInputError(f"{split_json}: the test split is empty; pass the test folder with --data")
    return [LabelledFile(image.path, info.labels.index(image.label)) for image in images]


def limit_files(files: list[LabelledFile], limit: int | None, seed: int = 0) -> list[LabelledFile]:
    """A seeded, label-stratified subset of at most ``limit`` files (quick runs), in a stable order."""
    if limit is None or len(files) <= limit:
        return files
    rng = random.Random(seed)
    by_label: dict[int, list[LabelledFile]] = {}
    for item in files:
        by_label.setdefault(item.label_index, []).append(item)
    chosen: list[LabelledFile] = []
    for label_index in sorted(by_label):
        group = by_label[label_index]
        share = max(1, round(limit * len(group) / len(files)))
        chosen += rng.sample(group, min(share, len(group)))
    return sorted(chosen, key=lambda f: str(f.path))[:limit]


def load_labelled_images(
    files: list[LabelledFile], contract: PreprocessContract, source: str, progress: bool = True
) -> LabelledImages:
    """Decode and preprocess every file once; undecodable files are counted and left out."""
    from tqdm import tqdm

    images, labels, paths = [], [], []
    skipped = 0
    for item in tqdm(files, desc="test images", unit="img", disable=not progress, leave=False):
        try:
            images.append(preprocess_file(item.path, contract))
        except ImageDecodeError:
            skipped += 1
            continue
        labels.append(item.label_index)
        paths.append(item.path)
    if not images:
        raise BenchInputError(f"{source}: none of the {len(files)} test images could be decoded")
    return LabelledImages(
        source=source,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        images=np.stack(images),
        skipped_files=skipped,
    )


def mean_source_size(paths: Iterable[Path], sample: int = 50) -> dict[str, float] | None:
    """Mean width, height and bytes of (up to ``sample``) source files: end-to-end cost depends on them."""
    chosen = list(paths)[:sample]
    sizes = []
    for path in chosen:
        try:
            image = load_image(path)
        except ImageDecodeError:
            continue
        sizes.append((image.shape[1], image.shape[0], path.stat().st_size))
    if not sizes:
        return None
    arr = np.asarray(sizes, dtype=np.float64)
    return {
        "width": round(float(arr[:, 0].mean()), 1),
        "height": round(float(arr[:, 1].mean()), 1),
        "bytes": round(float(arr[:, 2].mean()), 1),
    }


def write_generated_jpegs(folder: Path, count: int, side: int = 1024, seed: int = 0) -> list[Path]:
    """Smooth random grayscale JPEGs for the end-to-end loop when no test images were given."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        noise = rng.integers(0, 256, (side // 8, side // 8), dtype=np.uint8)
        image = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise BenchInputError(f"{folder}: OpenCV could not encode a generated JPEG")
        path = folder / f"generated_{i:03d}.jpg"
        path.write_bytes(encoded.tobytes())
        paths.append(path)
    return paths


def _unknown_class_dirs(folder: Path, info: ModelInfo) -> list[str]:
    return sorted(
        child.name
        for child in folder.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")
        and child.name not in info.labels
        and image_files(child)
    )


def _class_dirs(folder: Path, info: ModelInfo) -> list[tuple[int, Path]]:
    by_name = {child.name: child for child in folder.iterdir() if child.is_dir()}
    return [(i, by_name[label]) for i, label in enumerate(info.labels) if label in by_name]
