"""The golden set: a few dozen real, preprocessed test images with their expected FP32 outputs.

``pneumo edge build`` on the Jetson runs every engine it builds on
``golden/images.npy`` and compares with ``golden/golden.json``:

* ``fp32_outputs``: ONNX FP32 outputs on ONNX Runtime CPU, shape (N, K);
* ``tolerance[precision]``: the largest allowed max abs difference of the raw
  outputs from ``fp32_outputs``;
* decisions at ``decision_threshold`` must agree on every image whose FP32
  P(abnormal) lies more than ``tolerance[precision]`` from the threshold
  (images closer than that may legitimately flip; ``agreement_rule`` says so).

FP16 and INT8 tolerances are set from what ONNX Runtime's own FP16 and Q/DQ
graphs do on these images (``ort_reference``), with headroom for TensorRT's
different kernels, never below a floor and never above a ceiling. The ceiling
keeps the self-test meaningful: a tolerance of 0.5 would pass an engine that
outputs noise. A variant whose *own* ONNX Runtime outputs already exceed the
ceiling is refused at export (:func:`golden_tolerances` raises), since no
engine built from it could pass an honest self-test.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes
from edge_runtime.golden import IMAGES_FILE, META_FILE, GoldenSet, compare_golden
from edge_runtime.predictor import abnormal_probability
from export.config import GoldenConfig
from export.errors import ExportError
from export.parity import ParityResult
from export.run_folder import HeldOutSplit, LabelledImage

GOLDEN_SCHEMA = 1
# Floors for TensorRT vs ONNX Runtime: FP16 kernels differ in accumulation order, INT8 in fusion and rounding.
FP16_FLOOR, FP16_HEADROOM = 1e-2, 4.0
INT8_FLOOR, INT8_HEADROOM = 5e-2, 2.0
# Largest tolerance that still tells a good engine from a broken one on P(abnormal) in 0..1.
FP16_CEILING, INT8_CEILING = 5e-2, 0.15
AGREEMENT_RULE = (
    "decisions at decision_threshold must agree with fp32_outputs on every image whose fp32 P(abnormal) "
    "is more than tolerance[precision] away from decision_threshold"
)


def golden_tolerances(config: GoldenConfig, measured: dict[str, ParityResult]) -> dict[str, float]:
    """Per-precision max abs difference allowed against ``fp32_outputs``.

    ExportError when ONNX Runtime's own FP16 or Q/DQ outputs differ from FP32
    by more than that precision's ceiling.
    """
    tolerance = {"fp32": config.fp32_tolerance}
    rules = {
        "fp16": (FP16_FLOOR, FP16_HEADROOM, FP16_CEILING),
        "int8": (INT8_FLOOR, INT8_HEADROOM, INT8_CEILING),
    }
    for precision, (floor, headroom, ceiling) in rules.items():
        if precision not in measured:
            continue
        diff = measured[precision].max_abs_diff
        if diff > ceiling:
            raise ExportError(
                f"the {precision.upper()} model's own ONNX Runtime outputs differ from FP32 by up to {diff:.3g} "
                f"on the golden set, more than the {ceiling:g} a golden self-test can accept; this variant "
                "would mislead the Jetson's self-test. "
                + (
                    "Calibrate on more images (--calib-size) or another --calib-method, or leave INT8 out "
                    "(--precisions fp32,fp16)."
                    if precision == "int8"
                    else "Leave FP16 out (--precisions fp32,int8) and report the model's FP16 overflow."
                )
            )
        tolerance[precision] = min(ceiling, max(floor, headroom * diff))
    return {k: float(f"{v:.3g}") for k, v in tolerance.items()}


def write_golden(
    folder: Path,
    images: np.ndarray,
    chosen: list[LabelledImage],
    info: ModelInfo,
    contract: PreprocessContract,
    fp32_outputs: np.ndarray,
    tolerance: dict[str, float],
    ort_reference: dict[str, dict[str, Any]],
    held_out: HeldOutSplit | None = None,
) -> tuple[Path, Path]:
    """Write ``images.npy`` and ``golden.json`` atomically.

    ``held_out``: the run's test split (:meth:`export.run_folder.RunFolder.held_out`); every
    golden image must be one of its files. Without it only the images' own ``split`` fields
    are checked, and a data folder scanned as "test" passes whatever it holds.
    """
    for image in chosen:
        if image.split != "test" or (held_out is not None and not held_out.is_test_file(image.path)):
            where = f"the test split of {held_out.source}" if held_out is not None else "the test split"
            raise ExportError(
                f"{image.path}: chosen for the golden set but not in {where}; golden images must be test "
                "images the model never trained on, or the Jetson's self-test is judged on training data. "
                "Draw them from the run's split.json test list (RunFolder.split_images('test'))"
            )
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    data = buffer.getvalue()
    meta = {
        "schema": GOLDEN_SCHEMA,
        "split": "test",
        "n": len(chosen),
        "labels": list(info.labels),
        "files": [image.ref or image.path.as_posix() for image in chosen],
        "true_labels": [image.label for image in chosen],
        "fp32_outputs": np.asarray(fp32_outputs, dtype=np.float64).round(8).tolist(),
        "fp32_probabilities": abnormal_probability(fp32_outputs, info).astype(np.float64).round(8).tolist(),
        "reference": "model.onnx (fp32) on onnxruntime cpu",
        "decision_threshold": info.threshold,
        "head": info.head,
        "tolerance": tolerance,
        "agreement_rule": AGREEMENT_RULE,
        "ort_reference": ort_reference,
        "model_version": info.model_version,
        "contract": contract.to_dict(),
        "images_file": IMAGES_FILE,
        "images_sha256": sha256_bytes(data),
        "shape": list(images.shape),
        "dtype": "uint8",
        "layout": "NHWC",
    }
    images_path, meta_path = folder / IMAGES_FILE, folder / META_FILE
    atomic_write_bytes(images_path, data)
    atomic_write_json(meta_path, meta)
    return images_path, meta_path


def golden_check(
    outputs: np.ndarray, meta: dict[str, Any], precision: str, info: ModelInfo
) -> dict[str, Any]:
    """golden.json's rule applied to ``outputs`` of one precision: the very rule the Jetson self-test applies."""
    comparison = compare_golden(outputs, GoldenSet.from_meta(meta), info, precision)
    return {
        "precision": precision,
        "max_abs_diff": comparison.max_abs_diff,
        "tolerance": comparison.tolerance,
        "clear_images": comparison.clear_images,
        "clear_decisions_flipped": len(comparison.flipped_outside_tolerance),
        "passed": comparison.passed,
    }
