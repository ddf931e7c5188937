"""What an engine is valid for: the sidecar JSON beside every TensorRT engine.

A TensorRT engine is compiled for one GPU model, one TensorRT version and one
ONNX file, and loading it anywhere else fails in obscure ways or, worse, runs.
So every engine gets ``<name>.engine.json`` with the facts it was built under,
and :func:`check_engine_matches` refuses to run it when any of them differs
from the device it is about to run on, naming each difference and the exact
command that rebuilds it. Metadata is kept beside the engine rather than inside
it, so it can be read without TensorRT (the doctor, a technician with ``cat``).

The INT8 calibration cache gets the same treatment (:class:`CalibrationCacheInfo`):
TensorRT's cache file carries no record of the calibration images it came
from, so a cache is only reused when its sidecar names the same TensorRT
version, calibration set hash and ONNX model.

Engine layout inside a bundle (``engines/`` is outside the bundle manifest)::

    engines/<device-key>/model_<precision>[_dla<N>].engine
    engines/<device-key>/model_<precision>[_dla<N>].engine.json   this sidecar
    engines/<device-key>/timing.cache                           shared by every build on that device
    engines/<device-key>/calib_int8.cache (+ .json)             TensorRT 10 calibrator cache
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_runtime.errors import EngineMismatchError
from edge_runtime.fileio import atomic_write_json, read_json, sha256_file

SIDECAR_SCHEMA = 1
CALIBRATION_CACHE_SCHEMA = 1
TIMING_CACHE_NAME = "timing.cache"
CALIBRATION_CACHE_NAME = "calib_int8.cache"


def sidecar_path(engine_path: str | Path) -> Path:
    """``model_fp16.engine`` -> ``model_fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@dataclass(frozen=True)
class EngineFiles:
    """Where one engine, its sidecar and its device's caches live."""

    engine: Path
    sidecar: Path
    timing_cache: Path
    calibration_cache: Path


def engine_files(
    engines_root: str | Path, key: str, precision: str, dla_core: int | None = None
) -> EngineFiles:
    """Paths for ``precision`` on the device ``key`` (see :func:`edge_runtime.device.device_key`)."""
    folder = Path(engines_root) / key
    suffix = f"_dla{dla_core}" if dla_core is not None else ""
    engine = folder / f"model_{precision}{suffix}.engine"
    return EngineFiles(
        engine, sidecar_path(engine), folder / TIMING_CACHE_NAME, folder / CALIBRATION_CACHE_NAME
    )


@dataclass
class EngineSidecar:
    """Facts an engine was built under. Written atomically beside the engine.

    ``precision`` is the precision the build was asked for (``--precision``, after
    ``export engine --precision best`` is resolved), and ``requested_precision``
    records the same value: a build either produces that precision, through the
    builder flag or typed ONNX graph :func:`edge_runtime.engine_from_onnx.plan_build`
    picked (``build_path``, ``builder_flags`` and ``onnx_file`` say which), or fails
    (on the builder-flag path a GPU without fast FP16 / INT8 is refused, not built
    as FP32). It is not read back from the engine: a builder flag allows the
    precision, and TensorRT may still run single layers in a wider type.
    ``profile`` maps each input name to its optimization profile
    ``{"min": [N, H, W, C], "opt": [...], "max": [...]}``.
    """

    engine_file: str
    engine_sha256: str
    engine_bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    device_key: str
    precision: str
    requested_precision: str
    build_path: str
    builder_flags: list[str]
    onnx_file: str
    onnx_sha256: str
    profile: dict[str, dict[str, list[int]]]
    workspace_mib: int
    build_time: str
    build_seconds: float
    dla_core: int | None = None
    gpu_fallback: bool = False
    calibration: dict[str, Any] | None = None
    timing_cache: str | None = None
    timing_cache_reused: bool = False
    rebuild_command: str = ""
    trtexec_equivalent: str = ""
    pneumo_edge_version: str = ""
    schema: int = SIDECAR_SCHEMA
    notes: list[str] = field(default_factory=list)
    #: the golden self-test ``pneumo edge build`` ran on this engine (:func:`self_test_problem`)
    self_test: dict[str, Any] | None = None

    @property
    def max_batch(self) -> int:
        return max(shapes["max"][0] for shapes in self.profile.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> EngineSidecar:
        path = Path(path)
        if not path.is_file():
            raise EngineMismatchError(
                f"{path}: engine sidecar missing, so nothing says what this engine was built for; "
                "rebuild it with 'pneumo edge build BUNDLE --precision ...'"
            )
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise EngineMismatchError(
                f"{path}: unreadable engine sidecar ({exc}); rebuild the engine"
            ) from exc
        if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
            raise EngineMismatchError(
                f"{path}: sidecar schema {data.get('schema') if isinstance(data, dict) else None!r} is not "
                f"{SIDECAR_SCHEMA}; rebuild the engine with this version of pneumo-edge"
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise EngineMismatchError(
                f"{path}: incomplete engine sidecar ({exc}); rebuild the engine"
            ) from exc


def engine_mismatches(
    sidecar: EngineSidecar,
    *,
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    onnx_sha256: str | None = None,
    precision: str | None = None,
) -> list[str]:
    """Each way the engine's build facts differ from this device; empty when it may run here."""
    problems = []
    if sidecar.gpu_name != gpu_name:
        problems.append(f"GPU: built on {sidecar.gpu_name!r}, this device has {gpu_name!r}")
    if sidecar.compute_capability != compute_capability:
        problems.append(
            f"compute capability: built for {sidecar.compute_capability}, this GPU is {compute_capability}"
        )
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT: built with {sidecar.tensorrt_version}, installed is {tensorrt_version}")
    if onnx_sha256 is not None and sidecar.onnx_sha256 != onnx_sha256:
        problems.append(
            f"model: built from ONNX sha256 {sidecar.onnx_sha256[:12]}..., the bundle's is {onnx_sha256[:12]}..."
        )
    if precision is not None and sidecar.precision != precision:
        problems.append(f"precision: the engine is {sidecar.precision}, {precision} was asked for")
    return problems


def check_engine_matches(
    engine_path: str | Path,
    sidecar: EngineSidecar,
    *,
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    onnx_sha256: str | None = None,
    precision: str | None = None,
    rebuild_command: str = "",
) -> None:
    """Raise :class:`EngineMismatchError` unless the engine was built for exactly this device and model."""
    engine_path = Path(engine_path)
    command = (
        rebuild_command
        or sidecar.rebuild_command
        or "pneumo edge build BUNDLE --precision " + sidecar.precision
    )
    problems = engine_mismatches(
        sidecar,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        tensorrt_version=tensorrt_version,
        onnx_sha256=onnx_sha256,
        precision=precision,
    )
    if not engine_path.is_file():
        problems.append("engine file is missing")
    elif (
        engine_path.stat().st_size != sidecar.engine_bytes
        or sha256_file(engine_path) != sidecar.engine_sha256
    ):
        problems.append("engine file does not match the sha256 its sidecar recorded (replaced or corrupt)")
    if problems:
        raise EngineMismatchError(
            f"{engine_path}: refusing to run this engine here, TensorRT engines are not portable: "
            + "; ".join(problems)
            + f". Rebuild it on this device with: {command}"
        )


def self_test_problem(sidecar: EngineSidecar, golden_sha256: dict[str, str]) -> str | None:
    """Why the engine must not classify images: it failed, or never passed, the bundle's golden self-test.

    ``golden_sha256`` maps the bundle's golden files to their manifest sha256; a pass
    recorded against other golden files (an updated bundle) does not count.
    """
    record = sidecar.self_test
    if not isinstance(record, dict):
        return "it has not been through the golden self-test"
    status = record.get("status")
    if status != "pass":
        detail = record.get("message") or "no detail"
        return f"it did not pass the golden self-test ({status}: {detail})"
    if record.get("golden_sha256") != golden_sha256:
        return "its golden self-test ran on other golden files than this bundle's"
    return None


@dataclass
class CalibrationCacheInfo:
    """Sidecar of a TensorRT INT8 calibration cache: what it is valid for."""

    tensorrt_version: str
    calibration_sha256: str
    onnx_sha256: str
    cache_sha256: str
    images: int
    batch_size: int
    algorithm: str = "EntropyCalibration2"
    created: str = ""
    schema: int = CALIBRATION_CACHE_SCHEMA

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationCacheInfo | None:
        try:
            data = read_json(path)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError, AttributeError):
            return None


def calibration_cache_info(cache_path: str | Path) -> CalibrationCacheInfo | None:
    """The sidecar pneumo wrote beside ``cache_path``; None when it is missing, unreadable or of another schema."""
    info = CalibrationCacheInfo.load(sidecar_path(Path(cache_path)))
    return info if info is not None and info.schema == CALIBRATION_CACHE_SCHEMA else None


def calibration_cache_problem(
    cache_path: str | Path, *, tensorrt_version: str, calibration_sha256: str | None, onnx_sha256: str
) -> str | None:
    """Why the cache at ``cache_path`` must not be used, or None when it is valid for this build.

    ``calibration_sha256`` None means "no calibration set at hand": the cache is
    then accepted on TensorRT version, model and its own integrity alone, and the
    sidecar's calibration hash is what the engine sidecar records.
    """
    cache_path = Path(cache_path)
    info_path = sidecar_path(cache_path)
    if not cache_path.is_file():
        return f"{cache_path} does not exist"
    info = calibration_cache_info(cache_path)
    if info is None:
        return f"{info_path} is missing or unreadable, so the cache's origin is unknown"
    if info.tensorrt_version != tensorrt_version:
        return f"it was written by TensorRT {info.tensorrt_version}, this is {tensorrt_version}"
    if calibration_sha256 is not None and info.calibration_sha256 != calibration_sha256:
        return (
            f"it was calibrated on set {info.calibration_sha256[:12]}..., "
            f"the calibration set now is {calibration_sha256[:12]}..."
        )
    if info.onnx_sha256 != onnx_sha256:
        return f"it was calibrated for ONNX {info.onnx_sha256[:12]}..., this model is {onnx_sha256[:12]}..."
    if sha256_file(cache_path) != info.cache_sha256:
        return f"{cache_path} does not match the sha256 in {info_path.name} (modified or corrupt)"
    return None
