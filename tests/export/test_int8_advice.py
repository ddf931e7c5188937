"""INT8 calibration when a method cannot run, and what the INT8 sensitivity gate advises.

No TensorFlow: the model is a small ONNX graph built here, quantized by ONNX Runtime's real quantizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.accuracy import require_int8_sensitivity
from export.config import QuantConfig
from export.errors import AccuracyDropError, ConversionError
from export.mixed_precision import int8_qdq_within_target
from export.parity import onnx_outputs

SIZE = 8


def near_constant_onnx(path: Path) -> Path:
    """uint8 (N, 8, 8, 1) -> P(abnormal), through an activation of 1000 + x/1000: near-constant, large.

    The second Conv's input varies by about 1e-3 around 1000, less than 2048 float32 steps there,
    so the percentile histogram (2048 bins) cannot be built ("Too many bins"), as on a
    barely trained model whose activations saturate. MinMax needs no histogram.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["nchw", "scale"], ["xs"]),
        # the first conv is kept in float by default (QuantConfig.keep_first_layer)
        helper.make_node("Conv", ["xs", "w1", "b1"], ["big"]),
        helper.make_node("Conv", ["big", "w2", "b2"], ["centred"]),
        helper.make_node("ReduceMean", ["centred", "axes"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "gain"], ["logit"]),
        helper.make_node("Unsqueeze", ["logit", "one"], ["logit2"]),
        helper.make_node("Sigmoid", ["logit2"], ["probability"]),
    ]
    inits = [
        const("scale", 1 / 255),
        const("w1", np.full((1, 1, 1, 1), 1e-3)),
        const("b1", [1000.0]),
        const("w2", np.ones((1, 1, 1, 1))),
        const("b2", [-1000.0]),
        const("gain", 100.0),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "near_constant",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_auto_calibration_falls_back_to_minmax_when_percentile_cannot_run(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    source = near_constant_onnx(tmp_path / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, (32, SIZE, SIZE, 1), dtype=np.uint8)
    # the failure auto must survive: percentile alone cannot calibrate this graph
    with pytest.raises(ConversionError, match="Too many bins"):
        int8_qdq_within_target(
            source, tmp_path / "p.onnx", images, QuantConfig(calibrate_method="percentile")
        )

    output = tmp_path / "model_int8_qdq.onnx"
    settings = int8_qdq_within_target(source, output, images, QuantConfig())
    assert settings["calibrate_method"] == "minmax"
    auto = settings["auto_calibration"]
    assert list(auto["tried"]) == ["minmax"] and auto["chosen"] == "minmax"
    assert "Too many bins" in auto["failed"]["percentile"]
    # a working graph, close to FP32 on the calibration images
    diff = np.abs(onnx_outputs(output, images, precision="int8") - onnx_outputs(source, images)).max()
    assert diff == settings["calibration_max_diff"] and diff <= QuantConfig().target_max_diff


RESULTS = {"fp32": {"sensitivity": 0.95, "n_images": 600}, "int8": {"sensitivity": 0.92, "n_images": 600}}


@pytest.mark.parametrize(
    ("tried", "advice"),
    [
        (("percentile",), "or try --calib-method minmax (tried: percentile)"),
        (("percentile", "minmax"), "or try --calib-method entropy (tried: percentile, minmax)"),
        (("minmax",), "or try --calib-method percentile (tried: minmax)"),
        (
            ("entropy", "percentile", "minmax"),
            "or keep more layers in float (--int8-max-float-layers, --keep-head; tried: entropy, percentile, minmax)",
        ),
    ],
)
def test_the_gate_never_advises_a_method_already_tried(
    tmp_path: Path, tried: tuple[str, ...], advice: str
) -> None:
    with pytest.raises(AccuracyDropError) as caught:
        require_int8_sensitivity(RESULTS, 2.0, tmp_path / "model_int8_qdq.onnx", tried)
    message = str(caught.value)
    assert message.endswith(advice), message
    for method in tried:
        assert f"--calib-method {method}" not in message
