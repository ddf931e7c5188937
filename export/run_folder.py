"""What export reads from a training run: model.h5, contract, model info, and the split's image lists.

A run folder (written by ``pneumo train``) holds ``model.h5``,
``contract.json``, ``model_info.json``, ``model_card.json`` and ``split.json``
= ``{"labels": [...], "root": DATA_ROOT, "train": [{"path", "label", ...}],
"val": [...], "test": [...]}`` with paths absolute or relative to ``root``.
A bare ``.h5`` is accepted when ``contract.json`` and ``model_info.json`` lie
beside it; its parity images then come from ``--data``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import labelled
from edge_runtime.contract import CONTRACT_FILE, MODEL_INFO_FILE, ModelInfo, PreprocessContract
from edge_runtime.errors import ContractError, ImageDecodeError, LabelledSetError
from edge_runtime.fileio import read_json, sha256_file
from edge_runtime.labelled import SPLITS, LabelledImage, image_files
from edge_runtime.preprocess import preprocess_file
from edge_runtime.run_layout import MODEL_FILE, SPLIT_FILE
from export.errors import ExportError, RunFolderError


@dataclass(frozen=True)
class RunFolder:
    """A resolved model source: the .h5 and the records that say how to feed it and read it."""

    h5_path: Path
    folder: Path
    contract: PreprocessContract
    info: ModelInfo

    @classmethod
    def resolve(cls, run_or_h5: str | Path) -> RunFolder:
        """Accept a run folder or a ``.h5`` file with contract.json and model_info.json beside it."""
        source = Path(run_or_h5)
        if not source.exists():
            raise RunFolderError(
                f"{source}: not found; pass the run folder 'pneumo train --out' wrote, or its model.h5"
            )
        if source.is_dir():
            folder, h5_path = source, source / MODEL_FILE
        elif source.suffix.lower() in (".h5", ".hdf5"):
            folder, h5_path = source.parent, source
        else:
            raise RunFolderError(
                f"{source}: not a run folder or .h5 file; pass the folder 'pneumo train --out' wrote, or its model.h5"
            )
        if not h5_path.is_file():
            raise RunFolderError(
                f"{h5_path}: model file not found; train one with 'pneumo train --out {folder}' "
                "or pass the path of an existing .h5"
            )
        for name in (CONTRACT_FILE, MODEL_INFO_FILE):
            if not (folder / name).is_file():
                raise RunFolderError(
                    f"{folder / name}: missing; it is written by 'pneumo train' next to model.h5 and export "
                    "needs it to know how the model was fed (contract) and what its output means (model info)"
                )
        try:
            contract = PreprocessContract.load(folder / CONTRACT_FILE)
            info = ModelInfo.load(folder / MODEL_INFO_FILE)
        except ContractError as exc:
            raise RunFolderError(f"{exc}; re-run 'pneumo train' or fix the file") from exc
        return cls(h5_path=h5_path, folder=folder, contract=contract, info=info)

    @property
    def split_path(self) -> Path:
        return self.folder / SPLIT_FILE

    @property
    def has_split(self) -> bool:
        return self.split_path.is_file()

    def split_images(self, split: str, data_root: Path | None = None) -> list[LabelledImage]:
        """Images of one split from split.json; ``data_root`` re-roots paths when the data moved."""
        if not self.has_split:
            raise RunFolderError(
                f"{self.split_path}: missing; export draws calibration images from the training split and test "
                "images from the test split it lists. Use the run folder 'pneumo train' wrote"
            )
        return read_split(self.split_path, split, self.info.labels, data_root)

    def held_out(self, data_root: Path | None = None) -> HeldOutSplit:
        """The test split of split.json, to check calibration and golden image lists against."""
        if not self.has_split:
            raise RunFolderError(
                f"{self.split_path}: missing; export needs the run's test split to keep calibration images "
                "out of it and draw golden images from it. Use the run folder 'pneumo train' wrote"
            )
        return read_held_out(self.split_path, self.info.labels, data_root)


@dataclass(frozen=True)
class HeldOutSplit:
    """The test split as a run's split.json defines it: its files, their contents and their patients.

    An image's ``split`` field only says which list the caller read it from, so it cannot tell
    whether a training list names a test file or a test patient; this can. Calibration keeps clear
    of all three (:func:`export.calibration.build_calibration_set`); golden images must be among
    ``files`` (:func:`export.golden.write_golden`). ``patient_of`` maps every file split.json lists,
    in any split, to its recorded ``patient_id`` ('' where it records none). Files are compared by
    real path (:func:`image_key`), so build the lists and this from the same ``--data``.
    """

    source: Path
    files: frozenset[Path]
    sha256: frozenset[str]
    patients: frozenset[str]
    patient_of: Mapping[Path, str]

    def is_test_file(self, path: Path) -> bool:
        return image_key(path) in self.files

    def patient(self, path: Path) -> str | None:
        """The patient id split.json records for ``path``; None when split.json does not list the file."""
        return self.patient_of.get(image_key(path))


def image_key(path: Path) -> Path:
    """One name per file however it was reached (a symlinked data root, a relative --data)."""
    return Path(os.path.realpath(path))


def read_held_out(path: Path, labels: tuple[str, ...], data_root: Path | None = None) -> HeldOutSplit:
    """:class:`HeldOutSplit` of a split.json; paths resolved as :func:`read_split` resolves them.

    A test file without a recorded ``sha256`` is hashed here, so a copy of it under
    another name is still recognised.
    """
    # Read first: it turns an unreadable file or a missing test list into a RunFolderError. Only the
    # test files must be here: an FP32/FP16 export on a machine with the test images alone still works.
    test = read_split(path, "test", labels, data_root)
    raw = read_json(path)
    root = labelled.split_root(raw.get("root"), path.parent, labelled.recorded_paths(raw))
    files: set[Path] = set()
    hashes: set[str] = set()
    patients: set[str] = set()
    patient_of: dict[Path, str] = {}
    for split in SPLITS:
        if not isinstance(raw.get(split), list):
            continue  # a hand-written split.json may list only what it needs; the test list is there
        entries = [e for e in raw[split] if isinstance(e, dict) and "path" in e]
        paths = (
            [image.path for image in test]
            if split == "test"
            else [labelled.locate(str(e["path"]), root, data_root)[0] for e in entries]
        )
        for entry, image_path in zip(entries, paths):
            key = image_key(image_path)
            patient = str(entry.get("patient_id") or "")
            patient_of[key] = patient
            if split == "test":
                files.add(key)
                hashes.add(str(entry.get("sha256") or "").lower() or sha256_file(image_path))
                if patient:
                    patients.add(patient)
    return HeldOutSplit(
        source=path,
        files=frozenset(files),
        sha256=frozenset(hashes),
        patients=frozenset(patients),
        patient_of=patient_of,
    )


def read_split(
    path: Path, split: str, labels: tuple[str, ...], data_root: Path | None = None
) -> list[LabelledImage]:
    """The entries of ``split`` in a split.json (:func:`edge_runtime.labelled.read_split`), as an export error."""
    try:
        return labelled.read_split(path, split, labels, data_root)
    except LabelledSetError as exc:
        raise RunFolderError(str(exc)) from exc


def folder_images(root: Path, labels: tuple[str, ...], split: str) -> list[LabelledImage]:
    """Labelled images of a data folder: ``ROOT/SPLIT/CLASS/*`` if present, else ``ROOT/CLASS/*``."""
    base = root / split if (root / split).is_dir() else root
    images: list[LabelledImage] = []
    for label in labels:
        folder = base / label
        if folder.is_dir():
            # train's scanner: hidden files such as macOS's ._x.jpeg are not images
            images.extend(
                LabelledImage(path=p, label=label, split=split, ref=p.relative_to(root).as_posix())
                for p in image_files(folder)
            )
    if not images:
        raise RunFolderError(
            f"{base}: no images in {', '.join(f'{base / label}/' for label in labels)}; "
            "pass a folder laid out as ROOT/test/CLASS/ or ROOT/CLASS/"
        )
    return images


def balanced_sample(
    images: list[LabelledImage], labels: tuple[str, ...], n: int, seed: int
) -> list[LabelledImage]:
    """Up to ``n`` images, as equal per class as the classes allow; deterministic for a seed.

    Images are sorted by path before shuffling, so the sample does not depend on
    the order of split.json. A class with too few images gives all it has and
    the others fill the remainder.
    """
    rng = np.random.default_rng(seed)
    pools: dict[str, list[LabelledImage]] = {}
    for label in labels:
        pool = sorted((im for im in images if im.label == label), key=lambda im: str(im.path))
        pools[label] = [pool[i] for i in rng.permutation(len(pool))]
    quota = {label: 0 for label in labels}
    remaining = min(n, sum(len(pool) for pool in pools.values()))
    while remaining > 0:
        open_labels = [label for label in labels if quota[label] < len(pools[label])]
        share, extra = divmod(remaining, len(open_labels))
        for i, label in enumerate(open_labels):
            take = min(share + (1 if i < extra else 0), len(pools[label]) - quota[label])
            quota[label] += take
            remaining -= take
    chosen = [image for label in labels for image in pools[label][: quota[label]]]
    return sorted(chosen, key=lambda im: (labels.index(im.label), str(im.path)))


def load_images(images: list[LabelledImage], contract: PreprocessContract) -> np.ndarray:
    """uint8 NHWC batch through the one preprocessing implementation; a bad file is an error naming it."""
    batch = np.empty((len(images), *contract.input_shape), dtype=np.uint8)
    for i, image in enumerate(images):
        try:
            batch[i] = preprocess_file(image.path, contract)
        except ImageDecodeError as exc:
            raise ExportError(
                f"{exc}; remove it from the data set or re-run 'pneumo train' to rebuild split.json"
            ) from exc
    return batch


def label_indices(images: list[LabelledImage], labels: tuple[str, ...]) -> np.ndarray:
    return np.array([labels.index(image.label) for image in images], dtype=np.int64)


def parity_images_for(
    run: RunFolder, n: int, data_root: Path | None, seed: int = 0
) -> tuple[list[LabelledImage], str]:
    """Real images for a parity check: the run's test split (else val), or a ``--data`` folder's test images."""
    if run.has_split:
        for split in ("test", "val"):
            images = run.split_images(split, data_root)
            if images:
                chosen = balanced_sample(images, run.info.labels, n, seed)
                return chosen, f"{split} split (class-balanced sample of split.json)"
        raise RunFolderError(f"{run.split_path}: the test and val lists are empty; parity needs real images")
    if data_root is None:
        raise RunFolderError(
            f"{run.split_path}: missing, so there are no test images for the parity check; pass --data ROOT "
            "(a folder laid out as ROOT/test/CLASS/ or ROOT/CLASS/)"
        )
    images = folder_images(data_root, run.info.labels, "test")
    return balanced_sample(images, run.info.labels, n, seed), f"{data_root} (class-balanced sample)"
