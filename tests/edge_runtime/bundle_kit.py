"""Complete tiny bundles for the edge tests: FP16 and Q/DQ variants, a calibration set and a golden set.

Built on tests/conftest.py's :func:`make_tiny_onnx` (a real ONNX model run by
ONNX Runtime): the FP16 variant is a genuinely typed float16 graph and the
INT8 variant has real QuantizeLinear / DequantizeLinear nodes, so every
precision runs for real on ONNX Runtime CPU. The golden FP32 outputs are
computed here with ONNX Runtime, as the export stage does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import write_manifest

SIZE = 32


def _tiny_graph(path: Path, dtype: str) -> Path:
    """make_tiny_onnx's function in float16 ('fp16') or with a Q/DQ pair on the scaled input ('int8')."""
    import onnx
    from onnx import TensorProto, helper

    compute = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    np_type = np.float16 if dtype == "fp16" else np.float32

    def const(name: str, value: float) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(np.array(value, dtype=np_type), name)

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=compute),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
    ]
    reduce_input = "xs"
    inits = [const("scale", 1 / 255), const("half", 0.5), const("gain", 8.0)]
    if dtype == "int8":
        nodes += [
            helper.make_node("QuantizeLinear", ["xs", "q_scale", "q_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "q_scale", "q_zero"], ["xdq"]),
        ]
        inits += [
            onnx.numpy_helper.from_array(np.array(1 / 127, np.float32), "q_scale"),
            onnx.numpy_helper.from_array(np.array(0, np.int8), "q_zero"),
        ]
        reduce_input = "xdq"
    nodes += [
        helper.make_node("ReduceMean", [reduce_input, "axes"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["logit"]),
        helper.make_node("Unsqueeze", ["logit", "one"], ["logit2"]),
        helper.make_node("Sigmoid", ["logit2"], ["p_low"]),
        helper.make_node("Cast", ["p_low"], ["probability"], to=TensorProto.FLOAT),
    ]
    inits += [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    return _save_classifier(path, f"tiny_{dtype}", nodes, inits, SIZE)


def images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 32, 32, 1) images of spread brightness: dark ones NORMAL, bright ones PNEUMONIA."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(20, 235, n)
    base = levels[:, None, None, None] + rng.normal(0, 12, (n, SIZE, SIZE, 1))
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def true_labels(n: int) -> list[str]:
    """The labels :func:`images` draws from, by brightness level alone (not by any model's output)."""
    return ["PNEUMONIA" if level >= 127.5 else "NORMAL" for level in np.linspace(20, 235, n)]


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": batch})[0], dtype=np.float32)


def complete_bundle(
    root: Path, golden_n: int = 24, calib_n: int = 24, tolerance: dict[str, float] | None = None
) -> Path:
    """Add the FP16 / Q/DQ variants, calibration and golden sets to a tiny bundle, then re-hash it."""
    _tiny_graph(root / "model_fp16.onnx", "fp16")
    _tiny_graph(root / "model_int8_qdq.onnx", "int8")
    (root / "calibration").mkdir(exist_ok=True)
    np.save(root / "calibration" / "calib.npy", images(calib_n, seed=1))
    (root / "calibration" / "calib.json").write_text(json.dumps({"images": calib_n, "split": "train"}))
    golden = images(golden_n, seed=2)
    (root / "golden").mkdir(exist_ok=True)
    np.save(root / "golden" / "images.npy", golden)
    outputs = run_onnx(root / "model.onnx", golden)
    meta = {
        "files": [f"golden_{i:02d}.png" for i in range(golden_n)],
        "true_labels": true_labels(golden_n),
        "fp32_outputs": outputs.tolist(),
        "tolerance": tolerance or {"fp32": 1e-5, "fp16": 5e-3, "int8": 5e-2},
        "decision_threshold": 0.5,
    }
    (root / "golden" / "golden.json").write_text(json.dumps(meta))
    write_manifest(root)
    return root


def nan_for_dark_onnx(path: Path) -> Path:
    """A real ONNX model: sqrt(mean(x / 255) - 0.5), so NaN for dark images and finite for bright ones."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("ReduceMean", ["xs", "axes"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["root"]),
        helper.make_node("Unsqueeze", ["root", "one"], ["probability"]),
    ]
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    return _save_classifier(path, "nan_for_dark", nodes, inits, 8)


def fails_at_run_onnx(path: Path, size: int = SIZE) -> Path:
    """A real ONNX model that loads but fails on every run: a Reshape no image size divides.

    Stands for a device that breaks after startup (a GPU fault, a driver error): ONNX Runtime
    raises its own error from ``session.run``, not at load, since the batch size is symbolic.
    """
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["xf", "shape"], ["rows"]),
        helper.make_node("ReduceMean", ["rows", "axes"], ["probability"], keepdims=1),
    ]
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    return _save_classifier(path, "fails_at_run", nodes, inits, size)


def _save_classifier(path: Path, name: str, nodes: list[Any], inits: list[Any], size: int) -> Path:
    """Save a uint8 (N, size, size, 1) -> float (N, 1) graph as the bundle models are, checked."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 1])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
