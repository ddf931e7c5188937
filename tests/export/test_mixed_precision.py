"""Mixed-precision INT8: per-layer sensitivity on the calibration images and the float-layer search,
on the tiny run's real ONNX model with ONNX Runtime's real quantizer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.preprocess import preprocess_file
from export.calibration import build_calibration_set
from export.config import CalibrationConfig, QuantConfig
from export.errors import ExportError
from export.mixed_precision import (
    RangeCache,
    int8_qdq_within_target,
    layer_sensitivity,
    probe_images,
    quantizable_layers,
)
from export.parity import onnx_outputs
from export.precision import qdq_summary
from export.run_folder import read_split
from tests.export.conftest import LABELS, write_data

pytestmark = pytest.mark.tf


def test_every_quantizable_layer_is_ranked_most_sensitive_first(
    tiny_onnx: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    config = replace(QuantConfig(), sensitivity_images=16)
    layers = quantizable_layers(tiny_onnx, config)
    cache = RangeCache(tmp_path / "ranges")
    cache.folder.mkdir()
    ranked = layer_sensitivity(tiny_onnx, tmp_path, calibration, config, cache)
    assert sorted(s.name for s in ranked) == sorted(name for name, _ in layers)
    diffs = [s.max_abs_diff for s in ranked]
    assert diffs == sorted(diffs, reverse=True) and all(d >= 0 for d in diffs)
    assert diffs[0] > 0, "quantizing the most sensitive layer alone must move the outputs"
    # The single-layer graphs were calibrated on the spread probe (its ranges are cached under its
    # bytes), not on the first 16 images, which are all NORMAL in this class-ordered set.
    assert [p.name for p in cache.folder.iterdir()] == [
        cache.path(config, probe_images(calibration, 16)).name
    ]
    assert not cache.path(config, calibration[:16]).exists()


def test_the_sensitivity_probe_spans_the_whole_class_ordered_calibration_set(tmp_path: Path) -> None:
    """Real PNGs of both classes through the real calibration sampler; each probe image's class found by content."""
    root = tmp_path / "data"
    entries = write_data(root)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labels": list(LABELS), "root": str(root), **entries}))
    contract = PreprocessContract(height=32, width=32)
    train = read_split(split, "train", LABELS)
    info = ModelInfo(model_version="probe-test", arch="tiny", synthetic=True)
    calib = build_calibration_set(train, contract, info, CalibrationConfig(size=100))
    label_of = {preprocess_file(image.path, contract).tobytes(): image.label for image in train}
    labels = [label_of[image.tobytes()] for image in calib.images]
    assert labels == ["NORMAL"] * 50 + ["PNEUMONIA"] * 50, "the calibration set is stored class by class"

    probe = probe_images(calib.images, 16)
    probe_labels = [label_of[image.tobytes()] for image in probe]
    assert probe_labels.count("NORMAL") == probe_labels.count("PNEUMONIA") == 8
    rows = [next(i for i, image in enumerate(calib.images) if np.array_equal(image, p)) for p in probe]
    assert rows == sorted(set(rows)) and rows[0] == 0 and rows[-1] >= 100 * 15 // 16
    np.testing.assert_array_equal(probe_images(calib.images, 16), probe)  # deterministic
    assert probe_images(calib.images, 500) is calib.images  # a probe larger than the set is the set


def test_a_missed_target_keeps_the_most_sensitive_layers_in_float(
    tiny_onnx: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    full = QuantConfig()
    # A target no INT8 graph meets: the search keeps up to 2 layers in float and says the target was missed.
    tight = replace(full, target_max_diff=1e-7, max_float_layers=2, sensitivity_images=16)
    settings = int8_qdq_within_target(tiny_onnx, out, calibration, tight)
    mixed = settings["mixed_precision"]
    assert mixed is not None and not mixed["target_met"]
    assert 1 <= len(mixed["float_layers"]) <= 2
    assert mixed["final_max_diff"] <= mixed["initial_max_diff"]
    assert set(mixed["float_layers"]) <= set(settings["nodes_kept_in_float"])
    # The written graph is the chosen one: its measured diff is what the report says.
    reference = onnx_outputs(tiny_onnx, calibration)
    written = float(np.abs(onnx_outputs(out, calibration, precision="int8") - reference).max())
    assert written == pytest.approx(mixed["final_max_diff"], abs=1e-6)
    fully = tmp_path / "full.onnx"
    int8_qdq_within_target(tiny_onnx, fully, calibration, replace(full, target_max_diff=None))
    assert qdq_summary(out)["quantize_linear"] < qdq_summary(fully)["quantize_linear"]


def test_no_search_within_target_or_when_off(
    tiny_onnx: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    loose = int8_qdq_within_target(
        tiny_onnx, tmp_path / "a.onnx", calibration, replace(QuantConfig(), target_max_diff=1.0)
    )
    assert loose["mixed_precision"] is None and 0 < loose["calibration_max_diff"] <= 1.0
    off = int8_qdq_within_target(
        tiny_onnx, tmp_path / "b.onnx", calibration, replace(QuantConfig(), target_max_diff=None)
    )
    assert off["mixed_precision"] is None and "calibration_max_diff" not in off


def test_auto_calibration_tries_minmax_only_when_percentile_misses_and_keeps_the_closer_graph(
    tiny_onnx: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    reference = onnx_outputs(tiny_onnx, calibration)
    out = tmp_path / "auto.onnx"
    # Missed by every method (no float-layer search), so both are tried.
    tight = replace(QuantConfig(), target_max_diff=1e-7, max_float_layers=0)
    settings = int8_qdq_within_target(tiny_onnx, out, calibration, tight)
    tried = settings["auto_calibration"]["tried"]
    assert list(tried) == ["percentile", "minmax"]
    closest = min(tried, key=lambda method: tried[method])
    assert settings["auto_calibration"]["chosen"] == settings["calibrate_method"] == closest
    written = float(np.abs(onnx_outputs(out, calibration, precision="int8") - reference).max())
    assert written == pytest.approx(tried[closest], abs=1e-6)
    # Each method on its own writes the graph auto measured for it.
    for method in tried:
        alone = int8_qdq_within_target(
            tiny_onnx, tmp_path / f"{method}.onnx", calibration, replace(tight, calibrate_method=method)
        )
        assert "auto_calibration" not in alone and alone["calibrate_method"] == method
        assert alone["calibration_max_diff"] == pytest.approx(tried[method], abs=1e-6)

    met = int8_qdq_within_target(
        tiny_onnx, tmp_path / "met.onnx", calibration, replace(QuantConfig(), target_max_diff=1.0)
    )
    assert (
        list(met["auto_calibration"]["tried"]) == ["percentile"] and met["calibrate_method"] == "percentile"
    )


def _graph_tensors(path: Path) -> tuple[list[tuple[str, tuple[str, ...]]], dict[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = [(n.op_type, tuple(n.input)) for n in model.graph.node]
    return nodes, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_reused_ranges_write_the_same_graphs_as_calibrating_each_trial_afresh(
    tiny_onnx: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    # Missed by every method, with a float-layer search and auto: every path that reads the cache runs.
    tight = replace(QuantConfig(), target_max_diff=1e-7, max_float_layers=2, sensitivity_images=16)
    fresh = int8_qdq_within_target(tiny_onnx, tmp_path / "fresh.onnx", calibration, tight, reuse_ranges=False)
    reused = int8_qdq_within_target(tiny_onnx, tmp_path / "reused.onnx", calibration, tight)
    assert list(reused["auto_calibration"]["tried"]) == ["percentile", "minmax"]
    assert reused == fresh  # the same sensitivity ranking, float layers, diffs and settings
    fresh_nodes, fresh_weights = _graph_tensors(tmp_path / "fresh.onnx")
    reused_nodes, reused_weights = _graph_tensors(tmp_path / "reused.onnx")
    assert reused_nodes == fresh_nodes and reused_weights.keys() == fresh_weights.keys()
    scales = [name for name in fresh_weights if "scale" in name]
    assert scales, "a Q/DQ graph has quantization scales"
    for name, values in fresh_weights.items():
        np.testing.assert_array_equal(reused_weights[name], values, err_msg=name)


def test_the_side_by_side_benchmark_times_both_ways_and_compares_the_bytes(
    tiny_onnx: Path, calibration: np.ndarray
) -> None:
    from benchmarks.int8_search import compare

    tight = replace(QuantConfig(), target_max_diff=1e-7, max_float_layers=1, sensitivity_images=16)
    result = compare(tiny_onnx, calibration, tight)
    assert result["same_graph"] is True
    assert result["reused"]["seconds"] > 0 and result["fresh"]["seconds"] > 0
    assert result["reused"]["float_layers"] == result["fresh"]["float_layers"]
    assert result["reused"]["calibration_max_diff"] == result["fresh"]["calibration_max_diff"]


def test_range_cache_keys_on_method_images_and_batching(tmp_path: Path, calibration: np.ndarray) -> None:
    cache = RangeCache(tmp_path)
    config = QuantConfig(calibrate_method="percentile")
    key = cache.path(config, calibration)
    assert cache.path(QuantConfig(calibrate_method="auto"), calibration) == key  # auto starts with percentile
    assert cache.path(replace(config, float_nodes=("Conv__1",)), calibration) == key  # ranges are per graph
    assert cache.path(replace(config, calibrate_method="minmax"), calibration) != key
    assert cache.path(config, calibration[:16]) != key
    assert cache.path(replace(config, batch_size=8), calibration) != key
    assert key.parent == tmp_path


def test_target_is_validated() -> None:
    with pytest.raises(ExportError, match="--int8-target"):
        QuantConfig(target_max_diff=0.0)
    with pytest.raises(ExportError, match="--int8-max-float-layers"):
        QuantConfig(max_float_layers=-1)
