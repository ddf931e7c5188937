"""FP16 typed graph and INT8 Q/DQ graph: they run on ONNX Runtime CPU, keep uint8 in / float32 out,
and the Q/DQ graph is symmetric int8 the way TensorRT's explicit quantization needs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.config import QuantConfig
from export.errors import CalibrationError
from export.onnx_from_keras import graph_summary
from export.parity import onnx_outputs
from export.precision import BatchReader, fp16_from_onnx, int8_qdq_from_onnx, qdq_summary
from export.run_folder import RunFolder, load_images, parity_images_for
from tests.export.conftest import TinyRun

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def probe(tiny_run: TinyRun) -> np.ndarray:
    run = RunFolder.resolve(tiny_run.folder)
    images, _ = parity_images_for(run, 32, None)
    return load_images(images, run.contract)


def test_fp16_runs_on_ort_cpu_with_uint8_in_float32_out(
    tiny_onnx: Path, probe: np.ndarray, tmp_path: Path
) -> None:
    import onnx

    path = fp16_from_onnx(tiny_onnx, tmp_path / "model_fp16.onnx")
    graph = graph_summary(path)
    assert graph["input"]["dtype"] == "uint8" and graph["output"]["dtype"] == "float32"
    model = onnx.load(str(path))
    float_inits = {i.data_type for i in model.graph.initializer} & {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
    }
    assert float_inits == {onnx.TensorProto.FLOAT16}, "weights must be stored as float16"
    fp32, fp16 = onnx_outputs(tiny_onnx, probe), onnx_outputs(path, probe, precision="fp16")
    assert fp16.dtype == np.float32 and fp16.shape == fp32.shape
    diff = float(np.abs(fp32 - fp16).max())
    assert 0 < diff < 1e-2, f"FP16 vs FP32 max abs diff {diff}"
    assert onnx_outputs(path, probe[:1], precision="fp16").shape == (1, 1)


def test_int8_qdq_is_symmetric_int8_and_runs(
    tiny_onnx: Path, probe: np.ndarray, calibration: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "model_int8_qdq.onnx"
    settings = int8_qdq_from_onnx(tiny_onnx, path, calibration, QuantConfig())
    summary = qdq_summary(path)
    assert summary["quantize_linear"] > 0 and summary["dequantize_linear"] > 0
    assert summary["zero_point_dtypes"] == ["int8"] and summary["zero_points_all_zero"]
    assert summary["input_dtype"] == "uint8" and summary["input_consumers"] == ["Cast"]
    assert "Conv" in summary["quantized_ops"] and {"MatMul", "Gemm"} & set(summary["quantized_ops"])
    assert settings["extra_options"]["ActivationSymmetric"] and not settings["extra_options"]["QuantizeBias"]
    assert len(settings["nodes_kept_in_float"]) == 1, "the first conv stays in float by default"

    import onnx

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    dq_inputs = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert not [
        name
        for name in dq_inputs
        if name in initializers and initializers[name].data_type == onnx.TensorProto.INT32
    ], "no int32 bias DequantizeLinear: TensorRT rejects them"
    fp32, int8 = onnx_outputs(tiny_onnx, probe), onnx_outputs(path, probe, precision="int8")
    assert int8.shape == fp32.shape and np.all(np.isfinite(int8))
    assert 0 < float(np.abs(fp32 - int8).max()) < 0.1
    assert float(np.mean((fp32 >= 0.5) == (int8 >= 0.5))) >= 0.9


def test_int8_refuses_without_real_calibration(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="INT8 needs real calibration images"):
        int8_qdq_from_onnx(tiny_onnx, tmp_path / "q.onnx", np.zeros((0, 32, 32, 1), np.uint8), QuantConfig())
    with pytest.raises(CalibrationError, match="the model takes uint8"):
        int8_qdq_from_onnx(
            tiny_onnx, tmp_path / "q.onnx", np.zeros((4, 32, 32, 1), np.float32), QuantConfig()
        )
    assert not (tmp_path / "q.onnx").exists()


def test_batch_reader_strides_over_every_image() -> None:
    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    reader = BatchReader("image", images, batch_size=4)
    assert len(reader) == 3
    seen = []
    for start in range(len(reader)):
        reader.set_range(start, start + 1)
        while (item := reader.get_next()) is not None:
            seen.append(item["image"])
    assert [len(b) for b in seen] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(seen), images)
