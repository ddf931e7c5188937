"""From model outputs to results a clinician can read.

Every result carries the probability, the threshold, the label, the model
version and its sha256, the backend and the precision that produced it, and
the intended use: decision support, not a diagnosis.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import Backend
from edge_runtime.contract import SYNTHETIC_WARNING, ModelInfo, PreprocessContract
from edge_runtime.errors import EdgeError


def abnormal_probability(outputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """P(abnormal) per image: the sigmoid output, or 1 - P(negative) for softmax heads."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if info.head == "sigmoid":
        return outputs.reshape(-1)
    return 1.0 - outputs.reshape(outputs.shape[0], -1)[:, info.labels.index(info.negative_label)]


def predicted_labels(outputs: np.ndarray, info: ModelInfo) -> list[str]:
    """The label shown: binary decision at the threshold; for softmax the top abnormal class."""
    prob = abnormal_probability(outputs, info)
    if info.head == "sigmoid":
        return [info.positive_label if p >= info.threshold else info.negative_label for p in prob]
    outputs = outputs.reshape(outputs.shape[0], -1)
    negative = info.labels.index(info.negative_label)
    labels = []
    for row, p in zip(outputs, prob):
        if p < info.threshold:
            labels.append(info.negative_label)
        else:
            masked = row.copy()
            masked[negative] = -np.inf
            labels.append(info.labels[int(np.argmax(masked))])
    return labels


@dataclass
class Prediction:
    """One image's result. ``decision`` is 'abnormal' or 'normal' at ``threshold``."""

    source: str
    probability: float
    label: str
    decision: str
    threshold: float
    model_version: str
    model_sha256: str
    backend: str
    precision: str
    latency_ms: float
    timestamp: str = ""
    input_sha256: str = ""
    class_probabilities: dict[str, float] = field(default_factory=dict)
    synthetic: bool = False
    note: str = "Decision support only, not a diagnosis."

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.synthetic:
            data["warning"] = SYNTHETIC_WARNING
        return data


class NonFiniteOutputError(EdgeError):
    """The model gave NaN or infinity for some inputs, so no result can be recorded for them.

    A NaN compares false with the threshold and would be written as a "normal"
    decision (and is not valid JSON), so it is never wrapped as a Prediction.
    ``failed`` maps each such input to its reason; ``results`` holds the
    predictions of the batch's other inputs, so a caller can record those and
    fail only the named inputs.
    """

    def __init__(self, failed: dict[str, str], results: list[Prediction]) -> None:
        first, reason = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more input(s))" if len(failed) > 1 else ""
        super().__init__(f"{first}: {reason}{more}")
        self.failed = failed
        self.results = results


def non_finite_reason(row: np.ndarray, precision: str) -> str:
    """Why one input has no result, and what to try."""
    values = ", ".join(str(float(v)) for v in row.reshape(-1)[:4])
    return (
        f"model output is not a finite number ({values}); no result recorded. The {precision} "
        "arithmetic may have overflowed: run this input with an fp32 backend (--precision fp32); "
        "if it persists the model itself is faulty"
    )


class Predictor:
    """Runs batches through a backend and wraps each output as a :class:`Prediction`."""

    def __init__(self, backend: Backend, info: ModelInfo, model_sha256: str) -> None:
        self.backend = backend
        self.info = info
        self.model_sha256 = model_sha256

    def predict(self, batch: np.ndarray, sources: Sequence[str]) -> list[Prediction]:
        """``batch`` is uint8 NHWC from the contract; split to the backend's max batch."""
        started = time.perf_counter()
        chunks = [
            self.backend.infer(batch[i : i + self.backend.max_batch])
            for i in range(0, len(batch), self.backend.max_batch)
        ]
        outputs = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, self.info.n_outputs), np.float32)
        per_image_ms = (time.perf_counter() - started) * 1000.0 / max(1, len(batch))
        return self.wrap(outputs, sources, per_image_ms)

    def wrap(self, outputs: np.ndarray, sources: Sequence[str], latency_ms: float) -> list[Prediction]:
        """One Prediction per source; raises NonFiniteOutputError if any output is NaN or infinite."""
        outputs = np.asarray(outputs, dtype=np.float32)
        probs = abnormal_probability(outputs, self.info)
        labels = predicted_labels(outputs, self.info)
        rows = outputs.reshape(outputs.shape[0], -1)
        finite = np.isfinite(rows).all(axis=1) & np.isfinite(probs)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        results = []
        failed: dict[str, str] = {}
        for i, source in enumerate(sources):
            if not finite[i]:
                failed[source] = non_finite_reason(rows[i], self.backend.precision)
                continue
            class_probs: dict[str, float] = {}
            if self.info.head == "softmax":
                class_probs = {
                    lab: round(float(v), 6) for lab, v in zip(self.info.labels, outputs[i].reshape(-1))
                }
            results.append(
                Prediction(
                    source=source,
                    probability=round(float(probs[i]), 6),
                    label=labels[i],
                    decision="abnormal" if probs[i] >= self.info.threshold else "normal",
                    threshold=self.info.threshold,
                    model_version=self.info.model_version,
                    model_sha256=self.model_sha256,
                    backend=self.backend.name,
                    precision=self.backend.precision,
                    latency_ms=round(latency_ms, 3),
                    timestamp=now,
                    class_probabilities=class_probs,
                    synthetic=self.info.synthetic,
                )
            )
        if failed:
            raise NonFiniteOutputError(failed, results)
        return results


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    contract: PreprocessContract,
    batch: int,
    workers: int,
    failures: list[tuple[str, str]],
    progress: bool | None = None,
) -> list[Prediction]:
    """What ``pneumo edge predict`` does with files: decoded ahead on ``workers`` threads, in order.

    Full batches of ``batch`` decodable images go to the model; an unreadable file or a non-finite
    output joins ``failures`` as (file, reason). ``progress`` None: a bar on a terminal only.
    """
    from tqdm import tqdm

    from edge_runtime.decode_pool import decode_ahead

    results: list[Prediction] = []
    ready: list[tuple[str, np.ndarray, str]] = []  # name, model input, sha256 of its bytes
    bar = tqdm(
        total=len(files), unit="img", file=sys.stderr, disable=None if progress is None else not progress
    )
    for decoded in decode_ahead(files, contract, workers):
        if decoded.image is None or decoded.sha256 is None:
            failures.append((str(decoded.path), decoded.error or "not decoded"))
            bar.update(1)
        else:
            ready.append((str(decoded.path), decoded.image, decoded.sha256))
        if len(ready) == batch:
            results += _predict_ready(predictor, ready, failures)
            bar.update(len(ready))
            ready = []
    if ready:
        results += _predict_ready(predictor, ready, failures)
        bar.update(len(ready))
    bar.close()
    return results


def _predict_ready(
    predictor: Predictor, ready: Sequence[tuple[str, np.ndarray, str]], failures: list[tuple[str, str]]
) -> list[Prediction]:
    names = [name for name, _, _ in ready]
    try:
        results = predictor.predict(np.stack([image for _, image, _ in ready]), names)
    except NonFiniteOutputError as exc:  # only the inputs it names fail
        results = exc.results
        failures.extend(exc.failed.items())
    digests = {name: digest for name, _, digest in ready}
    for prediction in results:
        prediction.input_sha256 = digests[prediction.source]
    return list(results)
