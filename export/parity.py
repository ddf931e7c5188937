"""Output parity between a reference and an exported graph: max abs difference and decision agreement.

Every export step compares what it produced with what it came from, on real
preprocessed images: ONNX FP32 vs Keras (fails above 1e-4), FP16 and INT8
Q/DQ vs ONNX FP32 (recorded; FP16 has a sanity bound, INT8 is judged on
test-split sensitivity in :mod:`export.accuracy`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.contract import ModelInfo
from edge_runtime.predictor import abnormal_probability
from export.errors import ParityError


@dataclass(frozen=True)
class ParityResult:
    """How closely ``candidate`` reproduces ``reference`` on ``n_images`` images."""

    reference: str
    candidate: str
    images: str
    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    decision_agreement: float
    decisions_differ: int
    threshold: float
    tolerance: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        bound = f" (tolerance {self.tolerance:.0e})" if self.tolerance is not None else ""
        return (
            f"max|diff| {self.max_abs_diff:.2e}{bound}, decisions agree {100 * self.decision_agreement:.1f}% "
            f"on {self.n_images} images"
        )


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    info: ModelInfo,
    *,
    reference_name: str,
    candidate_name: str,
    images: str,
    tolerance: float | None = None,
) -> ParityResult:
    """Compare raw model outputs (N, K) elementwise and the decisions they give at the model's threshold."""
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        raise ParityError(
            f"{candidate_name} gives outputs of shape {candidate.shape}, {reference_name} {reference.shape}"
        )
    if not np.all(np.isfinite(candidate)):
        raise ParityError(f"{candidate_name} produced NaN or infinite outputs; the exported graph is broken")
    diff = np.abs(reference - candidate)
    ref_decision = abnormal_probability(reference, info) >= info.threshold
    cand_decision = abnormal_probability(candidate, info) >= info.threshold
    differ = int(np.count_nonzero(ref_decision != cand_decision))
    max_diff = float(diff.max()) if diff.size else 0.0
    return ParityResult(
        reference=reference_name,
        candidate=candidate_name,
        images=images,
        n_images=len(reference),
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        decision_agreement=1.0 - differ / max(1, len(reference)),
        decisions_differ=differ,
        threshold=info.threshold,
        tolerance=tolerance,
        passed=tolerance is None or max_diff <= tolerance,
    )


def require_parity(result: ParityResult, path: Path) -> None:
    """Raise :class:`ParityError` naming the file when ``result`` is outside its tolerance."""
    if not result.passed:
        raise ParityError(
            f"{path}: {result.candidate} differs from {result.reference} by {result.max_abs_diff:.3e} "
            f"(tolerance {result.tolerance:.0e}) on {result.n_images} {result.images} images; "
            f"{result.decisions_differ} decisions changed. The conversion is not faithful: check the tf2onnx/"
            "onnx versions in pyproject.toml, or re-run with --no-simplify"
        )


def onnx_outputs(
    model_path: Path, batch: np.ndarray, batch_size: int = 32, precision: str = "fp32"
) -> np.ndarray:
    """Run an ONNX file on ONNX Runtime CPU through the edge runtime's own backend."""
    with OnnxRuntimeBackend(model_path, name="ort-cpu", precision=precision) as backend:
        chunks = [backend.infer(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 1), np.float32)
