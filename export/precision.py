"""Reduced-precision ONNX graphs: a typed FP16 graph and an INT8 Q/DQ graph, both uint8 in, float32 out.

* FP16: onnxconverter-common's converter with ``keep_io_types``, plus one fix:
  it retypes the value after the input ``Cast`` to float16 but leaves the
  Cast's ``to`` attribute at float32, which ONNX Runtime rejects ("Type
  (tensor(float16)) of output arg (Cast:0) ... does not match expected type"),
  so :func:`_retype_casts` makes every such Cast produce float16.
* INT8: ONNX Runtime's ``quantize_static`` in QDQ format with the options
  NVIDIA Model Optimizer uses for TensorRT (modelopt/onnx/quantization/
  ort_utils.py ``trt_guided_options``): symmetric int8 activations and
  weights, per-channel weights, biases left in float (TensorRT rejects int32
  ``DequantizeLinear`` on biases: onnx-tensorrt issue 850, onnxruntime issue
  17738), Q/DQ on the inputs of Conv/MatMul/Gemm only. The uint8 graph input
  and its Cast are never quantized. Calibration reads the training-split
  calibration set batch by batch (``CalibStridedMinMax``), so memory holds one
  batch of activations, not all 512 images'.

The same Q/DQ graph runs on ONNX Runtime's CPU INT8 path here (CI measures
its accuracy) and is what TensorRT builds an INT8 engine from on the Jetson.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.calibration import iter_batches
from export.config import AUTO_CALIBRATE_METHODS, QuantConfig
from export.errors import CalibrationError, ConversionError

_CALIBRATE_METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}


def fp16_from_onnx(source: Path, output: Path) -> Path:
    """Write a typed FP16 graph of ``source``: uint8 input, float16 weights and math, float32 output."""
    import onnx
    from onnxconverter_common import float16

    from export.onnx_from_keras import save_onnx

    model = onnx.load(str(source))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        _retype_casts(converted)
        onnx.checker.check_model(converted, full_check=True)
    except (ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"{source}: FP16 conversion failed ({exc})") from exc
    return save_onnx(converted, output)


def _retype_casts(model: Any) -> None:
    """Make each ``Cast(to=float)`` whose output the converter typed float16 actually produce float16."""
    from onnx import TensorProto

    typed = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    for node in model.graph.node:
        if node.op_type != "Cast" or typed.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16


class BatchReader:
    """ONNX Runtime calibration data reader over a uint8 NHWC array.

    Duck-typed (ORT's ``CalibrationDataReader`` checks for ``get_next``);
    ``__len__`` and ``set_range`` let ``quantize_static`` collect statistics one
    stride of batches at a time.
    """

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._input_name = input_name
        self._batches = list(iter_batches(images, batch_size))
        self._position = 0
        self._end = len(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._position, self._end = start_index, min(end_index, len(self._batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= self._end:
            return None
        batch = self._batches[self._position]
        self._position += 1
        return {self._input_name: batch}

    def rewind(self) -> None:
        self._position, self._end = 0, len(self._batches)


def quantization_options(config: QuantConfig) -> dict[str, Any]:
    """The ``extra_options`` given to ``quantize_static`` (recorded in the export report)."""
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        # Float weights behind Q->DQ, folded by TensorRT at build time (as Model Optimizer does).
        "AddQDQPairToWeight": True,
        # Inputs only: TensorRT fuses an input Q/DQ pair into the conv and keeps its output in int8 itself.
        "OpTypesToExcludeOutputQuantization": list(config.op_types),
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1, "MatMul": 1},
        "DedicatedQDQPair": False,
        "CalibStridedMinMax": 1,
    }


def int8_qdq_from_onnx(
    source: Path,
    output: Path,
    calibration: np.ndarray,
    config: QuantConfig,
    ranges: Path | None = None,
) -> dict[str, Any]:
    """Write an INT8 Q/DQ graph of ``source`` calibrated on ``calibration`` (uint8 NHWC, training split).

    Returns the quantization settings used. Refuses to run without real
    calibration images: random scales give an engine that looks fine and is not.
    ``ranges``: a JSON file of activation ranges (ONNX Runtime's calibration cache)
    for exactly this ``source``, ``calibration`` and method; read when it exists,
    written when it does not (see :class:`export.mixed_precision.RangeCache`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_from_keras import save_onnx

    model = onnx.load(str(source), load_external_data=False)
    graph_input = model.graph.input[0]
    _check_calibration(calibration, graph_input, source)
    options = quantization_options(config)
    # One graph has one method; "auto" chooses between graphs (export/mixed_precision.py) and starts here.
    method = AUTO_CALIBRATE_METHODS[0] if config.calibrate_method == "auto" else config.calibrate_method
    with prepared_model(source) as prepared:
        quantized = prepared.with_name("quantized.onnx")
        excluded = excluded_nodes(onnx.load(str(prepared)), config)
        # quantize_static prints calibration progress on stdout; stdout is reserved for --json.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                quantize_static(
                    str(prepared),
                    str(quantized),
                    BatchReader(graph_input.name, calibration, config.batch_size),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types),
                    nodes_to_exclude=excluded,
                    per_channel=config.per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, _CALIBRATE_METHODS[method]),
                    extra_options=options,
                    **({} if ranges is None else {"calibration_cache_path": str(ranges)}),
                )
            except (ValueError, RuntimeError, TypeError) as exc:
                raise ConversionError(f"{source}: INT8 quantization failed ({exc})") from exc
        result = onnx.load(str(quantized))
    del result.metadata_props[:]
    result.metadata_props.extend(model.metadata_props)
    entry = result.metadata_props.add()
    entry.key, entry.value = "pneumo.precision", "int8-qdq"
    onnx.checker.check_model(result, full_check=True)
    save_onnx(result, output)
    return {
        "format": "QDQ",
        "activation_type": "int8 symmetric",
        "weight_type": "int8 symmetric" + (" per-channel" if config.per_channel else ""),
        "calibrate_method": method,
        "calibration_batch": config.batch_size,
        "op_types": list(config.op_types),
        "nodes_kept_in_float": excluded,
        "extra_options": options,
    }


@contextlib.contextmanager
def prepared_model(source: Path) -> Iterator[Path]:
    """``source`` after ONNX Runtime's quantization pre-processing, in a temporary folder.

    Shape inference + constant folding first, as ONNX Runtime's quantization
    guide asks: tensors of unknown shape are not quantized.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pneumo-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        yield prepared


def excluded_nodes(model: Any, config: QuantConfig) -> list[str]:
    """Names of the layers kept in float: the first conv and/or the head when asked, and ``float_nodes``."""
    quantizable = [n for n in model.graph.node if n.op_type in config.op_types]
    excluded = list(config.float_nodes)
    if config.keep_first_layer and quantizable:
        excluded.append(quantizable[0].name)
    if config.keep_head and quantizable and quantizable[-1].op_type in ("MatMul", "Gemm"):
        excluded.append(quantizable[-1].name)
    return sorted(set(excluded))


def _check_calibration(calibration: np.ndarray | None, graph_input: Any, source: Path) -> None:
    if calibration is None or len(calibration) == 0:
        raise CalibrationError(
            f"{source}: INT8 needs real calibration images; make them with 'pneumo export calib RUN' "
            "(training split, class-balanced) instead of letting a tool pick random scales"
        )
    expected = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:])
    if calibration.dtype != np.uint8 or calibration.ndim != 4 or tuple(calibration.shape[1:]) != expected:
        raise CalibrationError(
            f"calibration images are {calibration.dtype} {calibration.shape}, the model takes uint8 (N, "
            f"{', '.join(map(str, expected))}); rebuild them with this model's contract"
        )


def qdq_summary(path: Path) -> dict[str, Any]:
    """What the Q/DQ graph contains: node counts, zero-point types and values, the input's fate."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points = [
        numpy_helper.to_array(initializers[n.input[2]])
        for n in (*q_nodes, *dq_nodes)
        if len(n.input) > 2 and n.input[2] in initializers
    ]
    dequantized = {n.output[0] for n in dq_nodes}
    input_name = model.graph.input[0].name
    consumers = [n.op_type for n in model.graph.node if input_name in n.input]
    return {
        "quantize_linear": len(q_nodes),
        "dequantize_linear": len(dq_nodes),
        "zero_point_dtypes": sorted({z.dtype.name for z in zero_points}),
        "zero_points_all_zero": bool(zero_points) and all(not np.any(z) for z in zero_points),
        "input_dtype": onnx.helper.tensor_dtype_to_np_dtype(
            model.graph.input[0].type.tensor_type.elem_type
        ).name,
        "input_consumers": consumers,
        "quantized_ops": sorted(
            {
                n.op_type
                for n in model.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                and dequantized.intersection(n.input)
            }
        ),
    }
