"""Mixed-precision INT8: keep in float the few layers whose quantization moves the output most.

A Q/DQ graph says per layer what runs in int8: a Conv without a Q/DQ pair on
its input runs in FP16/FP32 on TensorRT (and in float on ONNX Runtime), so
leaving out the most sensitive layers is how NVIDIA's Model Optimizer and
TensorRT's own debugging guide recover INT8 accuracy without retraining.

The search runs only when the fully quantized graph misses
``QuantConfig.target_max_diff`` on the calibration images (the training
split: the test split never decides anything here):

1. sensitivity: quantize one layer alone, calibrated on a probe of the
   calibration set (:func:`probe_images`: evenly spaced over the whole set, so
   every class is in it), and record the max abs difference of the raw outputs
   from FP32 on that probe;
2. greedy: keep the most sensitive layers in float, one more each round
   (full calibration set), until the graph is within the target or
   ``max_float_layers`` is reached; the best graph found is kept and the
   report says whether the target was met.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.engine_from_onnx import spread_indices
from export.config import AUTO_CALIBRATE_METHODS, QuantConfig
from export.errors import ConversionError


@dataclass(frozen=True)
class RangeCache:
    """Activation ranges of one source graph, one JSON file per (method, images, batching).

    Lives in a temporary folder for one export: ranges belong to the graph they
    were measured on, so they are never shared between models.
    """

    folder: Path

    def path(self, config: QuantConfig, images: np.ndarray) -> Path:
        method = config.calibrate_method
        if method == "auto":
            method = AUTO_CALIBRATE_METHODS[0]  # what int8_qdq_from_onnx calibrates with
        digest = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:16]
        ops = "-".join(config.op_types)
        return self.folder / f"ranges-{method}-{ops}-b{config.batch_size}-{digest}.json"


def _ranges(cache: RangeCache | None, config: QuantConfig, images: np.ndarray) -> Path | None:
    return None if cache is None else cache.path(config, images)


@dataclass(frozen=True)
class LayerSensitivity:
    """How far the outputs move when only ``name`` is quantized."""

    name: str
    op_type: str
    max_abs_diff: float


@dataclass(frozen=True)
class MixedPrecision:
    """The outcome of the search: which layers stay in float and how close the graph came to the target."""

    target_max_diff: float
    initial_max_diff: float
    final_max_diff: float
    float_layers: tuple[str, ...]
    target_met: bool
    sensitivity: tuple[LayerSensitivity, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["float_layers"] = list(self.float_layers)
        data["sensitivity"] = [asdict(s) for s in self.sensitivity]
        return data


def output_diff(fp32_outputs: np.ndarray, model: Path, images: np.ndarray) -> float:
    """Max abs difference of ``model``'s raw outputs from ``fp32_outputs`` on ``images``."""
    from export.parity import onnx_outputs

    return float(np.abs(onnx_outputs(model, images, precision="int8") - fp32_outputs).max())


def quantizable_layers(source: Path, config: QuantConfig) -> list[tuple[str, str]]:
    """(node name, op type) of every layer ``config`` would quantize, in graph order, after pre-processing."""
    import onnx

    from export.precision import excluded_nodes, prepared_model

    with prepared_model(source) as prepared:
        model = onnx.load(str(prepared))
    excluded = set(excluded_nodes(model, config))
    return [
        (n.name, n.op_type)
        for n in model.graph.node
        if n.op_type in config.op_types and n.name not in excluded
    ]


def probe_images(calibration: np.ndarray, count: int) -> np.ndarray:
    """``count`` images evenly spaced over the whole calibration set (all of it when it is smaller).

    The calibration set is stored class by class (:func:`export.run_folder.balanced_sample`
    sorts by label), so its first ``count`` images would all be of the first class and the
    sensitivity ranking would never see an abnormal image. Deterministic: the same set gives
    the same probe, so the range cache keyed on the probe's bytes stays valid.
    """
    if count >= len(calibration):
        return calibration
    return calibration[spread_indices(len(calibration), count)]


def layer_sensitivity(
    source: Path,
    workdir: Path,
    calibration: np.ndarray,
    config: QuantConfig,
    cache: RangeCache | None = None,
) -> list[LayerSensitivity]:
    """Each quantizable layer quantized alone, most sensitive first."""
    from export.parity import onnx_outputs
    from export.precision import int8_qdq_from_onnx

    layers = quantizable_layers(source, config)
    probe = probe_images(calibration, config.sensitivity_images)
    reference = onnx_outputs(source, probe)
    names = [name for name, _ in layers]
    results = []
    for name, op_type in layers:
        alone = replace(config, float_nodes=tuple(n for n in names if n != name))
        candidate = workdir / "single-layer.onnx"
        int8_qdq_from_onnx(source, candidate, probe, alone, _ranges(cache, alone, probe))
        results.append(LayerSensitivity(name, op_type, output_diff(reference, candidate, probe)))
    return sorted(results, key=lambda s: s.max_abs_diff, reverse=True)


def search_float_layers(
    source: Path,
    calibration: np.ndarray,
    config: QuantConfig,
    initial_max_diff: float,
    reference: np.ndarray | None = None,
    cache: RangeCache | None = None,
) -> tuple[QuantConfig, MixedPrecision]:
    """The config keeping the fewest most-sensitive layers in float that meets ``config.target_max_diff``.

    When no count up to ``max_float_layers`` meets it, the closest one found.
    ``reference``: the FP32 outputs on ``calibration``, when the caller has them already.
    """
    import tempfile

    from export.parity import onnx_outputs
    from export.precision import int8_qdq_from_onnx

    assert config.target_max_diff is not None
    if reference is None:
        reference = onnx_outputs(source, calibration)
    with tempfile.TemporaryDirectory(prefix="pneumo-mixed-") as tmp:
        workdir = Path(tmp)
        ranked = layer_sensitivity(source, workdir, calibration, config, cache)
        best_config, best_diff = config, initial_max_diff
        for count in range(1, min(config.max_float_layers, len(ranked)) + 1):
            trial = replace(config, float_nodes=tuple(s.name for s in ranked[:count]))
            candidate = workdir / "candidate.onnx"
            int8_qdq_from_onnx(source, candidate, calibration, trial, _ranges(cache, trial, calibration))
            diff = output_diff(reference, candidate, calibration)
            if diff < best_diff:
                best_config, best_diff = trial, diff
            if diff <= config.target_max_diff:
                break
    outcome = MixedPrecision(
        target_max_diff=config.target_max_diff,
        initial_max_diff=initial_max_diff,
        final_max_diff=best_diff,
        float_layers=best_config.float_nodes,
        target_met=best_diff <= config.target_max_diff,
        sensitivity=tuple(ranked),
    )
    return best_config, outcome


def int8_qdq_within_target(
    source: Path,
    output: Path,
    calibration: np.ndarray,
    config: QuantConfig,
    *,
    reuse_ranges: bool = True,
) -> dict[str, Any]:
    """:func:`export.precision.int8_qdq_from_onnx`, then the mixed-precision search when the target is missed.

    Returns the quantization settings, with a ``mixed_precision`` record
    (None when the fully quantized graph was within the target or the search is off).
    With ``calibrate_method="auto"`` each method of ``AUTO_CALIBRATE_METHODS`` is tried in
    turn until one meets the target, and the graph closest to FP32 on the calibration
    images is kept; ``auto_calibration`` then records every method's diff, and why a
    method failed (percentile's histogram cannot bin a near-constant activation of large
    magnitude: "Too many bins"; MinMax has no histogram), as long as one method succeeds.
    ``reuse_ranges=False`` calibrates every trial graph afresh (the same graphs, slower:
    kept for the side-by-side check in the tests and ``benchmarks``).
    """
    import shutil
    import tempfile

    from export.parity import onnx_outputs

    # The FP32 outputs every method's graph is measured against, computed once.
    reference = onnx_outputs(source, calibration) if config.target_max_diff is not None else None
    with tempfile.TemporaryDirectory(prefix="pneumo-calib-") as tmp:
        cache = RangeCache(Path(tmp)) if reuse_ranges else None
        if config.calibrate_method != "auto":
            return _int8_within_target(source, output, calibration, config, reference, cache)
        tried: dict[str, float | None] = {}
        failed: dict[str, str] = {}
        best: dict[str, Any] | None = None
        for method in AUTO_CALIBRATE_METHODS:
            candidate = Path(tmp) / f"{method}.onnx"
            try:
                settings = _int8_within_target(
                    source, candidate, calibration, replace(config, calibrate_method=method), reference, cache
                )
            except ConversionError as exc:
                failed[method] = str(exc)
                continue
            diff = settings.get("calibration_max_diff")
            tried[method] = diff
            if best is None or (diff is not None and diff < best["calibration_max_diff"]):
                best = settings
                shutil.copyfile(candidate, output)
            if diff is None or config.target_max_diff is None or diff <= config.target_max_diff:
                break
    if best is None:
        raise ConversionError(
            f"{source}: INT8 quantization failed with every method --calib-method auto tries: "
            + "; ".join(f"{m}: {why}" for m, why in failed.items())
        )
    best["auto_calibration"] = {"tried": tried, "failed": failed, "chosen": best["calibrate_method"]}
    return best


def _int8_within_target(
    source: Path,
    output: Path,
    calibration: np.ndarray,
    config: QuantConfig,
    reference: np.ndarray | None,
    cache: RangeCache | None,
) -> dict[str, Any]:
    from export.precision import int8_qdq_from_onnx

    ranges = _ranges(cache, config, calibration)
    settings = int8_qdq_from_onnx(source, output, calibration, config, ranges)
    settings["target_max_diff"] = config.target_max_diff
    settings["mixed_precision"] = None
    if config.target_max_diff is None or reference is None:
        return settings
    diff = output_diff(reference, output, calibration)
    settings["calibration_max_diff"] = diff
    if diff <= config.target_max_diff or config.max_float_layers == 0:
        return settings
    chosen, outcome = search_float_layers(source, calibration, config, diff, reference, cache)
    if outcome.float_layers:
        settings = int8_qdq_from_onnx(source, output, calibration, chosen, ranges)
        settings["target_max_diff"] = config.target_max_diff
        settings["calibration_max_diff"] = outcome.final_max_diff
    settings["mixed_precision"] = outcome.to_dict()
    return settings
