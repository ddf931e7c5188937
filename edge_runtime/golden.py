"""The golden set: the one rule that says whether a backend still computes the exported model.

``pneumo export bundle`` runs real test images through the FP32 ONNX model and
writes them with its outputs to ``golden/`` (``images.npy`` + ``golden.json``,
with a tolerance per precision). Export applies this rule to its own ONNX
Runtime outputs; ``pneumo edge build`` applies it to every engine on the
device. One rule, here, so the two can never drift apart:

* the largest absolute output difference from the FP32 reference is within
  the precision's tolerance, and
* no decision flips on an image whose reference probability lies further
  than that tolerance from the threshold (a flip right at the threshold is
  rounding, not a broken engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import Backend
from edge_runtime.contract import ModelInfo
from edge_runtime.errors import BundleError
from edge_runtime.fileio import read_json, sha256_file
from edge_runtime.predictor import abnormal_probability, predicted_labels

IMAGES_FILE = "images.npy"
META_FILE = "golden.json"


@dataclass(frozen=True)
class GoldenSet:
    """The golden images and the FP32 outputs export measured on them."""

    images: np.ndarray
    files: list[str]
    true_labels: list[Any]
    fp32_outputs: np.ndarray
    tolerance: dict[str, float]
    decision_threshold: float

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], images: np.ndarray | None = None, default_threshold: float | None = None
    ) -> GoldenSet:
        """From golden.json's content (KeyError/TypeError/ValueError when a field is malformed)."""
        outputs = np.asarray(meta["fp32_outputs"], dtype=np.float32)
        n = len(outputs)
        threshold = meta.get("decision_threshold", default_threshold)
        if threshold is None:
            raise KeyError("decision_threshold")
        return cls(
            images=images if images is not None else np.zeros((n, 0), np.uint8),
            files=list(meta.get("files") or [f"golden[{i}]" for i in range(n)]),
            true_labels=list(meta.get("true_labels") or []),
            fp32_outputs=outputs.reshape(n, -1),
            tolerance={str(k): float(v) for k, v in meta["tolerance"].items()},
            decision_threshold=float(threshold),
        )

    @classmethod
    def load(cls, folder: Path, input_shape: tuple[int, ...], default_threshold: float) -> GoldenSet:
        """Read ``folder`` (a bundle's ``golden/``), checking the images against their recorded hash and shape."""
        images_path, meta_path = folder / IMAGES_FILE, folder / META_FILE
        if not images_path.is_file() or not meta_path.is_file():
            raise BundleError(
                f"{folder}: the bundle has no golden set ({IMAGES_FILE} + {META_FILE}), so it cannot be "
                "self-tested; re-run 'pneumo export bundle'"
            )
        try:
            meta = read_json(meta_path)
            recorded = meta.get("images_sha256")
            if recorded is not None and recorded != sha256_file(images_path):
                raise BundleError(
                    f"{images_path}: sha256 does not match the images_sha256 in {META_FILE}; re-copy the bundle"
                )
            golden = cls.from_meta(meta, np.load(images_path, allow_pickle=False), default_threshold)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(
                f"{folder}: malformed golden set ({type(exc).__name__}: {exc}); re-run 'pneumo export bundle'"
            ) from exc
        images = golden.images
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
            raise BundleError(
                f"{images_path}: golden images are {images.dtype} {images.shape}, the contract says uint8 "
                f"(N, {', '.join(map(str, input_shape))}); re-run 'pneumo export bundle'"
            )
        if len(golden.fp32_outputs) != len(images):
            raise BundleError(
                f"{meta_path}: {len(golden.fp32_outputs)} fp32_outputs for {len(images)} golden images; "
                "re-run 'pneumo export bundle'"
            )
        return golden


@dataclass
class GoldenComparison:
    """One backend's outputs on the golden set against the FP32 reference."""

    precision: str
    n: int
    max_abs_diff: float
    tolerance: float
    decision_agreement: float
    #: images whose reference lies further than the tolerance from the threshold: their decisions must hold
    clear_images: int
    flipped: list[str]
    flipped_outside_tolerance: list[str]
    accuracy: float | None

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and not self.flipped_outside_tolerance

    def failure(self, shown: int = 5) -> str | None:
        """Why it failed, in words (None when it passed), naming at most ``shown`` flipped files."""
        if self.passed:
            return None
        reasons = []
        if self.max_abs_diff > self.tolerance:
            reasons.append(f"max |diff| {self.max_abs_diff:.3g} > tolerance {self.tolerance:.3g}")
        flipped = list(self.flipped_outside_tolerance)
        if flipped:
            more = f" and {len(flipped) - shown} more" if len(flipped) > shown else ""
            reasons.append(f"decisions flipped on {', '.join(flipped[:shown])}{more}")
        return "; ".join(reasons)


def compare_golden(
    outputs: np.ndarray, golden: GoldenSet, info: ModelInfo, precision: str
) -> GoldenComparison:
    """The golden rule (module docstring) applied to ``outputs`` of one precision."""
    outputs = np.asarray(outputs, dtype=np.float32).reshape(golden.fp32_outputs.shape)
    tolerance = golden.tolerance.get(precision)
    if tolerance is None:
        raise BundleError(
            f"{META_FILE} has no tolerance for {precision} (it has {sorted(golden.tolerance)}); "
            "re-run 'pneumo export bundle' with that precision"
        )
    diff = float(np.max(np.abs(outputs - golden.fp32_outputs))) if outputs.size else 0.0
    threshold = golden.decision_threshold
    prob, ref_prob = abnormal_probability(outputs, info), abnormal_probability(golden.fp32_outputs, info)
    decision, ref_decision = prob >= threshold, ref_prob >= threshold
    flipped = [golden.files[i] for i in np.flatnonzero(decision != ref_decision)]
    clear = np.abs(ref_prob - threshold) > tolerance
    flipped_far = [golden.files[i] for i in np.flatnonzero((decision != ref_decision) & clear)]
    accuracy = None
    if len(golden.true_labels) == len(outputs) and len(outputs):
        labels = predicted_labels(outputs, info)
        truth = [info.labels[t] if isinstance(t, int) else str(t) for t in golden.true_labels]
        accuracy = float(np.mean([p == t for p, t in zip(labels, truth)]))
    return GoldenComparison(
        precision=precision,
        n=len(outputs),
        max_abs_diff=diff,
        tolerance=tolerance,
        decision_agreement=float(np.mean(decision == ref_decision)) if len(outputs) else 1.0,
        clear_images=int(clear.sum()),
        flipped=flipped,
        flipped_outside_tolerance=flipped_far,
        accuracy=accuracy,
    )


def run_golden(backend: Backend, golden: GoldenSet) -> np.ndarray:
    """All golden images through an opened backend, in batches it accepts."""
    step = max(1, min(backend.max_batch, 64))
    chunks = [backend.infer(golden.images[i : i + step]) for i in range(0, len(golden.images), step)]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros_like(golden.fp32_outputs)
