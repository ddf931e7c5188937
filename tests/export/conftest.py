"""Fixtures for the export tests: a tiny, briefly fitted Keras run folder over generated images.

The images are SYNTHETIC (dark noise = NORMAL, a bright central opacity =
PNEUMONIA), small (44x40 PNG, contract 32x32) and written to a temporary data
root, with a split.json that lists train/val entries relative to the root and
test entries by absolute path, as the training stage may write either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo, PreprocessContract
from tests.conftest import write_image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("NORMAL", "PNEUMONIA")
COUNTS = {"train": 64, "val": 6, "test": 24}


@dataclass(frozen=True)
class TinyRun:
    folder: Path
    data: Path
    contract: PreprocessContract
    info: ModelInfo


def synthetic_xray(label: str, rng: np.random.Generator, height: int = 44, width: int = 40) -> np.ndarray:
    """A grey noise field; PNEUMONIA adds a bright blurred opacity of random size and strength."""
    import cv2

    image = rng.normal(90, 25, (height, width))
    if label == "PNEUMONIA":
        mask = np.zeros((height, width), np.float32)
        center = (int(rng.integers(12, width - 12)), int(rng.integers(12, height - 12)))
        cv2.circle(mask, center, int(rng.integers(6, 12)), 1.0, -1)
        image += cv2.GaussianBlur(mask, (9, 9), 3) * rng.uniform(60, 120)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_data(root: Path, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Images under ROOT/SPLIT/LABEL/ and the split.json entry lists (test paths absolute)."""
    rng = np.random.default_rng(seed)
    entries: dict[str, list[dict[str, str]]] = {}
    for split, count in COUNTS.items():
        entries[split] = []
        for label in LABELS:
            for i in range(count):
                rel = Path(split) / label / f"{label.lower()}-{split}-{i:03d}.png"
                write_image(root / rel, synthetic_xray(label, rng))
                path = str(root / rel) if split == "test" else rel.as_posix()
                entries[split].append(
                    {
                        "path": path,
                        "label": label,
                        "patient_id": f"p{split}{i}",
                        "source": "synthetic",
                        "split": split,
                    }
                )
    return entries


def tiny_keras_model(contract: PreprocessContract, rescaling: bool = True) -> Any:
    import keras

    inputs = keras.Input(contract.input_shape)
    x = keras.layers.Rescaling(contract.scale, contract.offset)(inputs) if rescaling else inputs
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.BatchNormalization(momentum=0.7)(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def write_run(
    folder: Path,
    data: Path,
    entries: dict[str, list[dict[str, str]]],
    contract: PreprocessContract,
    info: ModelInfo,
    epochs: int = 4,
) -> Path:
    """Fit the tiny model briefly on the train entries and write a run folder like 'pneumo train' does."""
    import keras

    from edge_runtime.preprocess import preprocess_file

    keras.utils.set_random_seed(0)
    model = tiny_keras_model(contract)
    paths = [data / e["path"] for e in entries["train"]]
    x = np.stack([preprocess_file(p, contract) for p in paths]).astype(np.float32)
    y = np.array([LABELS.index(e["label"]) for e in entries["train"]], dtype=np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.h5")
    contract.save(folder)
    info.save(folder)
    (folder / "model_card.json").write_text(
        json.dumps({"arch": info.arch, "synthetic": info.synthetic}) + "\n"
    )
    split = {"schema": 1, "labels": list(LABELS), "root": str(data), "config": {}, "notes": [], **entries}
    (folder / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    pytest.importorskip("tensorflow")
    base = tmp_path_factory.mktemp("tiny-export")
    data = base / "data"
    contract = PreprocessContract(height=32, width=32)
    info = ModelInfo(model_version="tiny-export-1", arch="tiny", threshold=0.5, synthetic=True)
    entries = write_data(data)
    folder = write_run(base / "run", data, entries, contract, info)
    return TinyRun(folder=folder, data=data, contract=contract, info=info)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx of the tiny run, exported and parity-checked once per session."""
    from export.config import OnnxConfig
    from export.onnx_from_keras import export_onnx
    from export.run_folder import RunFolder, load_images, parity_images_for

    run = RunFolder.resolve(tiny_run.folder)
    images, source = parity_images_for(run, 16, None)
    output = tmp_path_factory.mktemp("tiny-onnx") / "model.onnx"
    export_onnx(
        run.h5_path, run.contract, run.info, output, load_images(images, run.contract), source, OnnxConfig()
    )
    return output


@pytest.fixture(scope="module")
def calibration(tiny_run: TinyRun) -> np.ndarray:
    """128 calibration images from the tiny run's training split, as export samples them."""
    from export.calibration import build_calibration_set
    from export.config import CalibrationConfig
    from export.run_folder import RunFolder

    run = RunFolder.resolve(tiny_run.folder)
    return build_calibration_set(
        run.split_images("train"), run.contract, run.info, CalibrationConfig(size=128)
    ).images
