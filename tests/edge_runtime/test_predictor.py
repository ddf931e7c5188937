"""From model outputs to results: a NaN or infinite output is an error for that input, never a decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo
from edge_runtime.errors import EdgeError
from edge_runtime.predictor import NonFiniteOutputError, Predictor
from tests.edge_runtime.bundle_kit import nan_for_dark_onnx


def test_nan_output_from_a_real_model_fails_that_input_only(tmp_path: Path) -> None:
    from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

    model = nan_for_dark_onnx(tmp_path / "model.onnx")
    bright = np.full((8, 8, 1), 230, np.uint8)  # sqrt(230 / 255 - 0.5) = 0.634: abnormal at 0.5
    dark = np.full((8, 8, 1), 20, np.uint8)  # sqrt(-0.42) = NaN
    info = ModelInfo(model_version="nan-test", arch="tiny", threshold=0.5)
    with OnnxRuntimeBackend(model) as backend:
        predictor = Predictor(backend, info, "0" * 64)
        with pytest.raises(NonFiniteOutputError) as caught:
            predictor.predict(np.stack([bright, dark, bright]), ["a.png", "dark.png", "c.png"])
    error = caught.value
    assert isinstance(error, EdgeError)
    assert list(error.failed) == ["dark.png"]
    assert "not a finite number (nan)" in error.failed["dark.png"] and "fp32" in error.failed["dark.png"]
    assert str(error).startswith("dark.png: model output is not a finite number")
    assert [r.source for r in error.results] == ["a.png", "c.png"]
    for result in error.results:
        assert result.decision == "abnormal" and abs(result.probability - (230 / 255 - 0.5) ** 0.5) < 1e-5
        json.dumps(result.to_dict(), allow_nan=False)  # the JSONL line stays valid JSON


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sigmoid_and_softmax_outputs_are_refused(bad: float) -> None:
    class Fixed:
        name, precision, max_batch = "fixed", "fp16", 16

    sigmoid = Predictor(Fixed(), ModelInfo(model_version="v", arch="a"), "0" * 64)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteOutputError, match=r"x\.png: .*fp16"):
        sigmoid.wrap(np.array([[bad], [0.2]], np.float32), ["x.png", "y.png"], 1.0)
    softmax_info = ModelInfo(
        model_version="v", arch="a", labels=("NORMAL", "BACTERIA", "VIRUS"), head="softmax"
    )
    softmax = Predictor(Fixed(), softmax_info, "0" * 64)  # type: ignore[arg-type]
    # P(abnormal) = 1 - P(NORMAL) is finite here, but a class probability is not: still refused.
    with pytest.raises(NonFiniteOutputError) as caught:
        softmax.wrap(np.array([[0.5, bad, 0.5], [0.2, 0.3, 0.5]], np.float32), ["x.png", "y.png"], 1.0)
    assert list(caught.value.failed) == ["x.png"] and [r.source for r in caught.value.results] == ["y.png"]
    ok = softmax.wrap(np.array([[0.2, 0.3, 0.5]], np.float32), ["y.png"], 1.0)
    assert ok[0].label == "VIRUS" and ok[0].decision == "abnormal"
