"""CI proof on the real chest X-ray set: a briefly trained model through the whole export chain,
with INT8 (Q/DQ on ONNX Runtime CPU) accuracy on the full official test split within 1 point of FP32.

The model is deliberately small and briefly trained (64x64 grayscale, 600
class-balanced training images, 6 epochs, about 10 s on 2 CPU cores; the
Youden threshold chosen on 200 held-out training images): the point is the
export chain, not the classifier. Its figures are printed (run
with -s) and quoted in the README's export section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import verify_manifest
from edge_runtime.contract import ModelInfo, PreprocessContract
from export.bundle import make_bundle
from export.config import BundleConfig
from export.run_folder import balanced_sample, folder_images, label_indices, load_images

pytestmark = [pytest.mark.data, pytest.mark.slow, pytest.mark.tf]

LABELS = ("NORMAL", "PNEUMONIA")
TRAIN_IMAGES = 600
VAL_IMAGES = 200
EPOCHS = 6
INT8_ACCURACY_MARGIN_POINTS = 1.0


def _small_cnn(contract: PreprocessContract) -> Any:
    import keras

    inputs = keras.Input(contract.input_shape)
    x = keras.layers.Rescaling(contract.scale, contract.offset)(inputs)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _real_run(data: Path, folder: Path) -> Path:
    """A run folder like 'pneumo train' writes: a brief fit on a class-balanced part of the real train split."""
    import keras

    from edge_runtime.metrics import choose_threshold

    contract = PreprocessContract(height=64, width=64)
    pool = balanced_sample(folder_images(data, LABELS, "train"), LABELS, TRAIN_IMAGES + VAL_IMAGES, seed=0)
    order = np.random.default_rng(0).permutation(len(pool))
    train = [pool[i] for i in order[:TRAIN_IMAGES]]
    val = [pool[i] for i in order[TRAIN_IMAGES:]]
    keras.utils.set_random_seed(0)
    model = _small_cnn(contract)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    x = load_images(train, contract).astype(np.float32)
    model.fit(x, label_indices(train, LABELS).astype(np.float32), epochs=EPOCHS, batch_size=32, verbose=0)
    # The threshold is chosen on held-out training images, as 'pneumo train' chooses it on validation.
    val_prob = np.asarray(model(load_images(val, contract).astype(np.float32))).reshape(-1)
    choice = choose_threshold(label_indices(val, LABELS), val_prob, "youden")
    info = ModelInfo(
        model_version="ci-real-brief-64",
        arch="small-cnn",
        threshold=choice.threshold,
        threshold_rule=choice.rule,
    )
    folder.mkdir(parents=True)
    model.save(folder / "model.h5")
    contract.save(folder)
    info.save(folder)
    (folder / "model_card.json").write_text(
        json.dumps({"arch": info.arch, "note": "CI export test model"}) + "\n"
    )
    split = {
        "labels": list(LABELS),
        "root": str(data),
        "config": {"note": "export CI test"},
        "train": [{"path": im.ref, "label": im.label, "split": "train"} for im in train],
        "val": [{"path": im.ref, "label": im.label, "split": "val"} for im in val],
        "test": [
            {"path": str(im.path), "label": im.label, "split": "test"}
            for im in folder_images(data, LABELS, "test")
        ],
    }
    (folder / "split.json").write_text(json.dumps(split) + "\n")
    return folder


def test_real_model_through_the_whole_chain(real_data: Path, tmp_path: Path) -> None:
    run = _real_run(real_data, tmp_path / "run")
    result = make_bundle(run, tmp_path / "bundle", BundleConfig(bootstrap=200))
    report = result.report
    verify_manifest(result.root)

    assert report["onnx"]["parity"]["max_abs_diff"] < 1e-4
    calibration = report["calibration"]
    assert calibration["split"] == "train" and calibration["n"] == 512
    assert calibration["class_counts"] == {"NORMAL": 256, "PNEUMONIA": 256}
    calib_files = json.loads((result.root / "calibration" / "calib.json").read_text())["files"]
    assert all(f.startswith("train/") for f in calib_files)

    accuracy = report["accuracy"]
    fp32, fp16, int8 = accuracy["fp32"], accuracy["fp16"], accuracy["int8"]
    assert accuracy["n_images"] == 624
    lines = [
        f"{p}: accuracy {m['accuracy']:.4f} sensitivity {m['sensitivity']:.4f} specificity {m['specificity']:.4f} "
        f"AUC {m['roc_auc']:.4f}"
        for p, m in (("fp32", fp32), ("fp16", fp16), ("int8", int8))
    ]
    lines.append(f"onnx vs keras: max|diff| {report['onnx']['parity']['max_abs_diff']:.2e}")
    for p in ("fp16", "int8"):
        vs = accuracy[f"{p}_vs_fp32"]["outputs"]
        lines.append(
            f"{p} vs fp32: max|diff| {vs['max_abs_diff']:.4f}, decision agreement {vs['decision_agreement']:.4f}"
        )
    print("\n" + "\n".join(lines))

    assert fp32["roc_auc"] > 0.8, "the briefly trained model should still separate the classes"
    assert abs(100 * (fp32["accuracy"] - int8["accuracy"])) <= INT8_ACCURACY_MARGIN_POINTS, lines
    assert abs(100 * (fp32["accuracy"] - fp16["accuracy"])) <= 0.5, lines
    assert accuracy["int8_gate_passed"] is True
