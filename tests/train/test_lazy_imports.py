"""Importing train's configuration, model registry and evaluation loads no TensorFlow: `--help` and config checks stay fast."""

from __future__ import annotations

from tests.edge_runtime.test_lean import _loaded_after


def test_train_config_models_and_evaluate_import_no_tensorflow() -> None:
    body = "import train.config, train.models, train.evaluate, train.data, train.sweep"
    assert _loaded_after(body, ("tensorflow", "keras", "tf2onnx")) == []
