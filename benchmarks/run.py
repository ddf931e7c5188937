"""Timing loops and the benchmark plan: every backend x precision x batch this machine supports.

For each combination, in the manner of trtexec:

* **inference**: the same uint8 batch fed ``warmup_s`` seconds untimed, then
  ``iterations`` calls (or calls for ``duration_s``, at least
  ``min_iterations``), each timed on the host with ``perf_counter``. For
  ``trt`` the backend's CUDA-event time (``last_gpu_ms``) is the GPU compute
  time; the host time includes its host-to-device and device-to-host copies.
* **end to end**: a separate loop reading files, decoding and preprocessing
  them with :mod:`edge_runtime.preprocess` (the one implementation), stacking,
  and inferring: what a clinic's pipeline pays per image.

Then accuracy on the labelled test images for each backend and precision
(an INT8 row without its accuracy is not a result), cold start and peak
memory in fresh processes (:mod:`benchmarks.coldstart`), and a
``trtexec --loadEngine`` row on each engine that ran. What could not run is
listed with the reason, never silently dropped.

:func:`run_benchmark` returns the bench.json document (see
:mod:`benchmarks.report` for its schema and the Markdown/plots).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import BENCH_SCHEMA
from benchmarks.coldstart import ColdStartSpec, cold_start_warnings, measure_cold_start
from benchmarks.device_facts import DeviceStamp, collect_device_stamp
from benchmarks.errors import BenchConfigError, BenchInputError
from benchmarks.keras_reference import (
    KerasReference,
    KerasSource,
    not_the_bundles_model,
    resolve_keras_source,
    run_dir_from_bundle,
)
from benchmarks.labelled_images import (
    LabelledImages,
    files_from_folder,
    files_from_split_json,
    limit_files,
    load_labelled_images,
    mean_source_size,
    missing_labels,
    write_generated_jpegs,
)
from benchmarks.power import PowerMonitor
from benchmarks.stats import MIN_CALLS_FOR_TAIL, UNSTABLE_CV, quantile_sketch, summarize, throughput
from benchmarks.targets import evaluate_targets, measurement_notes
from benchmarks.trtexec import find_trtexec, run_trtexec
from edge_runtime.backends.base import Backend
from edge_runtime.bundle import ONNX_FOR_PRECISION, Bundle
from edge_runtime.errors import EdgeError
from edge_runtime.preprocess import preprocess_file

ALL_BACKENDS = ("trt", "ort-trt", "ort-cuda", "ort-cpu", "keras")
ALL_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCHES = (1, 8, 32)
#: The fewest timed calls a row may rest on, with --iterations or --duration (trtexec's default).
MIN_ITERATIONS = 10
_ORT_PROVIDERS = {"ort-trt": "TensorrtExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}
_GPU_NOTE = (
    "GPU compute time is measured with CUDA events by the trt backend only; this row is host wall time"
)

Log = Callable[[str], None]


def _silent(_: str) -> None:
    return None


@dataclass(frozen=True)
class BenchConfig:
    """Everything one ``pneumo bench`` run does. Saved in bench.json as ``config``."""

    bundle: Path
    backends: tuple[str, ...] = ALL_BACKENDS
    precisions: tuple[str, ...] = ALL_PRECISIONS
    batches: tuple[int, ...] = DEFAULT_BATCHES
    #: timed calls per combination; None: run for ``duration_s`` instead
    iterations: int | None = None
    duration_s: float = 3.0
    warmup_s: float = 1.0
    #: with ``duration_s``, never fewer timed calls than this (trtexec's default is 10)
    min_iterations: int = MIN_ITERATIONS
    end_to_end: bool = True
    #: labelled test folder (TESTDIR/<LABEL>/...); default: the Keras run's split.json test entries
    data: Path | None = None
    #: training run folder or .h5 for the Keras reference; default: the run the model card names
    keras: Path | None = None
    threads: int = 0
    accuracy: bool = True
    #: at most this many test images (seeded, stratified); None: all of them
    test_limit: int | None = None
    bootstrap: int = 1000
    #: fresh processes per cold-start measurement (median reported); 0 skips cold start
    cold_start_repeats: int = 3
    trtexec: bool = True
    seed: int = 0
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        unknown = sorted(set(self.backends) - set(ALL_BACKENDS))
        if unknown or not self.backends:
            raise BenchConfigError(
                f"--backends {','.join(unknown) or '(empty)'}: expected some of {','.join(ALL_BACKENDS)}"
            )
        unknown = sorted(set(self.precisions) - set(ALL_PRECISIONS))
        if unknown or not self.precisions:
            raise BenchConfigError(
                f"--precisions {','.join(unknown) or '(empty)'}: expected some of {','.join(ALL_PRECISIONS)}"
            )
        if not self.batches or any(not (1 <= b <= 4096) for b in self.batches):
            raise BenchConfigError(f"--batch {self.batches}: every batch size must be within 1..4096")
        if self.iterations is not None and not (MIN_ITERATIONS <= self.iterations <= 10_000_000):
            # Fewer calls give a CV of noise (one call: CV 0, never "unstable") and a p99 that is the max.
            raise BenchConfigError(
                f"--iterations {self.iterations}: must be within {MIN_ITERATIONS}..10000000 timed calls "
                f"(trtexec's default minimum); p95/p99 need {MIN_CALLS_FOR_TAIL}+, so use --duration "
                f"or --iterations {MIN_CALLS_FOR_TAIL} for a latency tail"
            )
        if not (0.0 < self.duration_s <= 3600.0):
            raise BenchConfigError(f"--duration {self.duration_s}: must be within (0, 3600] seconds")
        if not (0.0 <= self.warmup_s <= 600.0):
            raise BenchConfigError(f"--warmup {self.warmup_s}: must be within [0, 600] seconds")
        if self.min_iterations < MIN_ITERATIONS:
            raise BenchConfigError(f"min_iterations must be at least {MIN_ITERATIONS}")
        if self.threads < 0:
            raise BenchConfigError(f"--threads {self.threads}: must be 0 (runtime default) or more")
        if self.test_limit is not None and self.test_limit < 2:
            raise BenchConfigError(f"--test-limit {self.test_limit}: needs at least 2 images")
        if not (0 <= self.bootstrap <= 100_000):
            raise BenchConfigError(f"--bootstrap {self.bootstrap}: must be within 0..100000")
        if not (0 <= self.cold_start_repeats <= 50):
            raise BenchConfigError(f"--cold-start-repeats {self.cold_start_repeats}: must be within 0..50")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("bundle", "data", "keras"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["backends"], data["precisions"], data["batches"] = (
            list(self.backends),
            list(self.precisions),
            list(self.batches),
        )
        return data


@dataclass
class Timing:
    """Per-call latencies of one timed loop and its wall-clock window."""

    latencies_ms: list[float]
    gpu_ms: list[float]
    wall_s: float
    images: int
    start: float
    end: float


@dataclass
class EndToEndTiming:
    total_ms: list[float] = field(default_factory=list)
    preprocess_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    images: int = 0


@dataclass
class _Inputs:
    """What the loops feed: a pool of preprocessed images and files for the end-to-end loop."""

    pool: np.ndarray
    pool_source: str
    files: list[Path]
    files_source: str
    files_size: dict[str, float] | None
    labelled: LabelledImages | None


def _should_stop(done: int, elapsed: float, config: BenchConfig) -> bool:
    if config.iterations is not None:
        return done >= config.iterations
    return elapsed >= config.duration_s and done >= config.min_iterations


def make_batch(pool: np.ndarray, batch: int, dtype: Any = np.uint8) -> np.ndarray:
    """``batch`` images cycled from ``pool``, contiguous, in the dtype the runner takes."""
    index = np.arange(batch) % len(pool)
    return np.ascontiguousarray(pool[index].astype(dtype, copy=False))


def time_inference(runner: Backend, batch: np.ndarray, config: BenchConfig) -> Timing:
    """Warm up, then time ``runner.infer(batch)`` call by call (trtexec-style)."""
    warm_end = time.perf_counter() + config.warmup_s
    runner.infer(batch)
    while time.perf_counter() < warm_end:
        runner.infer(batch)
    latencies: list[float] = []
    gpu: list[float] = []
    start = time.perf_counter()
    now = start
    while not _should_stop(len(latencies), now - start, config):
        t0 = time.perf_counter()
        runner.infer(batch)
        now = time.perf_counter()
        latencies.append((now - t0) * 1000.0)
        gpu_ms = getattr(runner, "last_gpu_ms", None)
        if gpu_ms is not None:
            gpu.append(float(gpu_ms))
    return Timing(latencies, gpu, now - start, len(latencies) * len(batch), start, now)


def time_end_to_end(
    runner: Backend, files: Sequence[Path], bundle: Bundle, batch: int, config: BenchConfig
) -> EndToEndTiming:
    """Time read + decode + preprocess + stack + infer per batch of files (files cycled)."""
    dtype = getattr(runner, "input_dtype", np.uint8)
    result = EndToEndTiming()
    cursor = 0

    def one_batch() -> tuple[float, float]:
        nonlocal cursor
        t0 = time.perf_counter()
        images = [preprocess_file(files[(cursor + i) % len(files)], bundle.contract) for i in range(batch)]
        cursor += batch
        x = np.stack(images).astype(dtype, copy=False)
        t1 = time.perf_counter()
        runner.infer(x)
        t2 = time.perf_counter()
        return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0

    one_batch()  # page cache and first-call effects, untimed
    start = time.perf_counter()
    now = start
    while not _should_stop(len(result.total_ms), now - start, config):
        pre, inf = one_batch()
        now = time.perf_counter()
        result.preprocess_ms.append(pre)
        result.inference_ms.append(inf)
        result.total_ms.append(pre + inf)
    result.wall_s = now - start
    result.images = len(result.total_ms) * batch
    return result


def _timing_row(
    runner: Backend, precision: str, batch: int, timing: Timing, e2e: EndToEndTiming | None, inputs: _Inputs
) -> dict[str, Any]:
    stats = summarize(timing.latencies_ms)
    row: dict[str, Any] = {
        "backend": runner.name,
        "precision": precision,
        "batch": batch,
        "device": getattr(
            runner, "device", "gpu" if runner.name in ("trt", "ort-trt", "ort-cuda") else "cpu"
        ),
        "iterations": stats.count,
        "wall_s": round(timing.wall_s, 4),
        "throughput_ips": round(throughput(timing.images, timing.wall_s), 3),
        "latency_ms": stats.to_dict(),
        "latency_per_image_ms": round(stats.mean / batch, 6),
        "latency_quantiles_ms": quantile_sketch(timing.latencies_ms),
        "gpu_compute_ms": summarize(timing.gpu_ms).to_dict() if timing.gpu_ms else None,
        "gpu_compute_note": "" if timing.gpu_ms else _GPU_NOTE,
        "input_images": inputs.pool_source,
        "speedup_vs_keras": None,
        "warnings": [],
    }
    if stats.unstable:
        row["warnings"].append(
            f"unstable: coefficient of variation {stats.cv:.0%} > {UNSTABLE_CV:.0%} "
            "(other load, throttling or unlocked clocks); re-run for a trustworthy number"
        )
    row["tail_latency_meaningful"] = stats.tail_meaningful
    if not stats.tail_meaningful:
        row["warnings"].append(
            f"only {stats.count} timed calls: p95/p99 need at least {MIN_CALLS_FOR_TAIL} to mean anything "
            "(shown as - in bench.md); use a longer --duration or more --iterations for a latency tail"
        )
    if e2e is not None and e2e.total_ms:
        row["end_to_end"] = {
            "throughput_ips": round(throughput(e2e.images, e2e.wall_s), 3),
            "latency_ms": summarize(e2e.total_ms).to_dict(),
            "preprocess_ms_per_image": round(float(np.mean(e2e.preprocess_ms)) / batch, 4),
            "inference_ms_per_batch": round(float(np.mean(e2e.inference_ms)), 4),
            "files": inputs.files_source,
            "mean_source_image": inputs.files_size,
        }
    else:
        row["end_to_end"] = None
    return row


def _artifact_facts(runner: Backend, bundle: Bundle, precision: str) -> dict[str, Any]:
    """Model/engine file, size and engine build time (from the engine sidecar)."""
    if isinstance(runner, KerasReference):
        h5 = runner.source.h5
        return {
            "model_file": str(h5),
            "model_bytes": h5.stat().st_size,
            "engine_file": None,
            "engine_bytes": None,
            "engine_build_s": None,
        }
    model_path = getattr(runner, "model_path", None)
    facts: dict[str, Any] = {"engine_file": None, "engine_bytes": None, "engine_build_s": None}
    engine = getattr(runner, "engine_path", None)
    sidecar = getattr(runner, "sidecar", None)
    if engine is not None:
        facts["engine_file"] = (
            str(Path(engine).relative_to(bundle.root))
            if Path(engine).is_relative_to(bundle.root)
            else str(engine)
        )
        facts["engine_bytes"] = Path(engine).stat().st_size
        facts["engine_build_s"] = getattr(sidecar, "build_seconds", None)
        onnx_file = getattr(sidecar, "onnx_file", None)
        model_path = bundle.root / onnx_file if onnx_file else None
    if (
        model_path is None
        and precision in ONNX_FOR_PRECISION
        and (bundle.root / ONNX_FOR_PRECISION[precision]).is_file()
    ):
        model_path = bundle.root / ONNX_FOR_PRECISION[precision]
    facts["model_file"] = Path(model_path).name if model_path else None
    facts["model_bytes"] = (
        Path(model_path).stat().st_size if model_path and Path(model_path).is_file() else None
    )
    return facts


def _accuracy(
    runner: Backend, labelled: LabelledImages, bundle: Bundle, config: BenchConfig
) -> tuple[dict[str, Any], np.ndarray]:
    from edge_runtime.metrics import MetricsError, evaluate_outputs

    dtype = getattr(runner, "input_dtype", np.uint8)
    chunk = max(1, min(runner.max_batch, max(config.batches), 32))
    outputs = [
        runner.infer(np.ascontiguousarray(labelled.images[i : i + chunk].astype(dtype, copy=False)))
        for i in range(0, len(labelled), chunk)
    ]
    out = np.concatenate(outputs, axis=0)
    try:
        metrics = evaluate_outputs(
            labelled.labels, out, bundle.info, bootstrap=config.bootstrap, seed=config.seed
        )
    except MetricsError as exc:
        raise BenchInputError(
            f"{labelled.source}: the {runner.name} outputs cannot be scored against {bundle.root}'s labels ({exc})"
        ) from exc
    keep = (
        "n_images",
        "n_abnormal",
        "n_normal",
        "threshold",
        "threshold_rule",
        "accuracy",
        "sensitivity",
        "specificity",
        "f1",
        "roc_auc",
        "confusion",
        "ci95",
        "bootstrap_resamples",
    )
    result = {key: metrics[key] for key in keep if key in metrics}
    # "precision" names the numeric precision (fp32, ...) in every bench row; the metric is kept as ppv.
    result["ppv"] = metrics.get("precision")
    if isinstance(result.get("ci95"), dict) and "precision" in result["ci95"]:
        result["ci95"] = {("ppv" if k == "precision" else k): v for k, v in result["ci95"].items()}
    return result, out


def _agreement(
    outputs: dict[tuple[str, str], np.ndarray], bundle: Bundle
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each row's P(abnormal) against the Keras reference (or its own FP32): max |diff| and decisions flipped."""
    from edge_runtime.predictor import abnormal_probability

    probs = {key: abnormal_probability(out, bundle.info) for key, out in outputs.items()}
    result = {}
    for (backend, precision), prob in probs.items():
        reference_key = ("keras", "fp32") if ("keras", "fp32") in probs else (backend, "fp32")
        if reference_key == (backend, precision) or reference_key not in probs:
            continue
        reference = probs[reference_key]
        threshold = bundle.info.threshold
        result[(backend, precision)] = {
            "reference": f"{reference_key[0]} {reference_key[1]}",
            "max_abs_probability_diff": round(float(np.max(np.abs(prob - reference))), 6),
            "decisions_changed": int(np.sum((prob >= threshold) != (reference >= threshold))),
        }
    return result


def _prepare_inputs(
    config: BenchConfig,
    bundle: Bundle,
    keras_source: KerasSource | None,
    scratch: Path,
    warnings: list[str],
    log: Log,
) -> _Inputs:
    labelled: LabelledImages | None = None
    if config.accuracy:
        files = None
        source = ""
        if config.data is not None:
            files, source = files_from_folder(config.data, bundle.info), f"--data {config.data}"
        elif keras_source is not None and keras_source.split_json is not None:
            files = files_from_split_json(keras_source.split_json, bundle.info)
            source = f"test split of {keras_source.split_json}"
        if files is not None:
            files = limit_files(files, config.test_limit, config.seed)
            absent = missing_labels(files, bundle.info)
            if absent:
                warnings.append(
                    f"the test images ({source}) have no {', '.join(absent)} image: accuracy is over one "
                    "class only, and sensitivity or specificity cannot be measured"
                )
            if config.test_limit is not None:
                source += f" (limited to {len(files)} images by --test-limit)"
            log(f"test images: {len(files)} from {source}")
            labelled = load_labelled_images(files, bundle.contract, source, progress=config.progress)
            if labelled.skipped_files:
                warnings.append(
                    f"{labelled.skipped_files} test image(s) could not be decoded and were left out"
                )
        else:
            warnings.append(
                "no labelled test images (pass --data TESTDIR, or --keras with a run folder holding split.json): "
                "accuracy not measured, so no row here is a complete result"
            )
    if labelled is not None:
        pool, pool_source = labelled.images, f"{len(labelled)} preprocessed test images"
        files_list, files_source = list(labelled.paths), f"{len(labelled.paths)} test image files"
    else:
        golden = bundle.root / "golden" / "images.npy"
        if golden.is_file():
            pool, pool_source = np.load(golden), "the bundle's golden/images.npy"
        else:
            rng = np.random.default_rng(config.seed)
            pool = rng.integers(0, 256, (8, *bundle.contract.input_shape), dtype=np.uint8)
            pool_source = "random uint8 images (no test images given)"
        files_list = (
            write_generated_jpegs(scratch / "generated", 16, seed=config.seed) if config.end_to_end else []
        )
        files_source = "16 generated 1024x1024 JPEGs (no test images given)"
    return _Inputs(
        pool=np.ascontiguousarray(pool, dtype=np.uint8),
        pool_source=pool_source,
        files=files_list,
        files_source=files_source,
        files_size=mean_source_size(files_list) if files_list else None,
        labelled=labelled,
    )


def _resolve_keras(config: BenchConfig, bundle: Bundle) -> tuple[KerasSource | None, str]:
    if config.keras is not None:
        source = resolve_keras_source(config.keras)
        problem = not_the_bundles_model(source.h5, bundle.manifest)
        if problem:
            raise BenchInputError(
                f"--keras {config.keras}: {problem} Pass the .h5 the bundle was made from, "
                "or export a new bundle from this run"
            )
        return source, ""
    run_dir = run_dir_from_bundle(bundle.root)
    if run_dir is not None:
        source = resolve_keras_source(run_dir)
        problem = not_the_bundles_model(source.h5, bundle.manifest)
        if problem is None:
            return source, ""
        # Its split.json may list other test images too: neither the model nor the split is used.
        return None, f"no Keras model: the run folder the bundle names has changed: {problem}"
    return None, "no Keras model: pass --keras RUN_OR_H5 (the training run folder with model.h5)"


def _precheck(
    backend: str,
    precision: str,
    bundle: Bundle,
    facts: DeviceStamp,
    keras_source: KerasSource | None,
    keras_reason: str,
) -> str:
    """Why (backend, precision) cannot run here, found without loading anything; '' when it may."""
    if backend == "keras":
        if precision != "fp32":
            return f"{precision} is not a Keras precision (the reference is the FP32 .h5)"
        if keras_source is None:
            return keras_reason
        from edge_runtime.extras import install_hint, missing_modules

        missing = missing_modules(("keras", "tensorflow"))
        if missing:
            return f"{', '.join(missing)} not installed ({install_hint('train')})"
        return ""
    if backend == "trt" and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT not installed (python module 'tensorrt' not found)"
    provider = _ORT_PROVIDERS.get(backend)
    if provider:
        failed = facts.onnxruntime_providers_failed.get(provider)
        if failed:
            return f"{provider} listed but did not load ({failed})"
        if provider not in facts.onnxruntime_providers_loadable:
            return f"ONNX Runtime {facts.onnxruntime or '?'} here has no {provider} (CPU-only build)"
    # ort-trt builds FP16 from the FP32 graph with the EP's fp16 flag (edge_runtime.backends.select).
    onnx_needed = "fp32" if backend == "ort-trt" and precision == "fp16" else precision
    if backend != "trt" and not (bundle.root / ONNX_FOR_PRECISION[onnx_needed]).is_file():
        return f"the bundle has no {ONNX_FOR_PRECISION[onnx_needed]} (re-run 'pneumo export bundle' with {precision})"
    return ""


def _backend_wide(backend: str, exc: Exception) -> bool:
    """Whether a failure to open one precision means every precision of this backend fails the same way.

    For ``trt`` a missing pycuda, GPU or TensorRT runtime does; a missing or
    mismatched engine is per precision. ONNX Runtime providers were already
    probed (_precheck), so a failure there is taken as specific to the model file.
    """
    from edge_runtime.errors import BackendUnavailableError

    return backend == "trt" and isinstance(exc, BackendUnavailableError) and "engine" not in str(exc)


def _open_runner(
    backend: str, precision: str, bundle: Bundle, keras_source: KerasSource | None, threads: int
) -> Backend:
    from edge_runtime.backends.select import create_backend

    if backend == "keras":
        assert keras_source is not None
        runner: Backend = KerasReference(keras_source, bundle.contract, threads)
    else:
        # No golden gate: the benchmark measures every precision's accuracy itself, and a provider
        # that would fail the gate should show that in its row rather than have no row.
        runner = create_backend(bundle, backend, precision, threads, golden_gated=())
    try:
        runner.open()
    except BaseException:
        runner.close()  # free whatever a half-done open allocated (CUDA context, buffers)
        raise
    return runner


def run_benchmark(config: BenchConfig, log: Log = _silent) -> dict[str, Any]:
    """Run the whole plan and return the bench.json document."""
    started = _dt.datetime.now(_dt.timezone.utc)
    bundle = Bundle.open(config.bundle)
    log(
        f"bundle {bundle.root} (model {bundle.info.model_version}, precisions {', '.join(bundle.precisions)})"
    )
    facts = collect_device_stamp()
    log(f"device {facts.slug}")
    warnings: list[str] = list(facts.warnings)
    # Resolved even without a Keras row: the run's split.json is where the test images are listed.
    keras_source, keras_reason = _resolve_keras(config, bundle)
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        inputs = _prepare_inputs(config, bundle, keras_source, Path(tmp), warnings, log)
        run = _PlanRun(config, bundle, facts, (keras_source, keras_reason), inputs, warnings, log)
        run.run()
        agreement = _agreement(run.outputs, bundle)
        for item in run.accuracy:
            item["agreement"] = agreement.get((item["backend"], item["precision"]))
        cold = _cold_starts(config, bundle, run.ran, keras_source, inputs, log)
        trtexec_rows = _trtexec_rows(config, bundle, run.engines, run.skipped, log)
    _fill_speedups(run.rows)
    document: dict[str, Any] = {
        "schema": BENCH_SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "date": started.date().isoformat(),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "config": config.to_dict(),
        "bundle": _bundle_facts(bundle, keras_source),
        "device": facts.to_dict(),
        "rows": run.rows,
        "accuracy": run.accuracy,
        "cold_start": cold,
        "trtexec": trtexec_rows,
        "skipped": run.skipped,
        "warnings": warnings
        + _unstable_summary(run.rows)
        + _few_calls_summary(run.rows)
        + cold_start_warnings(cold),
        "notes": [],
        "watch": None,
    }
    document["targets"] = evaluate_targets(document)
    document["notes"] = measurement_notes(document)
    return document


class _PlanRun:
    """The timing loops over every (backend, precision) of the plan, and what they gather."""

    def __init__(
        self,
        config: BenchConfig,
        bundle: Bundle,
        facts: DeviceStamp,
        keras: tuple[KerasSource | None, str],
        inputs: _Inputs,
        warnings: list[str],
        log: Log,
    ) -> None:
        self.config, self.bundle, self.facts, self.inputs, self.log = config, bundle, facts, inputs, log
        self.keras_source, self.keras_reason = keras
        self.warnings = warnings
        self.rows: list[dict[str, Any]] = []
        self.accuracy: list[dict[str, Any]] = []
        self.outputs: dict[tuple[str, str], np.ndarray] = {}
        self.ran: list[tuple[str, str]] = []
        self.engines: dict[tuple[str, int], dict[str, Any]] = {}
        self.skipped: list[dict[str, Any]] = []
        #: backends whose failure to open means no precision of theirs can run (see _backend_wide)
        self.dead_backends: dict[str, str] = {}

    def run(self) -> None:
        from tqdm import tqdm

        backends = self.config.backends
        # Keras last: TensorFlow in the process must not disturb the edge rows' timings.
        order = [b for b in backends if b != "keras"] + [b for b in backends if b == "keras"]
        plan = [(b, p) for b in order for p in self.config.precisions]
        with PowerMonitor() as power:
            progress = tqdm(plan, desc="bench", unit="combo", disable=not self.config.progress, leave=False)
            for backend, precision in progress:
                progress.set_postfix_str(f"{backend} {precision}")
                runner = self._open(backend, precision)
                if runner is None:
                    continue
                try:
                    self._measure(runner, backend, precision, power)
                finally:
                    runner.close()

    def _skip(self, backend: str, precision: str, batch: int | None, reason: str) -> None:
        self.skipped.append({"backend": backend, "precision": precision, "batch": batch, "reason": reason})

    def _open(self, backend: str, precision: str) -> Backend | None:
        """The opened runner, or None with the reason recorded in ``skipped``."""
        reason = self.dead_backends.get(backend) or _precheck(
            backend, precision, self.bundle, self.facts, self.keras_source, self.keras_reason
        )
        if reason:
            self._skip(backend, precision, None, reason)
            return None
        try:
            return _open_runner(backend, precision, self.bundle, self.keras_source, self.config.threads)
        except (EdgeError, BenchInputError, ImportError) as exc:
            self._skip(backend, precision, None, str(exc))
            if _backend_wide(backend, exc):
                self.dead_backends[backend] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a runtime failing to load is a skip with its reason
            self._skip(backend, precision, None, f"{type(exc).__name__}: {exc}")
        return None

    def _measure(self, runner: Backend, backend: str, precision: str, power: PowerMonitor) -> None:
        """Every batch size's row, the accuracy on the test images, and what trtexec needs of an engine."""
        self.log(f"running {runner.describe()}")
        self.ran.append((backend, precision))
        artifact = _artifact_facts(runner, self.bundle, precision)
        for batch in self.config.batches:
            if batch > runner.max_batch:
                self._skip(
                    backend,
                    precision,
                    batch,
                    f"batch {batch} is over this runner's maximum {runner.max_batch} "
                    "(engine profile); rebuild with a larger --batch",
                )
                continue
            row = self._batch_row(runner, precision, batch, artifact, power)
            self.rows.append(row)
            if backend == "trt" and artifact.get("engine_file"):
                self.engines[(precision, batch)] = {"runner": runner.describe(), "row": row}
        self._score(runner, backend, precision)
        engine_input = _engine_input(runner)
        if engine_input:
            for batch in self.config.batches:
                if (precision, batch) in self.engines:
                    self.engines[(precision, batch)]["input"] = engine_input

    def _batch_row(
        self, runner: Backend, precision: str, batch: int, artifact: dict[str, Any], power: PowerMonitor
    ) -> dict[str, Any]:
        config, inputs = self.config, self.inputs
        x = make_batch(inputs.pool, batch, getattr(runner, "input_dtype", np.uint8))
        timing = time_inference(runner, x, config)
        e2e = (
            time_end_to_end(runner, inputs.files, self.bundle, batch, config)
            if config.end_to_end and inputs.files
            else None
        )
        row = _timing_row(runner, precision, batch, timing, e2e, inputs)
        row.update(artifact)
        # What actually ran (an engine's sidecar says what was built), never just what was asked.
        row["precision_executed"] = runner.precision
        row["threads"] = thread_settings(runner, config.threads)
        if row["threads"] and row["threads"].get("note"):
            row["warnings"].append(row["threads"]["note"])
        row["power"] = power.window(timing.start, timing.end, timing.images) if power.available else None
        row["power_note"] = "" if power.available else power.reason
        return row

    def _score(self, runner: Backend, backend: str, precision: str) -> None:
        """Accuracy on the labelled test images; an INT8 row without it is flagged as no result."""
        labelled = self.inputs.labelled
        if labelled is not None:
            metrics, out = _accuracy(runner, labelled, self.bundle, self.config)
            self.outputs[(backend, precision)] = out
            self.accuracy.append(
                {"backend": backend, "precision": precision, "test_images": labelled.source, **metrics}
            )
        elif precision == "int8":
            self.warnings.append(f"{backend} int8 has no accuracy on test images: it is not a result")


def _unstable_summary(rows: list[dict[str, Any]]) -> list[str]:
    unstable = [
        f"{r['backend']} {r['precision']} b{r['batch']} {r['latency_ms']['cv']:.0%}"
        for r in rows
        if r["latency_ms"]["cv"] > UNSTABLE_CV
    ]
    if not unstable:
        return []
    return [
        f"unstable timing (coefficient of variation > {UNSTABLE_CV:.0%}) in {len(unstable)} of {len(rows)} rows: "
        f"{', '.join(unstable)}; other load, throttling or unlocked clocks: re-run on an idle machine before trusting them"
    ]


def _few_calls_summary(rows: list[dict[str, Any]]) -> list[str]:
    few = [
        f"{r['backend']} {r['precision']} b{r['batch']} ({r['latency_ms']['count']})"
        for r in rows
        if r["latency_ms"]["count"] < MIN_CALLS_FOR_TAIL
    ]
    if not few:
        return []
    return [
        f"fewer than {MIN_CALLS_FOR_TAIL} timed calls in {len(few)} of {len(rows)} rows: {', '.join(few)}; "
        "their p95/p99 are not meaningful (shown as - in bench.md): use a longer --duration or more --iterations"
    ]


def thread_settings(runner: Backend, requested: int) -> dict[str, Any] | None:
    """The CPU thread pools a row ran with, read back from its runtime; None where there is none (trt)."""
    if isinstance(runner, KerasReference):
        return dict(runner.thread_settings)
    # The live session's options, not the request: what ONNX Runtime was really given.
    session = getattr(runner, "_session", None)
    if session is None or not hasattr(session, "get_session_options"):
        return None
    options = session.get_session_options()
    return {
        "runtime": "onnxruntime",
        "requested": requested,
        "intra_op_threads": int(options.intra_op_num_threads),
        "inter_op_threads": int(options.inter_op_num_threads),
        "zero_means": "ONNX Runtime's default (intra: one per physical core; inter: unused in sequential mode)",
        "note": "",
    }


def _engine_input(runner: Backend) -> dict[str, Any] | None:
    """Input tensor name and item shape of a TensorRT engine, for trtexec --shapes."""
    sidecar = getattr(runner, "sidecar", None)
    profile = getattr(sidecar, "profile", None)
    if not profile:
        return None
    name, shapes = next(iter(profile.items()))
    return {
        "name": name,
        "item_shape": list(shapes["opt"][1:]),
        "engine": str(getattr(runner, "engine_path", "")),
        "dla_core": getattr(sidecar, "dla_core", None),
    }


def _cold_starts(
    config: BenchConfig,
    bundle: Bundle,
    ran: list[tuple[str, str]],
    keras_source: KerasSource | None,
    inputs: _Inputs,
    log: Log,
) -> list[dict[str, Any]]:
    if config.cold_start_repeats == 0:
        return []
    image = inputs.files[0] if inputs.files else None
    results = []
    for backend, precision in ran:
        spec = ColdStartSpec(
            kind="keras" if backend == "keras" else "edge",
            backend=backend,
            precision=precision,
            bundle=bundle.root,
            h5=keras_source.h5 if backend == "keras" and keras_source else None,
            image=image,
            threads=config.threads,
        )
        log(f"cold start: {backend} {precision} x{config.cold_start_repeats} fresh processes")
        results.append(measure_cold_start(spec, repeats=config.cold_start_repeats))
    return results


def _trtexec_rows(
    config: BenchConfig,
    bundle: Bundle,
    engines: dict[tuple[str, int], dict[str, Any]],
    skipped: list[dict[str, Any]],
    log: Log,
) -> list[dict[str, Any]]:
    if not config.trtexec or "trt" not in config.backends:
        return []
    tool = find_trtexec()
    if tool is None:
        skipped.append(
            {
                "backend": "trtexec",
                "precision": None,
                "batch": None,
                "reason": "trtexec not found (PATH, /usr/src/tensorrt/bin)",
            }
        )
        return []
    if not engines:
        skipped.append(
            {
                "backend": "trtexec",
                "precision": None,
                "batch": None,
                "reason": "no TensorRT engine ran in this run",
            }
        )
        return []
    rows = []
    for (precision, batch), info in sorted(engines.items()):
        engine_input = info.get("input")
        if not engine_input:
            continue
        log(f"trtexec --loadEngine {Path(engine_input['engine']).name} batch {batch}")
        try:
            summary = run_trtexec(
                tool,
                Path(engine_input["engine"]),
                batch,
                engine_input["name"],
                tuple(engine_input["item_shape"]),
                config.duration_s,
                config.warmup_s,
                dla_core=engine_input.get("dla_core"),
            )
        except (RuntimeError, ValueError, OSError) as exc:
            skipped.append({"backend": "trtexec", "precision": precision, "batch": batch, "reason": str(exc)})
            continue
        ours = info["row"]["throughput_ips"]
        rows.append(
            {
                "precision": precision,
                "batch": batch,
                **summary,
                "python_runtime_throughput_ips": ours,
                "python_vs_trtexec": round(ours / summary["throughput_ips"], 4)
                if summary["throughput_ips"]
                else None,
            }
        )
    return rows


def _fill_speedups(rows: list[dict[str, Any]]) -> None:
    keras = {r["batch"]: r["throughput_ips"] for r in rows if r["backend"] == "keras"}
    for row in rows:
        reference = keras.get(row["batch"])
        row["speedup_vs_keras"] = round(row["throughput_ips"] / reference, 3) if reference else None


def _bundle_facts(bundle: Bundle, keras_source: KerasSource | None) -> dict[str, Any]:
    info = bundle.info
    return {
        "path": str(bundle.root),
        "model_version": info.model_version,
        "arch": info.arch,
        "labels": list(info.labels),
        "threshold": info.threshold,
        "threshold_rule": info.threshold_rule,
        "synthetic": info.synthetic,
        "contract": bundle.contract.describe(),
        "manifest_created": bundle.manifest.get("created"),
        "model_sha256": bundle.file_sha256("model.onnx"),
        "files": {
            name: (bundle.root / name).stat().st_size
            for name in ONNX_FOR_PRECISION.values()
            if (bundle.root / name).is_file()
        },
        "keras_h5": str(keras_source.h5) if keras_source else None,
        "intended_use": info.intended_use,
    }
