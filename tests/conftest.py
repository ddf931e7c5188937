"""Shared fixtures: the real data set when present, tiny generated images otherwise.

Markers (pyproject): slow, tf, data, gpu, trt. GPU and TensorRT tests skip
with a reason where the hardware or library is absent; they are never
reported as passed there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("PNEUMO_DATA", REPO.parent / "shared" / "data" / "chest_xray"))


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    require_trt = os.environ.get("PNEUMO_REQUIRE_TRT") == "1"
    for item in items:
        # Markers, not item.keywords: keywords also hold parametrize ids, so a case named "data" or "tf"
        # would be taken for the marker.
        marks = {mark.name for mark in item.iter_markers()}
        if "tf" in marks and not has_module("tensorflow"):
            item.add_marker(
                pytest.mark.skip(reason="TensorFlow not installed (pip install 'pneumo-edge[train]')")
            )
        if "trt" in marks and not has_module("tensorrt"):
            if require_trt:
                # make test-trt exists to prove TensorRT works: without it the run fails, never "passes".
                raise pytest.UsageError(
                    f"{item.nodeid}: PNEUMO_REQUIRE_TRT=1 but TensorRT is not importable in this Python; "
                    "run it in the --system-site-packages venv that sees JetPack's TensorRT (deploy/JETSON.md, "
                    "step 6), or drop PNEUMO_REQUIRE_TRT to skip the TensorRT tests"
                )
            item.add_marker(
                pytest.mark.skip(reason="TensorRT not installed (runs under make test-trt on a Jetson)")
            )
        if "data" in marks and not (REAL_DATA / "test").is_dir():
            item.add_marker(pytest.mark.skip(reason=f"real data set not found at {REAL_DATA}"))


def skip_or_fail_when_required(reason: str) -> None:
    """Skip a GPU/TensorRT test whose hardware is absent, unless PNEUMO_REQUIRE_TRT=1 (make test-trt) asks for it."""
    if os.environ.get("PNEUMO_REQUIRE_TRT") == "1":
        pytest.fail(f"PNEUMO_REQUIRE_TRT=1: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "test").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA}")
    return REAL_DATA


def write_image(path: Path, image: np.ndarray, ext: str | None = None) -> Path:
    """Encode ``image`` with OpenCV; ``ext`` forces the encoding whatever the file name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext or path.suffix, image)
    assert ok, f"could not encode {path}"
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def gray_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (300, 340), dtype=np.uint8), (9, 9), 3)
    return base


def make_tiny_onnx(path: Path, height: int = 32, width: int = 32, channels: int = 1, opset: int = 18) -> Path:
    """A real ONNX classifier with the bundle's input convention, built without TensorFlow.

    uint8 NHWC in -> Cast -> x/255 -> mean over H, W, C -> (m - 0.5) * 8 -> Sigmoid -> (N, 1).
    Bright images score high, dark ones low, so tests can predict the label.
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("ReduceMean", ["xs", "axes"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["logit"]),
        helper.make_node("Unsqueeze", ["logit", "one"], ["logit2"]),
        helper.make_node("Sigmoid", ["logit2"], ["probability"]),
    ]
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", height, width, channels])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A complete, verified deployment bundle around :func:`make_tiny_onnx` (no TensorFlow)."""
    pytest.importorskip("onnx")
    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo, PreprocessContract

    root = tmp_path / "bundle"
    make_tiny_onnx(root / "model.onnx")
    PreprocessContract(height=32, width=32).save(root)
    ModelInfo(model_version="tiny-test-1", arch="tiny", threshold=0.5, synthetic=True).save(root)
    (root / "model_card.json").write_text('{"arch": "tiny", "synthetic": true}\n')
    write_manifest(root)
    return root
