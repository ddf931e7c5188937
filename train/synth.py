"""SYNTHETIC chest phantoms: a data folder anyone can train on without the real data set.

``pneumo data synth OUT`` draws procedural images that look vaguely like a
frontal chest film (dark background, a soft body outline, two dark lung fields
with bright rims, a mediastinum, ribs as arcs, vessel markings, noise, random
exposure and geometry) and writes them as JPEGs in the same layout and with
the same kind of file names as the Kermany data set, so every stage of the
toolkit runs on them unchanged:

* PNEUMONIA images carry a learnable but not trivial signal: patchy bright
  "consolidation" inside the lung fields; ``bacteria`` patients get one dense
  lobar patch, ``virus`` patients fainter, diffuse patches in both lungs
  (so ``label_mode="kind"`` is learnable too);
* NORMAL lungs are clear; both classes get the same distractors (exposure,
  vessel markings, an occasional bright electrode dot), so mean brightness
  alone does not separate them;
* one phantom "patient" has one or two images sharing its anatomy, and stays
  within one split, like the patient ids of the real data.

The folder gets a ``SYNTHETIC.json`` marker (:func:`is_synthetic`) and a
README.txt: models trained on it, or on any folder inside it, are marked SYNTHETIC everywhere. These are
phantoms, not X-rays; nothing learned from them means anything medically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np

from edge_runtime import __version__
from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from train.errors import DataError

MARKER_FILE = "SYNTHETIC.json"
README_FILE = "README.txt"
SYNTH_SCHEMA = 1
CLASSES = ("NORMAL", "PNEUMONIA")
# Share of each class's images per split in the split layout (val is folded into train by patient mode anyway).
SPLIT_SHARES = (("test", 0.2), ("val", 0.1))
TWO_IMAGE_PATIENTS = 0.3
VIRUS_SHARE = 1 / 3
JPEG_QUALITY = 90

SynthLayout = Literal["split", "flat"]


@dataclass(frozen=True)
class SynthConfig:
    """What ``pneumo data synth`` makes."""

    per_class: int = 160  # images per class, all splits together
    size: int = 256  # image height in pixels; width is 1.0-1.35x that (landscape films, like the real ones)
    seed: int = 0
    layout: SynthLayout = "split"

    def __post_init__(self) -> None:
        if not 3 <= self.per_class <= 100_000:
            raise DataError(f"--per-class {self.per_class}: expected 3..100000 images per class")
        if not 64 <= self.size <= 1024:
            raise DataError(f"--size {self.size}: expected 64..1024 pixels")
        if self.layout not in get_args(SynthLayout):
            raise DataError(f"--layout {self.layout!r}: expected one of {get_args(SynthLayout)}")


@dataclass
class SynthResult:
    root: Path
    config: SynthConfig
    counts: dict[str, dict[str, int]]  # split ("" when flat) -> class -> images
    patients: dict[str, dict[str, int]]
    files: int
    reused: bool = False  # the folder already held exactly these phantoms
    paths: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Anatomy:
    """One phantom patient's body; every image of the patient jitters around it."""

    aspect: float
    body_w: float
    lung_gap: float
    lung_w: float
    lung_h: float
    lung_top: float
    tilt: float
    heart_w: float
    rib_step: float
    tissue: float
    kind: str  # "none", "bacteria" or "virus"


def is_synthetic(root: str | Path) -> bool:
    """True when ``root`` or a folder above it holds the SYNTHETIC marker that ``pneumo data synth`` writes.

    The marker sits at the top of a phantom set only, and ``--data SET/train`` or ``--data SET/test``
    is as synthetic as the set: a model or report made from any part of it must say so.
    """
    # Without the '..' collapsed, the parents of SET/../real/train would include SET and its marker.
    path = Path(os.path.abspath(os.path.expanduser(root)))
    # And with its links resolved (from the path as given, so a link before a '..' is followed as the
    # kernel follows it): a link into a phantom set is phantoms too.
    real = Path(root).expanduser().resolve()
    folders = {path, *path.parents, real, *real.parents}
    return any((folder / MARKER_FILE).is_file() for folder in folders)


def generate(out: str | Path, config: SynthConfig) -> SynthResult:
    """Write the phantom folder; reuse it when it already holds exactly this config's phantoms.

    Refuses any other non-empty folder: phantoms are never written among real files.
    """
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose another output folder")
    if (root / MARKER_FILE).is_file():
        return _reuse(root, config)
    if root.is_dir() and any(root.iterdir()):
        raise DataError(
            f"{root}: folder is not empty and holds no {MARKER_FILE}; phantoms are only written to a new "
            "or empty folder. Choose another output folder"
        )
    counts: dict[str, dict[str, int]] = {}
    patients: dict[str, dict[str, int]] = {}
    paths: list[Path] = []
    for class_index, label in enumerate(CLASSES):
        image_number = 0
        for split, patient_no, images in _plan(config, class_index):
            anatomy = _anatomy(np.random.default_rng([config.seed, class_index, patient_no]), label)
            folder = root / split / label if split else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(images):
                image_number += 1
                rng = np.random.default_rng([config.seed, class_index, patient_no, k + 1])
                image = render(rng, anatomy, config.size)
                path = folder / _file_name(label, anatomy.kind, patient_no, k + 1, image_number)
                ok, buffer = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise DataError(f"{path}: OpenCV could not encode the phantom as JPEG")
                # Atomic: a watch inbox or a training run reading the folder never sees half a JPEG.
                atomic_write_bytes(path, buffer.tobytes())
                paths.append(path)
            counts.setdefault(split, {}).setdefault(label, 0)
            counts[split][label] += images
            patients.setdefault(split, {}).setdefault(label, 0)
            patients[split][label] += 1
    result = SynthResult(root, config, counts, patients, len(paths), paths=paths)
    atomic_write_text(root / README_FILE, _readme(result))
    # The marker is written last: its presence means the folder is complete.
    atomic_write_json(root / MARKER_FILE, _marker(result))
    return result


def _reuse(root: Path, config: SynthConfig) -> SynthResult:
    try:
        marker = json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{root / MARKER_FILE}: unreadable marker ({exc}); choose another output folder"
        ) from exc
    if marker.get("params") != asdict(config):
        raise DataError(
            f"{root}: already holds SYNTHETIC phantoms made with {marker.get('params')}, not {asdict(config)}; "
            "choose another output folder (nothing is overwritten)"
        )
    paths = sorted(p for p in root.rglob("*.jpeg") if p.is_file())
    if len(paths) != marker.get("files"):
        raise DataError(
            f"{root}: marker lists {marker.get('files')} phantoms but {len(paths)} are there; "
            "the folder was changed. Choose another output folder"
        )
    return SynthResult(
        root, config, marker["counts"], marker["patients"], len(paths), reused=True, paths=paths
    )


def _plan(config: SynthConfig, class_index: int) -> Iterator[tuple[str, int, int]]:
    """(split, patient number, images) per phantom patient; patients never straddle splits."""
    rng = np.random.default_rng([config.seed, class_index, 0])
    n = config.per_class
    if config.layout == "flat":
        quotas = [("", n)]
    else:
        held = {split: max(1, round(share * n)) for split, share in SPLIT_SHARES}
        quotas = [("train", n - sum(held.values())), ("val", held["val"]), ("test", held["test"])]
    patient_no = 0
    for split, quota in quotas:
        left = quota
        while left > 0:
            patient_no += 1
            images = min(left, 2 if rng.random() < TWO_IMAGE_PATIENTS else 1)
            yield split, patient_no, images
            left -= images


def _file_name(label: str, kind: str, patient_no: int, k: int, image_number: int) -> str:
    if label == "NORMAL":
        return f"SYNTH-IM-{patient_no:04d}-{k:04d}.jpeg"
    return f"synth-person{patient_no}_{kind}_{image_number}.jpeg"


def _anatomy(rng: np.random.Generator, label: str) -> Anatomy:
    kind = "none" if label == "NORMAL" else ("virus" if rng.random() < VIRUS_SHARE else "bacteria")
    return Anatomy(
        aspect=float(rng.uniform(1.0, 1.35)),
        body_w=float(rng.uniform(0.36, 0.46)),
        lung_gap=float(rng.uniform(0.05, 0.09)),
        lung_w=float(rng.uniform(0.13, 0.17)),
        lung_h=float(rng.uniform(0.28, 0.36)),
        lung_top=float(rng.uniform(0.12, 0.2)),
        tilt=float(rng.uniform(-6, 6)),
        heart_w=float(rng.uniform(0.09, 0.14)),
        rib_step=float(rng.uniform(0.065, 0.085)),
        tissue=float(rng.uniform(95, 130)),
        kind=kind,
    )


def render(rng: np.random.Generator, anatomy: Anatomy, size: int) -> np.ndarray:
    """One phantom image (uint8, 2-D) of ``anatomy`` with per-image jitter, and consolidation if it has a kind."""
    h = size
    w = round(size * anatomy.aspect * float(rng.uniform(0.97, 1.03)))
    cx = w / 2 + float(rng.normal(0, 0.02)) * w
    shift_y = float(rng.normal(0, 0.015)) * h
    tilt = anatomy.tilt + float(rng.normal(0, 1.5))
    img = np.full((h, w), 12.0, np.float32)

    body = np.zeros((h, w), np.float32)
    cv2.ellipse(
        body,
        (round(cx), round(0.62 * h + shift_y)),
        (round(anatomy.body_w * w), round(0.62 * h)),
        tilt / 2,
        0,
        360,
        anatomy.tissue,
        -1,
    )
    img += cv2.GaussianBlur(body, (0, 0), 0.02 * h)

    lungs = np.zeros((h, w), np.float32)
    rims = np.zeros((h, w), np.float32)
    centres = []
    for side in (-1, 1):
        lx = cx + side * (anatomy.lung_gap * w + anatomy.lung_w * w)
        ly = anatomy.lung_top * h + anatomy.lung_h * h + shift_y
        axes = (round(anatomy.lung_w * w * float(rng.uniform(0.95, 1.05))), round(anatomy.lung_h * h))
        angle = tilt + side * 4.0
        cv2.ellipse(lungs, (round(lx), round(ly)), axes, angle, 0, 360, 1.0, -1)
        cv2.ellipse(rims, (round(lx), round(ly)), axes, angle, 0, 360, 1.0, max(2, h // 90))
        centres.append((lx, ly, axes, angle))
    lung_mask = cv2.GaussianBlur(lungs, (0, 0), 0.012 * h)
    img -= lung_mask * anatomy.tissue * 0.62
    img += cv2.GaussianBlur(rims, (0, 0), 0.006 * h) * 28.0

    heart = np.zeros((h, w), np.float32)
    cv2.ellipse(
        heart,
        (round(cx - 0.02 * w), round(0.62 * h + shift_y)),
        (round(anatomy.heart_w * w), round(0.16 * h)),
        -15 + tilt,
        0,
        360,
        30.0,
        -1,
    )
    img += cv2.GaussianBlur(heart, (0, 0), 0.015 * h)

    ribs = np.zeros((h, w), np.float32)
    thickness = max(2, h // 80)
    for side in (-1, 1):
        # posterior ribs: one arch per side and level, rising from the spine and falling outwards
        y = anatomy.lung_top * h + shift_y - 0.04 * h
        start, end = (185, 272) if side < 0 else (268, 355)
        while y < 0.8 * h:
            centre = (round(cx + side * 0.01 * w), round(y + 0.13 * h))
            axes = (round(anatomy.lung_w * 2.3 * w), round(0.13 * h))
            cv2.ellipse(ribs, centre, axes, tilt, start, end, 22.0, thickness)
            y += anatomy.rib_step * h * float(rng.uniform(0.93, 1.07))
    img += cv2.GaussianBlur(ribs, (0, 0), 0.004 * h) * (0.6 + 0.4 * lungs)

    _vessels(rng, img, centres, h)
    if anatomy.kind != "none":
        img += _consolidation(rng, anatomy.kind, centres, lungs, h, w)
    if rng.random() < 0.3:
        spot = (round(float(rng.uniform(0.2, 0.8)) * w), round(float(rng.uniform(0.2, 0.8)) * h))
        cv2.circle(img, spot, max(2, h // 60), float(rng.uniform(120, 200)), -1)

    film = np.asarray(cv2.GaussianBlur(img, (0, 0), 0.8), dtype=np.float32)
    film += rng.normal(0, float(rng.uniform(3, 7)), film.shape).astype(np.float32)
    gain, bias, gamma = (
        float(rng.uniform(0.8, 1.2)),
        float(rng.uniform(-15, 15)),
        float(rng.uniform(0.85, 1.15)),
    )
    exposed = np.clip(film * gain + bias, 0, 255) / 255.0
    return np.clip(np.rint(255.0 * np.power(exposed, gamma)), 0, 255).astype(np.uint8)


def _vessels(rng: np.random.Generator, img: np.ndarray, centres: list[Any], h: int) -> None:
    """Faint branching lines from each hilum, in both classes."""
    layer = np.zeros_like(img)
    for lx, ly, axes, _ in centres:
        hilum_x = lx + (-0.5 if lx > img.shape[1] / 2 else 0.5) * axes[0]
        for _ in range(int(rng.integers(4, 8))):
            angle = float(rng.uniform(0, 2 * np.pi))
            length = float(rng.uniform(0.3, 0.8)) * axes[0]
            end = (round(hilum_x + np.cos(angle) * length), round(ly + np.sin(angle) * length * 1.5))
            cv2.line(layer, (round(hilum_x), round(ly)), end, float(rng.uniform(8, 16)), 1)
    img += cv2.GaussianBlur(layer, (0, 0), 0.004 * h)


def _consolidation(
    rng: np.random.Generator, kind: str, centres: list[Any], lungs: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Patchy bright opacities inside the lung fields: one dense lobar patch (bacteria) or diffuse (virus)."""
    layer = np.zeros((h, w), np.float32)
    if kind == "bacteria":
        lx, ly, axes, _ = centres[int(rng.integers(0, 2))]
        px = lx + float(rng.uniform(-0.5, 0.5)) * axes[0]
        py = ly + float(rng.uniform(-0.3, 0.6)) * axes[1]
        strength = float(rng.uniform(55, 95))
        for _ in range(int(rng.integers(5, 10))):
            centre = (round(px + rng.normal(0, 0.25) * axes[0]), round(py + rng.normal(0, 0.2) * axes[1]))
            radius = max(2, round(float(rng.uniform(0.25, 0.5)) * axes[0]))
            cv2.circle(layer, centre, radius, strength * float(rng.uniform(0.6, 1.0)), -1)
        sigma = 0.025 * h
    else:
        strength = float(rng.uniform(40, 65))
        for lx, ly, axes, _ in centres:
            for _ in range(int(rng.integers(8, 16))):
                centre = (round(lx + rng.normal(0, 0.45) * axes[0]), round(ly + rng.normal(0, 0.4) * axes[1]))
                radius = max(2, round(float(rng.uniform(0.1, 0.25)) * axes[0]))
                cv2.circle(layer, centre, radius, strength * float(rng.uniform(0.5, 1.0)), -1)
        sigma = 0.015 * h
    # Mottled, not smooth: bright spots a few pixels across (like air-space opacities) give local
    # texture that small convolutions detect; a smooth glow is only a brightness change.
    mottle = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.012 * h)
    spots = np.clip(0.45 + 0.7 * mottle / (float(mottle.std()) + 1e-6), 0.0, 1.6)
    return cv2.GaussianBlur(layer, (0, 0), sigma) * spots * cv2.GaussianBlur(lungs, (0, 0), 0.01 * h)


def _marker(result: SynthResult) -> dict[str, Any]:
    return {
        "synthetic": True,
        "warning": SYNTHETIC_WARNING,
        "what": "procedural phantom images, not X-rays; for demos and tests only",
        "generator": f"pneumo data synth (pneumo-edge {__version__})",
        "schema": SYNTH_SCHEMA,
        "params": asdict(result.config),
        "counts": result.counts,
        "patients": result.patients,
        "files": result.files,
    }


def _readme(result: SynthResult) -> str:
    config = result.config
    lines = [
        "SYNTHETIC DATA - procedural phantoms, NOT X-rays",
        "",
        SYNTHETIC_WARNING,
        "",
        f"Made by `pneumo data synth` (pneumo-edge {__version__}) with per_class={config.per_class}, "
        f"size={config.size}, seed={config.seed}, layout={config.layout}.",
        "Each image is drawn by code: a body outline, two dark lung fields with bright rims, ribs,",
        "vessel markings, noise and random exposure. PNEUMONIA phantoms have bright patchy",
        "'consolidation' in the lungs (bacteria: one dense patch; virus: faint, diffuse, both lungs).",
        "File names imitate the Kermany et al. 2018 data set so patient-wise splitting works",
        "(synth-person12_bacteria_3.jpeg -> patient synth-person12; SYNTH-IM-0012-0001.jpeg -> SYNTH-IM-0012).",
        "",
        "A model trained on these images has learned nothing about real lungs. Every model, report and",
        "prediction made from it is marked SYNTHETIC.",
        "",
        "images per split and class:",
    ]
    for split, per_class in result.counts.items():
        for label, n in per_class.items():
            lines.append(
                f"  {split or '(flat)'}/{label}: {n} images, {result.patients[split][label]} patients"
            )
    return "\n".join(lines) + "\n"
