"""Chest X-ray folders -> labelled samples -> patient-wise train/val/test splits.

Two layouts are read, with any number of classes:

* ``ROOT/{train,val,test}/{CLASS}/**`` (the Kaggle release of Kermany et al.);
* ``ROOT/{CLASS}/**`` (a flat folder per class; test and validation are then
  carved by patient).

Many children have several images, so every carve is done **by patient**
(``patient_id`` from ``MANIFEST.csv`` when the folder has one, else parsed
from the Kermany file name): images of one child on both sides of a split
inflate the validation score. ``split_mode="random"`` reproduces seed 000's
image-level 70/20/10 shuffle of the official train folder on purpose, to measure
that leak (``random_pool="all"`` shuffles the train, val and test folders together).

Nothing here reads pixels; :mod:`train.cache` decodes, :mod:`train.checks`
inspects files.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from edge_runtime.fileio import atomic_write_json, read_json
from edge_runtime.labelled import image_files, locate, recorded_paths, split_root
from edge_runtime.preprocess import IMAGE_SUFFIXES
from train.config import LabelMode, RandomPool, SourcesMode, SplitMode
from train.errors import DataError

OFFICIAL_SPLITS = ("train", "val", "test")
MANIFEST_FILE = "MANIFEST.csv"
NORMAL_LABEL = "NORMAL"
ORIGINAL_SOURCE = "original"
UNKNOWN_SOURCE = "unknown"
SPLIT_JSON_SCHEMA = 1

# person1000_virus_1681 -> person1000; synth-person12_bacteria_1 -> synth-person12
_PERSON_RE = re.compile(r"^(?P<pid>(?:[A-Za-z0-9]+-)*person\d+)(?:_|$)", re.IGNORECASE)
# IM-0115-0001 and IM-0429-0001-0002 -> IM-0115, IM-0429; NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427; SYNTH-IM-0012-0001 -> SYNTH-IM-0012
_IM_RE = re.compile(r"^(?P<pid>(?:[A-Za-z0-9]+-)*?IM-\d+)(?:-\d+)+$", re.IGNORECASE)
_KIND_RE = re.compile(r"_(?P<kind>bacteria|virus)(?:_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: str
    split: str
    patient_id: str
    source: str = UNKNOWN_SOURCE
    sha256: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "label": self.label,
            "patient_id": self.patient_id,
            "source": self.source,
            "split": self.split,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], root: Path | None = None, data_root: Path | None = None
    ) -> Sample:
        """A sample of a split.json; paths under ``root`` are read under ``data_root`` when given."""
        path = Path(str(data["path"]))
        if root is not None:
            path = locate(str(path), root, data_root)[0]
        return cls(
            path=path,
            label=str(data["label"]),
            split=str(data.get("split", "")),
            patient_id=str(data.get("patient_id") or path.stem),
            source=str(data.get("source") or UNKNOWN_SOURCE),
            sha256=str(data.get("sha256") or ""),
        )


@dataclass(frozen=True)
class DataConfig:
    """Which folder, which labels and how to split it. Saved with every run (split.json)."""

    root: Path
    label_mode: LabelMode = "binary"
    split_mode: SplitMode = "patient"
    # Carved from the train pool by patient (patient mode).
    val_fraction: float = 0.1
    # Random mode: seed 000's image-level (train, val, test) split of the pooled images.
    random_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
    # Random mode's pool: "train", the official train folder alone, as seed 000 split it; "all": the train,
    # val and test folders together. A flat ROOT/{CLASS}/ folder has no official splits: all of it either way.
    random_pool: RandomPool = "train"
    # Flat ROOT/{CLASS}/ layout: share of patients' images carved as test.
    flat_test_fraction: float = 0.15
    # "original": train and validate only on the checksum-verified originals (MANIFEST `source`).
    sources: SourcesMode = "all"
    # Seed 002: random undersampling of the majority class(es), train only.
    undersample: bool = False
    # Deterministic (seeded) cap per class per split, applied after splitting: quick runs and tests.
    max_per_class: int | None = None
    # The official Kermany test shares 170 `person` ids with train; True drops those
    # patients' images from the train pool so train and test are patient-disjoint too.
    exclude_test_patients: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())
        object.__setattr__(self, "random_fractions", tuple(float(f) for f in self.random_fractions))
        _check_choice("label_mode", self.label_mode, LabelMode)
        _check_choice("split_mode", self.split_mode, SplitMode)
        _check_choice("random_pool", self.random_pool, RandomPool)
        _check_choice("sources", self.sources, SourcesMode)
        if not 0.0 < self.val_fraction < 0.9:
            raise DataError(f"val_fraction {self.val_fraction} must be within (0, 0.9)")
        if not 0.0 < self.flat_test_fraction < 0.9:
            raise DataError(f"flat_test_fraction {self.flat_test_fraction} must be within (0, 0.9)")
        fractions = self.random_fractions
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise DataError(f"random_fractions {fractions} must be three positive shares summing to 1")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise DataError(f"max_per_class {self.max_per_class} must be at least 1 (or None for no cap)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        data["random_fractions"] = list(self.random_fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"data config: unknown keys {unknown}; expected only {sorted(known)}")
        values = dict(data)
        if values.get("split_mode") == "random":
            # split.json files written before session 21 have no random_pool: their random split pooled every folder
            values.setdefault("random_pool", "all")
        if "random_fractions" in values:
            values["random_fractions"] = tuple(values["random_fractions"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise DataError(f"data config: {exc}") from exc


def _check_choice(name: str, value: str, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise DataError(f"{name} {value!r}: expected one of {allowed}")


@dataclass
class Splits:
    """The three sample lists a run uses, with the config and notes that made them."""

    labels: tuple[str, ...]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    config: DataConfig
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        if name not in OFFICIAL_SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {OFFICIAL_SPLITS}")
        samples: list[Sample] = getattr(self, name)
        return samples

    def summary(self) -> dict[str, Any]:
        """Per split: images per class, distinct patients, sources; patient overlap per pair of splits."""
        parts: dict[str, Any] = {}
        patients: dict[str, set[str]] = {}
        for name in OFFICIAL_SPLITS:
            samples = self.split(name)
            patients[name] = {s.patient_id for s in samples}
            per_class = Counter(s.label for s in samples)
            parts[name] = {
                "images": len(samples),
                "per_class": {label: per_class.get(label, 0) for label in self.labels},
                "patients": len(patients[name]),
                "sources": dict(sorted(Counter(s.source for s in samples).items())),
                "from_folder": dict(sorted(Counter(s.split or "flat" for s in samples).items())),
            }
        overlap = {}
        for i, first in enumerate(OFFICIAL_SPLITS):
            for second in OFFICIAL_SPLITS[i + 1 :]:
                shared = patients[first] & patients[second]
                images = sum(1 for s in self.split(second) if s.patient_id in shared)
                overlap[f"{first}-{second}"] = {"patients": len(shared), f"{second}_images": images}
        mode = self.config.split_mode
        return {
            "labels": list(self.labels),
            "root": str(self.config.root),
            "split_mode": mode,
            **({"random_pool": self.config.random_pool} if mode == "random" else {}),
            "label_mode": self.config.label_mode,
            "splits": parts,
            "patient_overlap": overlap,
            "notes": list(self.notes),
        }

    def to_json(self) -> dict[str, Any]:
        # The root absolute: one typed relative to the working folder means nothing to a later reader.
        root = str(self.config.root.resolve())
        return {
            "schema": SPLIT_JSON_SCHEMA,
            "labels": list(self.labels),
            "root": root,
            "config": {**self.config.to_dict(), "root": root},
            "notes": list(self.notes),
            **{name: [s.to_dict() for s in self.split(name)] for name in OFFICIAL_SPLITS},
        }

    @classmethod
    def from_json(
        cls,
        data: dict[str, Any],
        source: str = "split JSON",
        base: Path | None = None,
        data_root: Path | None = None,
    ) -> Splits:
        """``base``: the folder a relative root is relative to (the split file's; default the working folder).

        ``data_root``: where the data set is now (``--data``): paths under the recorded root are read there.
        """
        try:
            config = DataConfig.from_dict(dict(data["config"]))
            recorded = split_root(
                data.get("root", str(config.root)), base or Path.cwd(), recorded_paths(data)
            )
            lists = {
                name: [Sample.from_dict(item, recorded, data_root) for item in data[name]]
                for name in OFFICIAL_SPLITS
            }
            config = replace(config, root=data_root or recorded)
            labels = tuple(str(label) for label in data["labels"])
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{source}: split JSON is missing or has a malformed field ({exc}); it is written by "
                "'pneumo train': re-run the training, or restore the file from the run folder's copy"
            ) from exc
        return cls(labels=labels, config=config, notes=[str(n) for n in data.get("notes", [])], **lists)

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        atomic_write_json(target, self.to_json())
        return target

    @classmethod
    def load(cls, path: str | Path, data_root: Path | None = None) -> Splits:
        """A split.json; ``data_root`` re-roots it where the data set is now (see :meth:`from_json`)."""
        source = Path(path)
        try:
            data = read_json(source)
        except (OSError, ValueError) as exc:
            raise DataError(f"{source}: cannot read split JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{source}: split JSON must be an object; it is written by 'pneumo train'")
        return cls.from_json(data, str(source), source.parent, data_root)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ManifestRow:
    patient_id: str = ""
    source: str = ""
    sha256: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Layout:
    """What a data folder looks like, before reading any file."""

    root: Path
    kind: Literal["split", "flat"]
    splits: tuple[str, ...]  # ("",) for flat
    classes: tuple[str, ...]
    ignored: tuple[str, ...]  # sub-folders of root that are neither splits nor classes

    def class_dir(self, split: str, label: str) -> Path:
        return self.root / split / label if split else self.root / label


def parse_patient_id(name: str) -> str:
    """Patient id from a Kermany-style file name (see the data README); the stem otherwise."""
    stem = Path(name).stem
    for pattern in (_PERSON_RE, _IM_RE):
        match = pattern.match(stem)
        if match:
            return match.group("pid")
    return stem


def parse_kind(name: str) -> str | None:
    """'BACTERIA' / 'VIRUS' from a Kermany pneumonia file name, else None."""
    match = _KIND_RE.search(Path(name).stem)
    return match.group("kind").upper() if match else None


def read_manifest(root: Path) -> dict[str, ManifestRow]:
    """MANIFEST.csv rows keyed by POSIX path relative to root; {} when there is none."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return {}
    rows: dict[str, ManifestRow] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise DataError(f"{path}: no 'path' column; fix the header or move the file away")
            for row in reader:
                rows[row["path"].strip()] = ManifestRow(
                    patient_id=(row.get("patient_id") or "").strip(),
                    source=(row.get("source") or "").strip(),
                    sha256=(row.get("sha256") or "").strip().lower(),
                    kind=(row.get("pneumonia_kind") or "").strip().lower(),
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc}); fix or move it away") from exc
    return rows


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def describe_layout(root: str | Path) -> Layout:
    """Detect the layout of ``root``; DataError naming the path when it has none."""
    root = Path(root).expanduser()
    hint = (
        "expected ROOT/{train,val,test}/{CLASS}/ or ROOT/{CLASS}/ image folders "
        "(or make SYNTHETIC phantoms: pneumo data synth DIR)"
    )
    if not root.exists():
        raise DataError(f"{root}: data folder not found; {hint}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; {hint}")
    root = root.resolve()
    subdirs = _visible_dirs(root)
    if not any(root.iterdir()):
        raise DataError(f"{root}: the folder is empty; {hint}")
    split_dirs = [d for d in subdirs if d.name in OFFICIAL_SPLITS]
    if split_dirs:
        ignored = tuple(d.name for d in subdirs if d.name not in OFFICIAL_SPLITS)
        classes = sorted({c.name for d in split_dirs for c in _visible_dirs(d)})
        if not classes:
            raise DataError(
                f"{root}: split folders {[d.name for d in split_dirs]} hold no class folders; {hint}"
            )
        splits = tuple(s for s in OFFICIAL_SPLITS if (root / s).is_dir())
        for split in splits:
            for label in classes:
                if not (root / split / label).is_dir():
                    raise DataError(
                        f"{root / split / label}: class folder missing in split '{split}' "
                        f"(classes found: {', '.join(classes)}); every split needs every class folder"
                    )
        return Layout(root, "split", splits, tuple(classes), ignored)
    if not subdirs:
        raise DataError(f"{root}: no class folders; {hint}")
    return Layout(root, "flat", ("",), tuple(d.name for d in subdirs), ())


def discover(root: str | Path, label_mode: LabelMode = "binary") -> list[Sample]:
    """Every image under ``root`` as a :class:`Sample`, labelled by class folder (or pneumonia kind)."""
    _check_choice("label_mode", label_mode, LabelMode)
    layout = describe_layout(root)
    manifest = read_manifest(layout.root)
    samples: list[Sample] = []
    for split in layout.splits:
        for folder_label in layout.classes:
            folder = layout.class_dir(split, folder_label)
            files = image_files(folder)
            if not files:
                raise DataError(
                    f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}); "
                    "add images or remove the empty class folder"
                )
            for path in files:
                rel = path.relative_to(layout.root).as_posix()
                row = manifest.get(rel, ManifestRow())
                label = _label_for(path, folder_label, row, label_mode)
                samples.append(
                    Sample(
                        path=path,
                        label=label,
                        split=split,
                        patient_id=row.patient_id or parse_patient_id(path.name),
                        source=row.source or UNKNOWN_SOURCE,
                        sha256=row.sha256,
                    )
                )
    return samples


def _label_for(path: Path, folder_label: str, row: ManifestRow, label_mode: LabelMode) -> str:
    if label_mode == "binary":
        return folder_label
    if folder_label.upper() == NORMAL_LABEL:
        return NORMAL_LABEL
    kind = row.kind.upper() if row.kind in ("bacteria", "virus") else parse_kind(path.name)
    if kind is None:
        raise DataError(
            f"{path}: label mode 'kind' needs 'bacteria' or 'virus' in the file name "
            "(Kermany naming, e.g. person1_bacteria_1.jpeg) or a MANIFEST.csv pneumonia_kind; "
            "use label mode 'binary' for this folder"
        )
    return kind


# --------------------------------------------------------------------------- splitting


def make_splits(config: DataConfig) -> Splits:
    """Discover ``config.root`` and split it as ``config`` says; notes record every decision."""
    samples = discover(config.root, config.label_mode)
    labels = tuple(sorted({s.label for s in samples}))
    if len(labels) < 2:
        raise DataError(f"{config.root}: found only the class {labels}; a classifier needs at least two")
    if config.sources == ORIGINAL_SOURCE and not any(s.source == ORIGINAL_SOURCE for s in samples):
        raise DataError(
            f"{config.root}: sources='original' needs a MANIFEST.csv whose `source` column marks "
            "original files; none found. Use sources='all'"
        )
    notes: list[str] = []
    if config.split_mode == "random":
        train, val, test = _random_split(samples, config, notes)
    else:
        train, val, test = _patient_split(samples, config, notes)
    if config.undersample:
        train = _undersample(train, config.seed, notes)
    if config.max_per_class is not None:
        cap = config.max_per_class
        train = _cap(train, cap, f"{config.seed}:cap:train")
        val = _cap(val, cap, f"{config.seed}:cap:val")
        test = _cap(test, cap, f"{config.seed}:cap:test")
        notes.append(f"capped at {cap} images per class per split (seeded choice)")
    splits = Splits(labels, _sorted(train), _sorted(val), _sorted(test), config, notes)
    if config.split_mode == "patient":
        _assert_disjoint(splits.train, splits.val, "train", "val")
    for name in OFFICIAL_SPLITS:
        if not splits.split(name):
            raise DataError(
                f"{config.root}: the {name} split is empty after splitting ({'; '.join(notes)}); "
                "add images or lower the fractions"
            )
    return splits


def _sorted(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: str(s.path))


def _assert_disjoint(first: Sequence[Sample], second: Sequence[Sample], a: str, b: str) -> None:
    shared = {s.patient_id for s in first} & {s.patient_id for s in second}
    if shared:
        # An invariant of the carving below, checked explicitly (not `assert`, which -O removes).
        raise AssertionError(f"patients in both {a} and {b}: {sorted(shared)[:10]}")


def _random_split(
    samples: list[Sample], config: DataConfig, notes: list[str]
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    pool, pooled = _random_pool(samples, config)
    pool = _sorted(pool)
    random.Random(f"{config.seed}:random").shuffle(pool)
    n = len(pool)
    n_train = round(config.random_fractions[0] * n)
    n_val = round(config.random_fractions[1] * n)
    train, val, test = pool[:n_train], pool[n_train : n_train + n_val], pool[n_train + n_val :]
    shares = "/".join(f"{round(f * 100)}" for f in config.random_fractions)
    notes.append(
        f"random mode: {pooled}, shuffled image by image into train/val/test {shares}; patients leak across "
        "splits on purpose (see patient_overlap): scores on this test are inflated"
    )
    if config.exclude_test_patients:
        notes.append("exclude_test_patients has no effect in random mode: patients leak by design")
    if config.sources == ORIGINAL_SOURCE:
        train, val = _originals_only(train, notes, "train"), _originals_only(val, notes, "val")
    return train, val, test


def _random_pool(samples: list[Sample], config: DataConfig) -> tuple[list[Sample], str]:
    """The images random mode shuffles, and the words that say which (for the notes)."""
    folders = [f for f in OFFICIAL_SPLITS if any(s.split == f for s in samples)]
    if not folders:
        return samples, f"all {len(samples)} images of the flat layout (no official folders)"
    if config.random_pool == "all":
        return samples, (
            f"all {len(samples)} images of the {', '.join(folders)} folders pooled (random_pool 'all'; "
            "seed 000 split the train folder alone)"
        )
    pool = [s for s in samples if s.split == "train"]
    if not pool:
        raise DataError(
            f"{config.root / 'train'}: random mode splits the official train folder (as seed 000 did) and there "
            "is none; add ROOT/train/{CLASS}/ folders, or pool every folder with random_pool 'all' "
            "(--random-pool all)"
        )
    unused = [f"{f}/ {sum(s.split == f for s in samples)}" for f in folders if f != "train"]
    return pool, (
        f"the official train folder's {len(pool)} images (random_pool 'train', as seed 000 split it"
        + (f"; {' and '.join(unused)} images unused)" if unused else ")")
    )


def _patient_split(
    samples: list[Sample], config: DataConfig, notes: list[str]
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    by_split: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_split[sample.split].append(sample)
    if "" in by_split:
        test, pool = _carve_by_patient(by_split[""], config.flat_test_fraction, f"{config.seed}:test")
        notes.append(
            f"flat layout: test carved by patient ({config.flat_test_fraction:.0%} of each class's images, "
            f"{len(test)} images)"
        )
    else:
        if not by_split.get("train"):
            raise DataError(f"{config.root / 'train'}: no train split; add ROOT/train/{{CLASS}}/ folders")
        pool = list(by_split["train"])
        if by_split.get("val"):
            pool += by_split["val"]
            notes.append(
                f"official val ({len(by_split['val'])} images) merged into the pool; "
                "validation carved by patient"
            )
        if by_split.get("test"):
            test = list(by_split["test"])
            notes.append(f"official test split used untouched ({len(test)} images)")
        else:
            test, pool = _carve_by_patient(pool, config.flat_test_fraction, f"{config.seed}:test")
            notes.append(f"no test folder: test carved by patient from train ({len(test)} images)")
    pool = _handle_test_patients(pool, test, config, notes)
    if config.sources == ORIGINAL_SOURCE:
        pool = _originals_only(pool, notes, "train/val pool")
    val, train = _carve_by_patient(pool, config.val_fraction, f"{config.seed}:val")
    notes.append(
        f"validation: {len(val)} images of {len({s.patient_id for s in val})} patients carved from the pool "
        f"by patient ({config.val_fraction:.0%} of each class), no patient in both train and val"
    )
    return train, val, test


def _handle_test_patients(
    pool: list[Sample], test: list[Sample], config: DataConfig, notes: list[str]
) -> list[Sample]:
    test_patients = {s.patient_id for s in test}
    shared = {s.patient_id for s in pool} & test_patients
    if not shared:
        return pool
    test_images = sum(1 for s in test if s.patient_id in shared)
    if config.exclude_test_patients:
        kept = [s for s in pool if s.patient_id not in shared]
        notes.append(
            f"{len(shared)} patient ids also in test: their {len(pool) - len(kept)} train-pool images "
            "dropped (exclude_test_patients), so train and test are patient-disjoint"
        )
        return kept
    notes.append(
        f"{len(shared)} patient ids occur in both the train pool and test ({test_images} test images); "
        "kept as in the official split (set exclude_test_patients to drop them from train)"
    )
    return pool


def _originals_only(samples: list[Sample], notes: list[str], what: str) -> list[Sample]:
    kept = [s for s in samples if s.source == ORIGINAL_SOURCE]
    notes.append(f"sources='original': {len(samples) - len(kept)} non-original images dropped from {what}")
    return kept


def _carve_by_patient(
    samples: Sequence[Sample], fraction: float, seed: str
) -> tuple[list[Sample], list[Sample]]:
    """Split off about ``fraction`` of each class's images, whole patients at a time.

    Patients are stratified by their most frequent label and taken in a seeded
    random order while they fit under the target, so the carved share lands
    close to ``fraction`` even when one patient has 30 images.
    """
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_patient[sample.patient_id].append(sample)
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, items in sorted(by_patient.items()):
        label = Counter(s.label for s in items).most_common(1)[0][0]
        by_label[label].append(patient)
    rng = random.Random(seed)
    carved_patients: set[str] = set()
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        total = sum(len(by_patient[p]) for p in patients)
        target = round(fraction * total)
        taken = 0
        for patient in patients:
            size = len(by_patient[patient])
            if taken + size <= target:
                carved_patients.add(patient)
                taken += size
            if taken >= target:
                break
        if taken == 0 and target > 0 and len(patients) > 1:
            # every patient is larger than the target: take the smallest rather than none
            carved_patients.add(min(patients, key=lambda p: (len(by_patient[p]), p)))
    carved = [s for s in samples if s.patient_id in carved_patients]
    rest = [s for s in samples if s.patient_id not in carved_patients]
    return carved, rest


def _undersample(train: list[Sample], seed: int, notes: list[str]) -> list[Sample]:
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in _sorted(train):
        by_label[sample.label].append(sample)
    smallest = min(len(items) for items in by_label.values())
    rng = random.Random(f"{seed}:undersample")
    kept: list[Sample] = []
    for label in sorted(by_label):
        items = by_label[label]
        kept += rng.sample(items, smallest) if len(items) > smallest else items
    before = ", ".join(f"{label} {len(items)}" for label, items in sorted(by_label.items()))
    notes.append(f"undersampled train to {smallest} images per class (was {before}), like seed 002")
    return kept


def _cap(samples: list[Sample], cap: int, seed: str) -> list[Sample]:
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in _sorted(samples):
        by_label[sample.label].append(sample)
    rng = random.Random(seed)
    kept: list[Sample] = []
    for label in sorted(by_label):
        items = by_label[label]
        kept += rng.sample(items, cap) if len(items) > cap else items
    return kept
