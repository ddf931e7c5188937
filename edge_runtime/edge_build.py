"""``pneumo edge build``: verify a bundle, build or reuse this device's engines, run the golden self-test.

On the Jetson, after copying a bundle:

1. the manifest is verified (a tampered or truncated file is refused by name);
2. for each precision asked, the engine for this device is reused when its
   sidecar matches (GPU, compute capability, TensorRT version, ONNX sha256,
   profile, workspace, DLA core, build path) or built otherwise, into
   ``engines/<device-key>/`` with the device's timing cache;
3. the golden set (``golden/images.npy`` + ``golden/golden.json``, real
   preprocessed test images with their FP32 outputs from export time) runs
   through the engine and is compared with the expected outputs: the maximum
   absolute difference must be within the precision's tolerance, and no
   decision at the threshold may flip except for images whose expected
   probability lies within that tolerance of the threshold.

Where TensorRT is absent the same self-test runs through ONNX Runtime on the
bundle's ONNX variants (``backend="ort-cpu"``), so a bundle can be verified on
any machine; engines themselves are only ever built on the device.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_runtime.backends.base import BACKEND_NAMES, Backend
from edge_runtime.bundle import GOLDEN_DIR, ONNX_FOR_PRECISION, Bundle
from edge_runtime.engine_from_onnx import (
    PRECISIONS,
    CalibrationData,
    EngineBuildConfig,
    OnnxSources,
    build_engine,
    check_dla_batch,
    default_batch_sizes,
    int8_calibration_available,
    parse_batch_sizes,
    plan_build,
)
from edge_runtime.engine_sidecar import EngineFiles, EngineSidecar, engine_files, engine_mismatches
from edge_runtime.errors import BackendUnavailableError, BundleError, EdgeError, UsageError
from edge_runtime.fileio import sha256_file
from edge_runtime.golden import META_FILE as GOLDEN_META
from edge_runtime.golden import GoldenComparison, GoldenSet, compare_golden, run_golden

CALIBRATION_NPY = "calibration/calib.npy"
SELF_TEST_BACKENDS = BACKEND_NAMES


def parse_precisions(text: str) -> tuple[str, ...]:
    """'all' -> fp32, fp16, int8; 'fp16,int8' -> fp16, int8."""
    if text.strip() == "all":
        return PRECISIONS
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in chosen if p not in PRECISIONS]
    if not chosen or unknown:
        raise UsageError(f"--precision {text!r}: expected fp32, fp16, int8, a comma list of them, or all")
    return chosen


@dataclass(frozen=True)
class EdgeBuildConfig:
    """``pneumo edge build`` settings."""

    precisions: tuple[str, ...] = ("fp32",)
    #: empty: 1,8,32 on the GPU, 1 on a DLA core (:func:`edge_runtime.engine_from_onnx.default_batch_sizes`)
    batch_sizes: tuple[int, ...] = ()
    workspace_mib: int = 1024
    dla_core: int | None = None
    backend: str = "trt"
    int8_source: str = "auto"
    rebuild: bool = False
    verbose: bool = False
    # '--precision all': build what the bundle has (export may leave INT8 out and say why), not fail on the rest.
    only_in_bundle: bool = False

    def __post_init__(self) -> None:
        sizes = self.batch_sizes or default_batch_sizes(self.dla_core)
        object.__setattr__(self, "batch_sizes", parse_batch_sizes(sizes))
        # Checked before any engine is built, not per precision half-way through the build.
        check_dla_batch(self.dla_core, self.batch_sizes)
        if self.backend not in SELF_TEST_BACKENDS:
            raise EdgeError(f"--backend {self.backend!r}: expected one of {', '.join(SELF_TEST_BACKENDS)}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise EdgeError(f"precision {precision!r}: expected one of {PRECISIONS}")

    def engine_config(self, precision: str, files: EngineFiles) -> EngineBuildConfig:
        return EngineBuildConfig(
            precision=precision,
            batch_sizes=self.batch_sizes,
            workspace_mib=self.workspace_mib,
            dla_core=self.dla_core,
            int8_source=self.int8_source,
            timing_cache=files.timing_cache,
            calibration_cache=files.calibration_cache,
            verbose=self.verbose,
        )


def edge_build_command(bundle_root: str | Path, config: EdgeBuildConfig, precision: str | None = None) -> str:
    """The command line that reproduces this build (goes into sidecars and error messages)."""
    args = [
        "pneumo",
        "edge",
        "build",
        str(bundle_root),
        "--precision",
        precision or ",".join(config.precisions),
    ]
    args += ["--batch", ",".join(str(b) for b in config.batch_sizes)]
    if config.workspace_mib != 1024:
        args += ["--workspace", str(config.workspace_mib)]
    if config.dla_core is not None:
        args += ["--dla", str(config.dla_core)]
    if config.int8_source != "auto":
        args += ["--int8-source", config.int8_source]
    return shlex.join(args)


@dataclass
class PrecisionResult:
    """One row of the pass/fail table."""

    precision: str
    backend: str
    status: str  # pass | fail | error
    engine: str | None = None
    engine_action: str = "-"  # built | reused | -
    build_seconds: float | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    decision_agreement: float | None = None
    flipped: list[str] = field(default_factory=list)
    accuracy: float | None = None
    n: int = 0
    message: str = ""


@dataclass
class EdgeBuildReport:
    bundle: str
    model_version: str
    synthetic: bool
    backend: str
    device_key: str | None
    results: list[PrecisionResult]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.status == "pass" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def reuse_problem(
    files: EngineFiles,
    sidecar: EngineSidecar | None,
    wanted: EngineBuildConfig,
    *,
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    bundle: Bundle,
    build_path: str,
) -> str | None:
    """Why the existing engine cannot be reused for ``wanted``, or None when it can."""
    if sidecar is None or not files.engine.is_file():
        return "no engine built yet"
    onnx_path = bundle.root / sidecar.onnx_file
    onnx_sha = bundle.file_sha256(sidecar.onnx_file) if onnx_path.is_file() else "missing"
    problems = engine_mismatches(
        sidecar,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        tensorrt_version=tensorrt_version,
        onnx_sha256=onnx_sha,
    )
    profile = wanted.profile
    want_profile = [profile.min, profile.opt, profile.max]
    have = next(iter(sidecar.profile.values()), {})
    have_profile = [have.get(k, [None])[0] for k in ("min", "opt", "max")]
    if have_profile != want_profile:
        problems.append(f"batch profile {have_profile} != {want_profile}")
    if sidecar.precision != wanted.precision:
        problems.append(f"precision {sidecar.precision} != {wanted.precision}")
    if sidecar.workspace_mib != wanted.workspace_mib:
        problems.append(f"workspace {sidecar.workspace_mib} MiB != {wanted.workspace_mib} MiB")
    if sidecar.dla_core != wanted.dla_core:
        problems.append(f"DLA core {sidecar.dla_core} != {wanted.dla_core}")
    if sidecar.build_path != build_path:
        problems.append(f"build path {sidecar.build_path} != {build_path}")
    if (
        files.engine.stat().st_size != sidecar.engine_bytes
        or sha256_file(files.engine) != sidecar.engine_sha256
    ):
        problems.append("engine file does not match its sidecar sha256")
    return "; ".join(problems) or None


def _build_or_reuse(
    bundle: Bundle,
    precision: str,
    config: EdgeBuildConfig,
    key: str,
    gpu: Any,
    trt_version: str,
    say: Callable[[str], None],
) -> tuple[EngineFiles, EngineSidecar, str]:
    files = engine_files(bundle.engines_dir, key, precision, config.dla_core)
    sources = OnnxSources.from_bundle(bundle)
    calibration = None
    # calib.npy (tens of MB) is read only where the calibrator may run: not for the Q/DQ model
    calibrator_possible = config.int8_source == "calibrator" or (
        config.int8_source == "auto" and not sources.has("int8_qdq")
    )
    if precision == "int8" and calibrator_possible and (bundle.root / CALIBRATION_NPY).is_file():
        calibration = CalibrationData.from_npy(bundle.root / CALIBRATION_NPY)
    wanted = config.engine_config(precision, files)
    available = precision == "int8" and int8_calibration_available(
        sources, files.calibration_cache, trt_version, calibration
    )
    # the same facts build_engine plans from, so the reuse check compares the build path it will take
    plan = plan_build(
        trt_version, precision, config.int8_source, available, qdq_available=sources.has("int8_qdq")
    )
    sidecar = None
    if files.sidecar.is_file():
        try:
            sidecar = EngineSidecar.load(files.sidecar)
        except EdgeError:
            sidecar = None
    problem = (
        "--rebuild asked"
        if config.rebuild
        else reuse_problem(
            files,
            sidecar,
            wanted,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            tensorrt_version=trt_version,
            bundle=bundle,
            build_path=plan.build_path,
        )
    )
    if problem is None and sidecar is not None:
        say(f"{precision}: reusing {files.engine} (sidecar matches this device)")
        return files, sidecar, "reused"
    how = f"{plan.build_path}, {plan.int8_reason}" if plan.int8_reason else plan.build_path
    say(f"{precision}: building {files.engine} ({problem}; {how}; this takes minutes on a Jetson)")
    sidecar = build_engine(
        sources,
        files.engine,
        wanted,
        calibration,
        rebuild_command=edge_build_command(bundle.root, config, precision),
    )
    return files, sidecar, "built"


def run_edge_build(
    bundle_root: str | Path, config: EdgeBuildConfig, progress: Callable[[str], None] | None = None
) -> EdgeBuildReport:
    """Verify, build or reuse, self-test. Raises BundleError / BackendUnavailableError up front;
    per-precision build or test failures become failed rows so every precision gets its line."""
    say = progress or (lambda _message: None)
    bundle = Bundle.open(bundle_root)
    say(f"manifest verified: {len(bundle.manifest.get('files', {}))} files match their sha256")
    golden = GoldenSet.load(bundle.root / GOLDEN_DIR, bundle.contract.input_shape, bundle.info.threshold)
    precisions = _precisions_to_build(bundle, golden, config, say)
    key = None
    gpu: Any = None
    trt_version = ""
    if config.backend == "trt":
        from edge_runtime.device import device_key, tensorrt_and_gpu

        try:
            trt_version, gpu = tensorrt_and_gpu()
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"{exc}. Engines can only be built on the device that runs them. To verify this bundle "
                f"here anyway, self-test its ONNX models with ONNX Runtime: pneumo edge build "
                f"{shlex.quote(str(bundle.root))} --precision all --backend ort-cpu"
            ) from exc
        key = device_key(gpu.name, gpu.compute_capability, trt_version)
        # Checked before minutes of building, not when the finished engine cannot be saved.
        require_writable_folder(bundle.engines_dir / key)
    results = []
    for precision in precisions:
        results.append(_one_precision(bundle, golden, precision, config, key, gpu, trt_version, say))
    return EdgeBuildReport(
        str(bundle.root), bundle.info.model_version, bundle.info.synthetic, config.backend, key, results
    )


def carried_precisions(bundle: Bundle, golden: GoldenSet, backend: str = "trt") -> tuple[str, ...]:
    """The precisions ``backend`` can run this bundle in and self-test: a golden tolerance and a model each."""
    return tuple(p for p in PRECISIONS if p in golden.tolerance and _has_model(bundle, p, backend))


def _has_model(bundle: Bundle, precision: str, backend: str) -> bool:
    """ONNX Runtime runs the precision's own ONNX file; TensorRT builds more from model.onnx.

    TensorRT 10 builds FP16 from model.onnx with a builder flag, and INT8 with its calibrator
    on the bundle's calibration set when the Q/DQ model is absent.
    """
    if precision in bundle.precisions or backend != "trt":
        return precision in bundle.precisions
    return precision != "int8" or (bundle.root / CALIBRATION_NPY).is_file()


def _precisions_to_build(
    bundle: Bundle, golden: GoldenSet, config: EdgeBuildConfig, say: Callable[[str], None]
) -> tuple[str, ...]:
    """``config.precisions``, checked against the bundle before any engine is built.

    A bundle exported without fp16 has no fp16 golden tolerance; TensorRT 10 would still build
    an FP16 engine from model.onnx (minutes on a Jetson) and only then fail the self-test.
    With ``--precision all`` the ones the bundle lacks are skipped; asked for by name, refused.
    """
    carried = carried_precisions(bundle, golden, config.backend)
    if config.only_in_bundle:
        for skipped in (p for p in config.precisions if p not in carried):
            say(f"{skipped}: not in this bundle (its export_report.json says why); skipped")
        return tuple(p for p in config.precisions if p in carried)
    missing = [p for p in config.precisions if p not in carried]
    if not missing:
        return config.precisions
    reasons = [_missing_reason(bundle, golden, p, config.backend) for p in missing]
    example = f"pneumo edge build {shlex.quote(str(bundle.root))} --precision {','.join(carried) or 'fp32'}"
    raise BundleError(
        f"{bundle.root}: this bundle has {'; '.join(reasons)}; it carries {', '.join(carried) or 'none'}. "
        f"Build those ('{example}'), or re-export with 'pneumo export bundle RUN --precisions "
        f"{','.join(dict.fromkeys(('fp32', *missing)))}'"
    )


def _missing_reason(bundle: Bundle, golden: GoldenSet, precision: str, backend: str) -> str:
    model = f"no {precision} model ({ONNX_FOR_PRECISION[precision]}"
    model += f" nor {CALIBRATION_NPY})" if precision == "int8" and backend == "trt" else ")"
    if precision in golden.tolerance:
        return model
    tolerance = f"no {precision} tolerance in {GOLDEN_DIR}/{GOLDEN_META}"
    return (
        f"{model} and {tolerance}"
        if precision not in bundle.precisions
        else f"{tolerance} to self-test it against"
    )


def require_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there, or raise naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BundleError(
            f"{folder}: cannot write engines here ({exc.strerror or exc}); engines are saved inside the "
            "bundle, so copy the bundle to a writable folder first (deploy/JETSON.md uses ~/bundles/)"
        ) from exc


def _one_precision(
    bundle: Bundle,
    golden: GoldenSet,
    precision: str,
    config: EdgeBuildConfig,
    key: str | None,
    gpu: Any,
    trt_version: str,
    say: Callable[[str], None],
) -> PrecisionResult:
    result = PrecisionResult(precision, config.backend, "error")
    engine: tuple[EngineFiles, EngineSidecar] | None = None
    try:
        backend: Backend
        if config.backend == "trt":
            assert key is not None
            from edge_runtime.backends.tensorrt import TensorRTBackend

            files, sidecar, action = _build_or_reuse(bundle, precision, config, key, gpu, trt_version, say)
            engine = files, sidecar
            result.engine, result.engine_action = str(files.engine), action
            result.build_seconds = sidecar.build_seconds if action == "built" else None
            backend = TensorRTBackend(
                files.engine,
                expected_onnx_sha256=bundle.file_sha256(sidecar.onnx_file),
                rebuild_command=edge_build_command(bundle.root, config, precision),
                expected_precision=precision,
                expected_item_shape=bundle.contract.input_shape,
            )
        else:
            from edge_runtime.backends.select import create_backend

            # no gate: this runs the same golden set itself and reports its figures as the row
            backend = create_backend(bundle, config.backend, precision, golden_gated=())
        with backend:
            outputs = run_golden(backend, golden)
        _fill_comparison(result, compare_golden(outputs, golden, bundle.info, precision))
    except EdgeError as exc:
        result.message = str(exc)
        say(f"{precision}: ERROR {exc}")
    except OSError as exc:  # disk full or removed mid-build: this precision fails, the others still run
        result.message = f"{exc.filename or bundle.engines_dir}: {exc.strerror or exc}"
        say(f"{precision}: ERROR {result.message}")
    if engine is not None:
        _record_self_test(bundle, result, *engine)
    return result


def _fill_comparison(result: PrecisionResult, comparison: GoldenComparison) -> None:
    result.status = "pass" if comparison.passed else "fail"
    result.max_abs_diff, result.tolerance = comparison.max_abs_diff, comparison.tolerance
    result.decision_agreement, result.flipped = comparison.decision_agreement, comparison.flipped
    result.accuracy, result.n = comparison.accuracy, comparison.n
    result.message = comparison.failure() or ""


def _record_self_test(
    bundle: Bundle, result: PrecisionResult, files: EngineFiles, sidecar: EngineSidecar
) -> None:
    """Write the self-test outcome into the engine's sidecar: the runtime refuses an engine without a pass."""
    record = {
        "status": result.status,
        "message": result.message,
        "max_abs_diff": result.max_abs_diff,
        "tolerance": result.tolerance,
        "decision_agreement": result.decision_agreement,
        "golden_sha256": bundle.golden_sha256(),
        "checked": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        replace(sidecar, self_test=record).save(files.sidecar)
    except OSError as exc:
        # unrecorded, the runtime refuses the engine: safe, and said here
        result.status = "error"
        result.message = f"{files.sidecar}: cannot record the self-test ({exc.strerror or exc})"
