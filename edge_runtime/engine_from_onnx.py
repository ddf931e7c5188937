"""Build a TensorRT engine from an ONNX model, on the device that will run it.

This is one of the two modules that touch TensorRT (the other executes:
:mod:`edge_runtime.backends.tensorrt`). ``tensorrt`` and ``pycuda`` are
imported inside the functions that need them, so the module imports anywhere
and its wiring is tested with ``tests/edge_runtime/trt_double.py``.

Which TensorRT API path builds which precision is decided in exactly one
place, :func:`plan_build`, from ``tensorrt.__version__``:

=========  ==========================================  =============================================
precision  TensorRT 10.x (JetPack 6)                   TensorRT 11.x
=========  ==========================================  =============================================
fp32       model.onnx, no precision flag, TF32 off     model.onnx, strongly typed
fp16       model.onnx + ``BuilderFlag.FP16``           model_fp16.onnx (typed graph), strongly typed
int8       model_int8_qdq.onnx (Q/DQ), strongly        model_int8_qdq.onnx (Q/DQ), strongly typed
           typed; or the entropy calibrator on
           model.onnx (see the list below)
=========  ==========================================  =============================================

INT8 on TensorRT 10, by ``int8_source``:

* ``auto`` (the default): the Q/DQ model whenever there is one. It is the
  graph ``pneumo export`` measured (accuracy, parity with FP32, the INT8
  figures the bundle reports), so the engine is the INT8 model that was
  checked. Only without a Q/DQ model, and with a calibration set or a valid
  calibration cache at hand, does it calibrate model.onnx instead.
* ``calibrator``: model.onnx + ``BuilderFlag.INT8`` + ``IInt8EntropyCalibrator2``
  (cache reused only when TensorRT version, calibration set and model match).
  Its scales are TensorRT's own, not the ones export measured; the golden
  self-test of ``pneumo edge build`` is then the only check of that engine.
* ``qdq``: the Q/DQ model, or an error naming it when it is missing.

TensorRT 11 removed the precision flags and implicit (calibrator) INT8; the
Q/DQ graph it builds from is the very one ONNX Runtime runs in CI, so its
accuracy is measured without a GPU. INT8 never builds without real
calibration data: no calibrator is ever run on random data.

Every build also sets an optimization profile for the batch sizes asked,
a workspace limit (builds on a 4 GB Jetson Nano are killed without one),
a timing cache reused across builds on the device, and optionally a DLA
core with GPU fallback. The result is the engine plus its sidecar
(:class:`edge_runtime.engine_sidecar.EngineSidecar`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import __version__
from edge_runtime.bundle import ONNX_FOR_PRECISION, Bundle
from edge_runtime.device import TENSORRT_HINT, CudaDevice, cuda_device, device_key, tensorrt_too_old
from edge_runtime.engine_sidecar import (
    CalibrationCacheInfo,
    EngineSidecar,
    calibration_cache_info,
    calibration_cache_problem,
    sidecar_path,
)
from edge_runtime.errors import BackendUnavailableError, EngineBuildError
from edge_runtime.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INT8_SOURCES = ("auto", "calibrator", "qdq")
MAX_BATCH = 4096
MIN_WORKSPACE_MIB = 16


def parse_batch_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32): the batch sizes the engine's optimization profile must cover."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = sorted({int(str(item).strip()) for item in items if str(item).strip()})
    except ValueError as exc:
        raise EngineBuildError(f"--batch {text!r}: expected comma-separated integers like 1,8,32") from exc
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_BATCH:
        raise EngineBuildError(f"--batch {text!r}: batch sizes must be within 1..{MAX_BATCH}")
    return tuple(sizes)


#: A DLA engine's one batch size when none is asked: one image at a time, as a clinic sends them.
DLA_BATCH_SIZES = (1,)


def default_batch_sizes(dla_core: int | None) -> tuple[int, ...]:
    """The profile's batch sizes when ``--batch`` is not given: 1,8,32 on the GPU, 1 on a DLA core."""
    return DLA_BATCH_SIZES if dla_core is not None else (1, 8, 32)


def check_dla_batch(dla_core: int | None, batch_sizes: Sequence[int]) -> None:
    """Refuse a batch range on a DLA core: the DLA has no dynamic shapes.

    TensorRT's DLA layer restrictions: "DLA does not support dynamic dimensions, so the profile's
    min, max, and opt values must be equal". With GPU fallback on, a range is not an error: every
    layer silently runs on the GPU, and the engine would be a GPU engine named and recorded as DLA.
    """
    if dla_core is not None and len(set(batch_sizes)) > 1:
        sizes = ",".join(str(b) for b in batch_sizes)
        raise EngineBuildError(
            f"--dla {dla_core} with --batch {sizes}: a DLA engine runs one fixed batch size (the DLA has no "
            "dynamic shapes; with a range every layer would silently run on the GPU). Pass one size, "
            "e.g. --batch 1 (the default with --dla), or build without --dla for a batch range"
        )


@dataclass(frozen=True)
class BatchProfile:
    """min / opt / max batch of one optimization profile.

    opt is the middle size asked (8 of 1,8,32): TensorRT tunes kernels for opt
    and only guarantees min..max, so the common batch goes in the middle.
    """

    min: int
    opt: int
    max: int

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> BatchProfile:
        ordered = sorted(sizes)
        return cls(ordered[0], ordered[len(ordered) // 2], ordered[-1])

    def shapes(self, item_shape: Sequence[int]) -> dict[str, list[int]]:
        item = [int(d) for d in item_shape]
        return {"min": [self.min, *item], "opt": [self.opt, *item], "max": [self.max, *item]}


@dataclass(frozen=True)
class EngineBuildConfig:
    """One engine build. CLIs map their flags onto this; nothing below sees argparse."""

    precision: str = "fp32"
    #: empty: the default for where it runs (:func:`default_batch_sizes`)
    batch_sizes: tuple[int, ...] = ()
    workspace_mib: int = 1024
    dla_core: int | None = None
    int8_source: str = "auto"
    calibration_batch_size: int = 8
    timing_cache: Path | None = None
    calibration_cache: Path | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineBuildError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        sizes = self.batch_sizes or default_batch_sizes(self.dla_core)
        object.__setattr__(self, "batch_sizes", parse_batch_sizes(sizes))
        if self.workspace_mib < MIN_WORKSPACE_MIB:
            raise EngineBuildError(
                f"--workspace {self.workspace_mib} MiB is below the {MIN_WORKSPACE_MIB} MiB minimum"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise EngineBuildError(f"--dla {self.dla_core}: a DLA core number is 0 or more")
        check_dla_batch(self.dla_core, self.batch_sizes)
        if self.int8_source not in INT8_SOURCES:
            raise EngineBuildError(f"int8 source {self.int8_source!r}: expected one of {INT8_SOURCES}")
        if not 1 <= self.calibration_batch_size <= MAX_BATCH:
            raise EngineBuildError(
                f"calibration batch size {self.calibration_batch_size} is outside 1..{MAX_BATCH}"
            )

    @property
    def profile(self) -> BatchProfile:
        return BatchProfile.from_sizes(self.batch_sizes)


@dataclass(frozen=True)
class OnnxSources:
    """The ONNX variants a build may start from (bundle naming: model.onnx, model_fp16.onnx, ...)."""

    fp32: Path | None = None
    fp16: Path | None = None
    int8_qdq: Path | None = None

    @classmethod
    def beside(cls, model_onnx: str | Path) -> OnnxSources:
        """``model.onnx`` plus whichever FP16 / Q/DQ siblings exist next to it."""
        model_onnx = Path(model_onnx)
        folder = model_onnx.parent

        def sibling(name: str) -> Path | None:
            path = folder / name
            return path if path.is_file() else None

        return cls(model_onnx, sibling(ONNX_FOR_PRECISION["fp16"]), sibling(ONNX_FOR_PRECISION["int8"]))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> OnnxSources:
        return cls.beside(bundle.root / ONNX_FOR_PRECISION["fp32"])

    def has(self, role: str) -> bool:
        """The ``role`` model ("fp32", "fp16", "int8_qdq") is on disk."""
        path = {"fp32": self.fp32, "fp16": self.fp16, "int8_qdq": self.int8_qdq}[role]
        return path is not None and path.is_file()

    def path_for(self, role: str) -> Path:
        path = {"fp32": self.fp32, "fp16": self.fp16, "int8_qdq": self.int8_qdq}[role]
        name = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8_qdq": "model_int8_qdq.onnx"}[role]
        if path is None or not path.is_file():
            raise EngineBuildError(
                f"{path or name}: this build needs the {role} ONNX model and it is missing; "
                "re-run 'pneumo export bundle' (it writes model.onnx, model_fp16.onnx and model_int8_qdq.onnx)"
            )
        return path


@dataclass(frozen=True)
class CalibrationData:
    """Preprocessed calibration images (uint8 NHWC, from the training split) and their hash.

    Any array works, so the calibrator is testable without files; ``sha256``
    identifies the set, and a calibration cache is only reused for the same set.
    """

    images: np.ndarray
    sha256: str
    source: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise EngineBuildError(
                f"{self.source}: calibration images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) == 0:
            raise EngineBuildError(f"{self.source}: the calibration set is empty")

    @classmethod
    def from_npy(cls, path: str | Path) -> CalibrationData:
        path = Path(path)
        if not path.is_file():
            raise EngineBuildError(f"{path}: calibration set not found (the bundle's calibration/calib.npy)")
        try:
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EngineBuildError(f"{path}: unreadable calibration set ({exc})") from exc
        return cls(images, sha256_file(path), str(path))

    @classmethod
    def from_array(cls, images: np.ndarray, source: str = "calibration array") -> CalibrationData:
        digest = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        return cls(images, digest.hexdigest(), source)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Full batches only: TensorRT calibrates on the calibration profile's exact shape.

        When the set does not divide into batches, the images left out are spread evenly over
        it rather than cut from its end: export stores the set class by class, so its end is
        all one class.
        """
        usable = self.usable_images(batch_size)
        chosen = spread_indices(len(self.images), usable)
        for start in range(0, usable, batch_size):
            yield np.ascontiguousarray(self.images[chosen[start : start + batch_size]], dtype=np.uint8)

    def usable_images(self, batch_size: int) -> int:
        return (len(self.images) // batch_size) * batch_size


def spread_indices(total: int, count: int) -> np.ndarray:
    """``min(count, total)`` indices of ``range(total)`` evenly spaced from the first, in order.

    A calibration set is stored class by class, so any subset of it (a probe, the images that fill
    whole batches) is taken across it, never from one end: ``i * total // count`` is strictly
    increasing for ``count <= total``, and is every index when ``count == total``.
    """
    count = min(count, total)
    return (np.arange(count) * total) // max(count, 1)


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX file, network mode and builder flags produce ``precision`` on a TensorRT version."""

    tensorrt_major: int
    precision: str
    onnx_role: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    calibrator: bool
    #: INT8 only: why this source of scales was chosen (recorded in the engine sidecar)
    int8_reason: str = ""

    @property
    def build_path(self) -> str:
        if self.strongly_typed:
            return f"trt{self.tensorrt_major}-strongly-typed"
        return f"trt{self.tensorrt_major}-builder-flags" + ("+entropy-calibrator" if self.calibrator else "")


def tensorrt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError as exc:
        raise EngineBuildError(f"cannot read TensorRT version {version!r}") from exc


def plan_build(
    trt_version: str,
    precision: str,
    int8_source: str = "auto",
    calibration_available: bool = False,
    *,
    qdq_available: bool = True,
) -> BuildPlan:
    """THE place that chooses the TensorRT 10 or 11 path (see the module docstring's table).

    ``qdq_available``: the Q/DQ model (``model_int8_qdq.onnx``) exists; callers
    pass what they found on disk (:meth:`OnnxSources.has`).
    ``calibration_available``: a calibration set or a valid calibration cache is
    at hand. With ``int8_source="auto"`` TensorRT 10 builds the Q/DQ model
    whenever it exists, since that is the graph export measured, and calibrates
    model.onnx with ``IInt8EntropyCalibrator2`` only when there is no Q/DQ model
    but calibration data; ``"calibrator"`` and ``"qdq"`` force one.
    """
    major = tensorrt_major(trt_version)
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if too_old := tensorrt_too_old(trt_version):
        raise EngineBuildError(too_old)
    if major >= 11:
        if precision == "int8" and int8_source == "calibrator":
            raise EngineBuildError(
                f"TensorRT {trt_version} removed implicit INT8 calibration (IInt8EntropyCalibrator2); "
                "build INT8 from the bundle's Q/DQ model instead (--int8-source auto, the default, or qdq)"
            )
        role = {"fp32": "fp32", "fp16": "fp16", "int8": "int8_qdq"}[precision]
        reason = f"TensorRT {major} builds INT8 from the Q/DQ model only" if precision == "int8" else ""
        return BuildPlan(major, precision, role, True, (), False, reason)
    if precision == "fp32":
        return BuildPlan(major, precision, "fp32", False, (), False)
    if precision == "fp16":
        return BuildPlan(major, precision, "fp32", False, ("FP16",), False)
    source, reason = _int8_source(int8_source, qdq_available, calibration_available)
    if source == "calibrator":
        return BuildPlan(major, precision, "fp32", False, ("INT8",), True, reason)
    return BuildPlan(major, precision, "int8_qdq", True, (), False, reason)


def _int8_source(int8_source: str, qdq_available: bool, calibration_available: bool) -> tuple[str, str]:
    """TensorRT 10's INT8 source ("calibrator" or "qdq") and why, for the sidecar."""
    if int8_source != "auto":
        return int8_source, f"--int8-source {int8_source} asked"
    if qdq_available:
        return "qdq", "auto: the bundle's Q/DQ model is the INT8 graph export measured"
    if calibration_available:
        return "calibrator", "auto: the bundle has no Q/DQ model, only calibration data"
    # Neither: the Q/DQ role makes the build fail naming the missing model_int8_qdq.onnx.
    return "qdq", "auto: neither a Q/DQ model nor calibration data"


def trtexec_equivalent(
    plan: BuildPlan,
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, dict[str, list[int]]],
    config: EngineBuildConfig,
    calibration_cache: Path | None = None,
) -> str:
    """The trtexec command line that builds the same engine (recorded in the sidecar for debugging).

    trtexec cannot calibrate, only read a cache (without one it uses random
    scales), so the INT8 calibrator path maps to ``--int8 --calib=CACHE``.
    """

    def dims(kind: str) -> str:
        return ",".join(
            f"{name}:{'x'.join(str(d) for d in shapes[kind])}" for name, shapes in profile.items()
        )

    args = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={dims('min')}",
        f"--optShapes={dims('opt')}",
        f"--maxShapes={dims('max')}",
        f"--memPoolSize=workspace:{config.workspace_mib}M",
    ]
    if config.timing_cache is not None:
        args.append(f"--timingCacheFile={config.timing_cache}")
    if plan.strongly_typed:
        args.append("--stronglyTyped")
    else:
        args.append("--noTF32")
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    if "INT8" in plan.builder_flags:
        args.append("--int8")
        if calibration_cache is not None:
            args.append(f"--calib={calibration_cache}")
    if config.dla_core is not None:
        args += [f"--useDLACore={config.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({exc}); {TENSORRT_HINT}") from exc
    return trt


@contextlib.contextmanager
def _primary_context(device_index: int = 0) -> Iterator[None]:
    """Make the GPU's primary CUDA context current while building.

    TensorRT works in the primary context through the runtime API, but pycuda's
    driver calls (the calibrator's mem_alloc and memcpy) need a context current
    on the calling thread; pushing the primary one keeps both in the same context.
    Pushes nest, so the calibrator pushes it again on whatever thread calls it.
    """
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(device_index).retain_primary_context()
    context.push()
    try:
        yield
    finally:
        context.pop()
        context.detach()


def _parse_onnx(
    trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool
) -> tuple[Any, Any]:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so models with external weight files load too.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT could not parse the ONNX model: " + " | ".join(errors or ["no detail"])
        )
    return network, parser


def _profile_shapes(network: Any, batch: BatchProfile, onnx_path: Path) -> dict[str, dict[str, list[int]]]:
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(
                f"{onnx_path}: input {tensor.name!r} has dynamic dimensions {dims} besides the batch; "
                "the bundle's models have a fixed H x W x C"
            )
        if dims[0] >= 0 and (batch.min != dims[0] or batch.max != dims[0]):
            raise EngineBuildError(
                f"{onnx_path}: input {tensor.name!r} has a fixed batch of {dims[0]}, --batch asked "
                f"{batch.min}..{batch.max}; re-export the model with a dynamic batch dimension"
            )
        shapes[str(tensor.name)] = batch.shapes(dims[1:])
    return shapes


def _configure_dla(
    trt: Any, builder: Any, builder_config: Any, dla_core: int, precision: str, max_batch: int
) -> None:
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise EngineBuildError(
            f"--dla {dla_core}: this device has no DLA (deep learning accelerator) cores; Jetson AGX Orin "
            "and Orin NX have 2, Orin Nano and desktop GPUs have none. Build without --dla"
        )
    if dla_core >= cores:
        raise EngineBuildError(f"--dla {dla_core}: this device has DLA cores 0..{cores - 1}")
    if precision == "fp32":
        raise EngineBuildError("--dla: DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla")
    dla_max = int(getattr(builder, "max_DLA_batch_size", 0) or 0)
    if dla_max and max_batch > dla_max:
        raise EngineBuildError(
            f"--dla: the largest batch asked ({max_batch}) is over the DLA's limit of {dla_max}"
        )
    builder_config.default_device_type = trt.DeviceType.DLA
    builder_config.DLA_core = dla_core
    # Layers the DLA cannot run go to the GPU instead of failing the build.
    builder_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _attach_timing_cache(builder_config: Any, path: Path | None, notes: list[str]) -> tuple[Any, bool]:
    if path is None:
        return None, False
    previous = path.read_bytes() if path.is_file() else b""
    cache = builder_config.create_timing_cache(previous)
    reused = bool(previous)
    # ignore_mismatch=False: TensorRT rejects a cache measured on another GPU rather than mis-tuning.
    if not builder_config.set_timing_cache(cache, ignore_mismatch=False) and previous:
        notes.append(f"timing cache {path} was made on another device or TensorRT; started a fresh one")
        cache = builder_config.create_timing_cache(b"")
        builder_config.set_timing_cache(cache, ignore_mismatch=False)
        reused = False
    return cache, reused


@dataclass
class _CalibrationState:
    """What the calibrator did, for the engine sidecar."""

    cache_path: Path
    calibration_sha256: str
    cache_reused: bool = False
    images_used: int = 0
    notes: list[str] = field(default_factory=list)


def _make_entropy_calibrator(
    trt: Any,
    cuda: Any,
    calibration: CalibrationData | None,
    batch_size: int,
    cached: bytes | None,
    state: _CalibrationState,
    cache_info: dict[str, Any],
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``calibration`` (a subclass made here: tensorrt loads lazily)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            # pybind11 trampoline classes need the base __init__ called explicitly.
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = calibration.batches(batch_size) if calibration is not None else iter(())
            self._device_input: Any = None

        def get_batch_size(self) -> int:
            # Explicit-batch networks take the calibration shape from the calibration
            # profile; TensorRT 10 deprecated this and expects 1 here.
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            # TensorRT may call this on a builder thread of its own, where no context is
            # current: pycuda's driver calls need the primary context pushed on this thread.
            with _primary_context():
                if self._device_input is None:
                    self._device_input = cuda.mem_alloc(batch.nbytes)
                cuda.memcpy_htod(self._device_input, batch)
            state.images_used += len(batch)
            return [int(self._device_input)]

        def read_calibration_cache(self) -> bytes | None:
            return cached

        def write_calibration_cache(self, cache: Any) -> None:
            data = bytes(memoryview(cache))
            # The sidecar first: a crash between the two writes then leaves a cache whose sha256
            # does not match (recalibrated next time), never one that looks like somebody else's.
            CalibrationCacheInfo(
                cache_sha256=hashlib.sha256(data).hexdigest(),
                images=state.images_used,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **cache_info,
            ).save(sidecar_path(state.cache_path))
            atomic_write_bytes(state.cache_path, data)

        def free(self) -> None:
            if self._device_input is not None:
                with _primary_context():
                    self._device_input.free()
                self._device_input = None

    return EntropyCalibrator()


def _prepare_calibrator(
    trt: Any,
    builder: Any,
    builder_config: Any,
    input_name: str,
    item_shape: list[int],
    config: EngineBuildConfig,
    calibration: CalibrationData | None,
    cache_path: Path,
    trt_version: str,
    onnx_sha256: str,
) -> tuple[Any, _CalibrationState]:
    problem = calibration_cache_problem(
        cache_path,
        tensorrt_version=trt_version,
        calibration_sha256=calibration.sha256 if calibration is not None else None,
        onnx_sha256=onnx_sha256,
    )
    if problem is not None and cache_path.exists() and calibration_cache_info(cache_path) is None:
        # Not a cache this toolkit wrote (a trtexec cache, or any file of that name): recalibrating
        # would replace it, and reading it would trust scales nobody can trace.
        raise EngineBuildError(
            f"{cache_path} exists but {sidecar_path(cache_path).name} beside it is missing or unreadable, "
            "so this is not a calibration cache pneumo wrote: it is neither used nor replaced. Move it "
            "away, or give another path with --calib-cache"
        )
    if problem is not None and calibration is None:
        raise EngineBuildError(
            "INT8 needs real calibration data: no calibration set was given and the calibration cache "
            f"cannot be used because {problem}. Pass the bundle's calibration/calib.npy "
            "(pneumo edge build does), or build INT8 from the Q/DQ model (--int8-source qdq)"
        )
    info = CalibrationCacheInfo.load(sidecar_path(cache_path)) if problem is None else None
    calibration_sha256 = (
        calibration.sha256 if calibration is not None else (info.calibration_sha256 if info else "")
    )
    state = _CalibrationState(cache_path, calibration_sha256)
    cached: bytes | None = None
    if problem is None:
        cached = cache_path.read_bytes()
        state.cache_reused = True
        state.images_used = info.images if info else 0
    else:
        if cache_path.exists():
            state.notes.append(f"calibration cache {cache_path} not used because {problem}; recalibrated")
            log.warning("calibration cache %s not used because %s; recalibrating", cache_path, problem)
        assert calibration is not None
        if calibration.usable_images(config.calibration_batch_size) == 0:
            raise EngineBuildError(
                f"{calibration.source}: {len(calibration.images)} calibration images is fewer than one "
                f"calibration batch of {config.calibration_batch_size}"
            )
    batch = config.calibration_batch_size
    calib_profile = builder.create_optimization_profile()
    shape = [batch, *item_shape]
    calib_profile.set_shape(input_name, shape, shape, shape)
    builder_config.set_calibration_profile(calib_profile)
    import pycuda.driver as cuda

    cache_info = {
        "tensorrt_version": trt_version,
        "calibration_sha256": calibration_sha256,
        "onnx_sha256": onnx_sha256,
        "batch_size": batch,
    }
    calibrator = _make_entropy_calibrator(
        trt, cuda, None if cached is not None else calibration, batch, cached, state, cache_info
    )
    builder_config.int8_calibrator = calibrator
    return calibrator, state


def int8_calibration_available(
    sources: OnnxSources, cache_path: Path, trt_version: str, calibration: CalibrationData | None
) -> bool:
    """A calibration set, or a calibration cache valid for this TensorRT and model, is at hand."""
    if calibration is not None:
        return True
    if sources.fp32 is None or not sources.fp32.is_file():
        return False
    return (
        calibration_cache_problem(
            cache_path,
            tensorrt_version=trt_version,
            calibration_sha256=None,
            onnx_sha256=sha256_file(sources.fp32),
        )
        is None
    )


def _check_platform(builder: Any, plan: BuildPlan) -> None:
    # TensorRT 10 silently falls back to FP32 kernels where a precision is not fast:
    # refuse instead, so "fp16" always means FP16 ran.
    if "FP16" in plan.builder_flags and getattr(builder, "platform_has_fast_fp16", True) is False:
        raise EngineBuildError(
            "this GPU has no fast FP16 (TensorRT reports none); build --precision fp32 instead"
        )
    if "INT8" in plan.builder_flags and getattr(builder, "platform_has_fast_int8", True) is False:
        raise EngineBuildError(
            "this GPU has no fast INT8 (TensorRT reports none); build --precision fp16 instead"
        )


@dataclass
class _BuildSetup:
    """What one build is, settled before TensorRT builds anything."""

    trt: Any
    trt_version: str
    gpu: CudaDevice
    #: where an entropy calibrator's cache is read and written
    cache_path: Path
    plan: BuildPlan
    onnx_path: Path
    onnx_sha256: str
    #: what the sidecar records about choices made along the way
    notes: list[str] = field(default_factory=list)


def build_engine(
    sources: OnnxSources,
    engine_path: str | Path,
    config: EngineBuildConfig,
    calibration: CalibrationData | None = None,
    rebuild_command: str = "",
) -> EngineSidecar:
    """Build one engine for this device, write it and its sidecar atomically, return the sidecar.

    ``config.timing_cache`` is read before and written after the build;
    ``config.calibration_cache`` (default ``calib_int8.cache`` beside the engine)
    is reused only when its sidecar matches (see
    :func:`edge_runtime.engine_sidecar.calibration_cache_problem`).
    Raises :class:`EngineBuildError` for anything that cannot be built as asked,
    :class:`BackendUnavailableError` when TensorRT, pycuda or a GPU is missing.
    """
    engine_path = Path(engine_path)
    setup = _set_up_build(sources, engine_path, config, calibration)
    trt = setup.trt
    logger = trt.Logger(trt.Logger.VERBOSE if config.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    _check_platform(builder, setup.plan)
    # The parser stays referenced until the build: the network's weights live in its memory.
    network, _parser = _parse_onnx(trt, builder, logger, setup.onnx_path, setup.plan.strongly_typed)
    profile = _profile_shapes(network, config.profile, setup.onnx_path)
    builder_config = _builder_config(builder, setup, config, profile)
    timing_cache, timing_reused = _attach_timing_cache(builder_config, config.timing_cache, setup.notes)
    calibrator, calibration_state = _calibrator_if_planned(
        builder, builder_config, setup, config, profile, calibration
    )
    data, seconds = _serialize(builder, network, builder_config, calibrator, setup.onnx_path, config)
    atomic_write_bytes(engine_path, data)
    if timing_cache is not None and config.timing_cache is not None:
        atomic_write_bytes(
            config.timing_cache, bytes(memoryview(builder_config.get_timing_cache().serialize()))
        )
    sidecar = _engine_sidecar(
        setup,
        config,
        engine_path,
        data,
        seconds,
        profile,
        _calibration_record(setup, config, calibration_state),
        timing_reused,
        rebuild_command,
    )
    sidecar.save(sidecar_path(engine_path))
    log.info(
        "built %s engine %s in %.1f s (%s)", config.precision, engine_path, seconds, setup.plan.build_path
    )
    return sidecar


def _set_up_build(
    sources: OnnxSources, engine_path: Path, config: EngineBuildConfig, calibration: CalibrationData | None
) -> _BuildSetup:
    """TensorRT, the GPU, the build path for this TensorRT version and the ONNX file it starts from."""
    trt = _import_tensorrt()
    trt_version = str(trt.__version__)
    gpu = cuda_device()
    cache_path = config.calibration_cache or engine_path.with_name("calib_int8.cache")
    available = config.precision == "int8" and int8_calibration_available(
        sources, cache_path, trt_version, calibration
    )
    plan = plan_build(
        trt_version, config.precision, config.int8_source, available, qdq_available=sources.has("int8_qdq")
    )
    onnx_path = sources.path_for(plan.onnx_role)
    if (
        calibration is not None
        and config.int8_source == "auto"
        and plan.onnx_role == "int8_qdq"
        and plan.tensorrt_major < 11
    ):
        log.warning(
            "%s: building the Q/DQ model export measured; the calibration set given is not used "
            "(--int8-source calibrator calibrates %s with it instead)",
            onnx_path,
            sources.path_for("fp32").name,
        )
    return _BuildSetup(trt, trt_version, gpu, cache_path, plan, onnx_path, sha256_file(onnx_path))


def _builder_config(
    builder: Any, setup: _BuildSetup, config: EngineBuildConfig, profile: dict[str, dict[str, list[int]]]
) -> Any:
    """Workspace, precision flags, the batch profile and DLA placement."""
    trt, plan, notes = setup.trt, setup.plan, setup.notes
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    for flag in plan.builder_flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    if not plan.strongly_typed and hasattr(trt.BuilderFlag, "TF32"):
        # TensorRT enables TF32 by default on Ampere (Orin): 10-bit mantissas in an "fp32" engine.
        builder_config.clear_flag(trt.BuilderFlag.TF32)
        notes.append("TF32 disabled so fp32 layers compute in full FP32")
    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    builder_config.add_optimization_profile(trt_profile)
    if config.dla_core is not None:
        _configure_dla(trt, builder, builder_config, config.dla_core, config.precision, config.profile.max)
    return builder_config


def _calibrator_if_planned(
    builder: Any,
    builder_config: Any,
    setup: _BuildSetup,
    config: EngineBuildConfig,
    profile: dict[str, dict[str, list[int]]],
    calibration: CalibrationData | None,
) -> tuple[Any, _CalibrationState | None]:
    """The entropy calibrator the plan asks for, attached to ``builder_config``; (None, None) without."""
    if not setup.plan.calibrator:
        return None, None
    input_name = next(iter(profile))
    calibrator, calibration_state = _prepare_calibrator(
        setup.trt,
        builder,
        builder_config,
        input_name,
        profile[input_name]["min"][1:],
        config,
        calibration,
        setup.cache_path,
        setup.trt_version,
        setup.onnx_sha256,
    )
    setup.notes.extend(calibration_state.notes)
    return calibrator, calibration_state


def _serialize(
    builder: Any,
    network: Any,
    builder_config: Any,
    calibrator: Any,
    onnx_path: Path,
    config: EngineBuildConfig,
) -> tuple[bytes, float]:
    """Build the serialized engine; its bytes and the seconds the build took."""
    started = time.perf_counter()
    with _primary_context():
        try:
            serialized = builder.build_serialized_network(network, builder_config)
        finally:
            if calibrator is not None:
                calibrator.free()
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError(
            f"{onnx_path}: TensorRT returned no engine for {config.precision}; re-run with --verbose for the "
            f"builder log (out of memory? raise --workspace, now {config.workspace_mib} MiB)"
        )
    return bytes(memoryview(serialized)), seconds


def _calibration_record(
    setup: _BuildSetup, config: EngineBuildConfig, calibration_state: _CalibrationState | None
) -> dict[str, Any] | None:
    """How an INT8 engine got its scales: the entropy calibrator's data and cache, or the Q/DQ model."""
    if calibration_state is not None:
        return {
            "source": "entropy-calibrator-2",
            "calibration_sha256": calibration_state.calibration_sha256,
            "cache_file": str(setup.cache_path),
            "cache_reused": calibration_state.cache_reused,
            "images": calibration_state.images_used,
            "batch_size": config.calibration_batch_size,
            "why": setup.plan.int8_reason,
        }
    if config.precision == "int8":
        return {"source": "qdq-onnx", "onnx_file": setup.onnx_path.name, "why": setup.plan.int8_reason}
    return None


def _engine_sidecar(
    setup: _BuildSetup,
    config: EngineBuildConfig,
    engine_path: Path,
    data: bytes,
    seconds: float,
    profile: dict[str, dict[str, list[int]]],
    calibration_record: dict[str, Any] | None,
    timing_reused: bool,
    rebuild_command: str,
) -> EngineSidecar:
    plan, gpu, trt_version = setup.plan, setup.gpu, setup.trt_version
    return EngineSidecar(
        engine_file=engine_path.name,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_bytes=len(data),
        tensorrt_version=trt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        device_key=device_key(gpu.name, gpu.compute_capability, trt_version),
        precision=config.precision,
        requested_precision=config.precision,
        build_path=plan.build_path,
        builder_flags=list(plan.builder_flags) + (["GPU_FALLBACK"] if config.dla_core is not None else []),
        onnx_file=setup.onnx_path.name,
        onnx_sha256=setup.onnx_sha256,
        profile=profile,
        workspace_mib=config.workspace_mib,
        build_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
        dla_core=config.dla_core,
        gpu_fallback=config.dla_core is not None,
        calibration=calibration_record,
        timing_cache=str(config.timing_cache) if config.timing_cache is not None else None,
        timing_cache_reused=timing_reused,
        rebuild_command=rebuild_command,
        trtexec_equivalent=trtexec_equivalent(
            plan, setup.onnx_path, engine_path, profile, config, setup.cache_path if plan.calibrator else None
        ),
        pneumo_edge_version=__version__,
        notes=setup.notes,
    )
