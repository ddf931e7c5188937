"""A TEST DOUBLE of the part of ``tensorrt`` and ``pycuda.driver`` that pneumo-edge uses. Not TensorRT.

TensorRT and pycuda cannot be installed on the machines this project is built
and tested on, so :func:`install` puts two small fake modules into
``sys.modules`` (through pytest's ``monkeypatch``) that offer exactly the API
surface ``edge_runtime.engine_from_onnx``, ``edge_runtime.backends.tensorrt`` and
``edge_runtime.device`` call, as documented for TensorRT 10.x and 11.x and
pycuda. Other packages (export) may import it for the same purpose.

What it can prove (the wiring):

* which TensorRT path is taken for a version string (10.x builder flags and
  ``IInt8EntropyCalibrator2``; 11.x strongly typed networks, where the fake has
  no ``BuilderFlag.FP16/INT8``, no ``int8_calibrator`` and no
  ``platform_has_fast_*``, so code touching them fails as it would there);
* the flags, optimization profile, workspace limit, timing cache, DLA
  settings and calibration profile a build sets (recorded in
  :attr:`TrtDouble.builds`), and a few documented builder rules (a dynamic
  input needs a profile; precision flags are rejected on a strongly typed
  network; INT8 without Q/DQ needs a calibrator; DLA needs a core that exists);
* the calibrator protocol: cache read first, otherwise batches copied to
  device memory through ``get_batch`` until it returns None, then the cache
  written; ``get_batch`` is called on a thread of the builder's own;
* the execution buffer flow: a CUDA context current, on the calling thread,
  around every pycuda call (as pycuda requires), page-locked host buffers (async copies from
  pageable memory are refused here), device allocations, tensor addresses,
  input shapes, ``execute_async_v3`` on a live stream with a pushed context,
  events around it, every allocation freed on close. The "engine" runs the
  embedded ONNX with ONNX Runtime on the CPU, so outputs are checkable.

What it cannot prove: that real TensorRT parses these ONNX models, which
kernels or precisions it picks, FP16/INT8 numerics and accuracy, calibration
quality, DLA layer support, GPU memory limits, real asynchrony or timing.
Those are covered only by the tests marked ``trt`` / ``gpu`` (``make test-trt``
on a Jetson), which are reported as skipped here, never as passed.
"""

from __future__ import annotations

import base64
import enum
import itertools
import json
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


@dataclass
class BuildRecord:
    """What one ``build_serialized_network`` call was configured with."""

    flags: set[str]
    strongly_typed: bool
    onnx_path: str
    workspace_bytes: int | None
    profiles: list[dict[str, tuple[tuple[int, ...], ...]]]
    calibration_profile: dict[str, tuple[tuple[int, ...], ...]] | None
    device_type: str
    dla_core: int
    calibrator_used: bool = False
    calibration_cache_read: bool = False
    calibration_batches: int = 0
    calibration_images: int = 0
    timing_cache_entries_before: int | None = None
    error: str | None = None


@dataclass
class TrtDouble:
    """The installed double: its fake modules and everything it recorded."""

    version: str
    trt: types.ModuleType
    cuda: types.ModuleType
    dla_cores: int = 0
    gpu_name: str = "Orin"
    compute_capability: tuple[int, int] = (8, 7)
    builds: list[BuildRecord] = field(default_factory=list)
    #: IRuntime.DLA_core at each deserialize_cuda_engine call
    runtime_dla_cores: list[int] = field(default_factory=list)
    memory: dict[int, bytearray] = field(default_factory=dict)
    pagelocked: list[np.ndarray] = field(default_factory=list)
    streams: dict[int, Any] = field(default_factory=dict)
    executions: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    #: CUDA context stack depth per thread: a context is current only on the thread that pushed it
    context_depths: dict[int, int] = field(default_factory=dict)

    @property
    def context_depth(self) -> int:
        return self.context_depths.get(threading.get_ident(), 0)

    @context_depth.setter
    def context_depth(self, depth: int) -> None:
        self.context_depths[threading.get_ident()] = depth

    @property
    def live_allocations(self) -> int:
        return len(self.memory)

    def is_pagelocked(self, array: Any) -> bool:
        while isinstance(array, np.ndarray):
            if any(array is p for p in self.pagelocked):
                return True
            array = array.base
        return False


def install(
    monkeypatch: Any,
    version: str = "10.3.0",
    dla_cores: int = 0,
    gpu_name: str = "Orin",
    compute_capability: tuple[int, int] = (8, 7),
    fast_fp16: bool = True,
    fast_int8: bool = True,
) -> TrtDouble:
    """Put fake ``tensorrt``, ``pycuda`` and ``pycuda.driver`` modules into ``sys.modules``."""
    trt = types.ModuleType("tensorrt")
    cuda = types.ModuleType("pycuda.driver")
    pycuda = types.ModuleType("pycuda")
    double = TrtDouble(version, trt, cuda, dla_cores, gpu_name, compute_capability)
    _build_tensorrt(double, fast_fp16, fast_int8)
    _build_pycuda(double)
    pycuda.driver = cuda  # type: ignore[attr-defined]
    pycuda.VERSION_TEXT = "2024.1-double"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return double


# ----------------------------------------------------------------------------- tensorrt


def _on_builder_thread(call: Any, *args: Any) -> Any:
    """``call(*args)`` on a thread of the builder's own, where no CUDA context is current.

    TensorRT does not promise to call the calibrator on the thread that started the build;
    the double takes the stricter case, so a calibrator relying on the caller's context fails.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=run, name="trt-builder")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _Logger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
        _Severity.INTERNAL_ERROR,
        _Severity.ERROR,
        _Severity.WARNING,
        _Severity.INFO,
        _Severity.VERBOSE,
    )

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        self.min_severity = min_severity


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}
_FROM_ONNX = {
    1: DataType.FLOAT,
    10: DataType.HALF,
    3: DataType.INT8,
    6: DataType.INT32,
    9: DataType.BOOL,
    2: DataType.UINT8,
}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: DataType


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        self.onnx_bytes = b""
        self.onnx_path = ""
        self.has_qdq = False

    @property
    def strongly_typed(self) -> bool:
        return bool(self.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> _Tensor:
        return self.inputs[index]

    def get_output(self, index: int) -> _Tensor:
        return self.outputs[index]


class _OnnxParser:
    def __init__(self, network: _Network, logger: _Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)
        except Exception as exc:  # noqa: BLE001 - the double reports parse failures like TensorRT
            self.errors.append(f"ModelImporter: failed to parse {path}: {exc}")
            return False

        def tensor(value: Any) -> _Tensor:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
            )
            return _Tensor(value.name, dims, _FROM_ONNX[value.type.tensor_type.elem_type])

        inits = {i.name for i in model.graph.initializer}
        self.network.inputs = [tensor(v) for v in model.graph.input if v.name not in inits]
        self.network.outputs = [tensor(v) for v in model.graph.output]
        self.network.onnx_bytes = model.SerializeToString()
        self.network.onnx_path = path
        self.network.has_qdq = any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node
        )
        return True

    def parse(self, data: bytes) -> bool:
        raise AssertionError("the double expects parse_from_file (external weights load too)")


class _OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name: str) -> list[tuple[int, ...]]:
        return list(self.shapes[name])


class _TimingCache:
    def __init__(self, data: bytes, device: str) -> None:
        self.state = json.loads(data) if data else {"device": device, "entries": 0}

    def serialize(self) -> bytes:
        return json.dumps(self.state).encode()


def _build_tensorrt(double: TrtDouble, fast_fp16: bool, fast_int8: bool) -> None:
    trt = double.trt
    major = int(double.version.split(".")[0])
    flag_names = ["GPU_FALLBACK", "TF32", "REFIT", "DEBUG"] + (
        ["FP16", "INT8", "BF16", "FP8"] if major < 11 else []
    )
    builder_flag = enum.IntEnum("BuilderFlag", flag_names)  # type: ignore[misc]
    device_name = f"{double.gpu_name}/{double.compute_capability}/{double.version}"

    class BuilderConfig:
        def __init__(self) -> None:
            object.__setattr__(self, "flags", {"TF32"})  # TensorRT enables TF32 by default
            object.__setattr__(self, "pools", {})
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "calibration_profile", None)
            object.__setattr__(self, "_int8_calibrator", None)
            object.__setattr__(self, "timing_cache", None)
            object.__setattr__(self, "default_device_type", DeviceType.GPU)
            object.__setattr__(self, "DLA_core", -1)

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "int8_calibrator":
                if major >= 11:
                    raise AttributeError("IBuilderConfig.int8_calibrator was removed in TensorRT 11")
                object.__setattr__(self, "_int8_calibrator", value)
                return
            if name not in ("default_device_type", "DLA_core"):
                raise AttributeError(f"the double's IBuilderConfig has no attribute {name!r}")
            object.__setattr__(self, name, value)

        @property
        def int8_calibrator(self) -> Any:
            if major >= 11:
                raise AttributeError("IBuilderConfig.int8_calibrator was removed in TensorRT 11")
            return self._int8_calibrator

        def set_flag(self, flag: Any) -> None:
            self.flags.add(builder_flag(flag).name)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(builder_flag(flag).name)

        def get_flag(self, flag: Any) -> bool:
            return builder_flag(flag).name in self.flags

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            self.pools[MemoryPoolType(pool).name] = int(size)

        def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
            return self.pools.get(MemoryPoolType(pool).name, 1 << 40)

        def add_optimization_profile(self, profile: _OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: _OptimizationProfile) -> bool:
            if major >= 11:
                raise AttributeError("IBuilderConfig.set_calibration_profile was removed in TensorRT 11")
            object.__setattr__(self, "calibration_profile", profile)
            return True

        def create_timing_cache(self, data: bytes) -> _TimingCache:
            return _TimingCache(bytes(data), device_name)

        def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
            if cache.state["device"] != device_name and not ignore_mismatch:
                return False
            object.__setattr__(self, "timing_cache", cache)
            return True

        def get_timing_cache(self) -> _TimingCache:
            return self.timing_cache

    class Builder:
        num_DLA_cores = double.dla_cores
        max_DLA_batch_size = 4096

        def __init__(self, logger: _Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> _Network:
            return _Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> _OptimizationProfile:
            return _OptimizationProfile()

        def build_serialized_network(self, network: _Network, config: BuilderConfig) -> bytes | None:
            return _build(double, network, config)

    if major < 11:
        Builder.platform_has_fast_fp16 = fast_fp16  # type: ignore[attr-defined]
        Builder.platform_has_fast_int8 = fast_int8  # type: ignore[attr-defined]

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                self._trt_base_initialised = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: _Logger) -> None:
            self.logger = logger
            # IRuntime.DLA_core: the DLA core a deserialized DLA engine runs on (-1 until set).
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
            if not bytes(data).startswith(ENGINE_MAGIC):
                return None
            blob = json.loads(bytes(data)[len(ENGINE_MAGIC) :])
            if blob["tensorrt_version"] != double.version or blob["device"] != device_name:
                return None  # real TensorRT refuses engines from another version or GPU
            double.runtime_dla_cores.append(self.DLA_core)
            return _Engine(double, blob)

    trt.__version__ = double.version  # type: ignore[attr-defined]
    for name, value in {
        "Logger": _Logger,
        "Builder": Builder,
        "Runtime": Runtime,
        "OnnxParser": _OnnxParser,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "BuilderFlag": builder_flag,
        "MemoryPoolType": MemoryPoolType,
        "DeviceType": DeviceType,
        "TensorIOMode": TensorIOMode,
        "DataType": DataType,
        "nptype": lambda dtype: _NP[DataType(dtype)],
    }.items():
        setattr(trt, name, value)


def _fail(double: TrtDouble, record: BuildRecord, message: str) -> None:
    record.error = message
    double.log.append(f"[TRT] [E] {message}")
    double.builds.append(record)


def _build(double: TrtDouble, network: _Network, config: Any) -> bytes | None:
    record = BuildRecord(
        flags=set(config.flags),
        strongly_typed=network.strongly_typed,
        onnx_path=network.onnx_path,
        workspace_bytes=config.pools.get("WORKSPACE"),
        profiles=[dict(p.shapes) for p in config.profiles],
        calibration_profile=dict(config.calibration_profile.shapes) if config.calibration_profile else None,
        device_type=DeviceType(config.default_device_type).name,
        dla_core=int(config.DLA_core),
    )
    if network.strongly_typed and record.flags & {"FP16", "INT8", "BF16", "FP8"}:
        return _fail(double, record, "precision builder flags are not allowed on a strongly typed network")
    for tensor in network.inputs:
        if any(d < 0 for d in tensor.shape):
            if not config.profiles or any(tensor.name not in p.shapes for p in config.profiles):
                return _fail(double, record, f"{tensor.name}: dynamic input without an optimization profile")
            for p in config.profiles:
                low, opt, high = p.shapes[tensor.name]
                if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                    return _fail(double, record, f"{tensor.name}: profile needs min <= opt <= max")
    if record.device_type == "DLA" and not 0 <= record.dla_core < double.dla_cores:
        return _fail(double, record, f"DLA core {record.dla_core} does not exist ({double.dla_cores} cores)")
    calibration: dict[str, Any] = {}
    if "INT8" in record.flags and not network.has_qdq:
        calibrator = config.int8_calibrator
        if calibrator is None:
            return _fail(double, record, "INT8 without Q/DQ nodes or a calibrator: no scales for any tensor")
        if not getattr(calibrator, "_trt_base_initialised", False):
            return _fail(double, record, "calibrator subclass did not call IInt8EntropyCalibrator2.__init__")
        record.calibrator_used = True
        cache = calibrator.read_calibration_cache()
        if cache:
            record.calibration_cache_read = True
            calibration = {"from_cache": bytes(cache).decode()}
        else:
            if record.calibration_profile is None:
                return _fail(double, record, "dynamic-shape INT8 calibration needs a calibration profile")
            name = network.inputs[0].name
            shape = record.calibration_profile[name][1]
            nbytes = int(np.prod(shape))
            checksum = 0
            while True:
                pointers = _on_builder_thread(calibrator.get_batch, [name])
                if not pointers:
                    break
                data = double.memory.get(int(pointers[0]))
                if data is None or len(data) < nbytes:
                    return _fail(
                        double, record, "get_batch returned a pointer that is not a big enough allocation"
                    )
                checksum += int(np.frombuffer(bytes(data[:nbytes]), np.uint8).sum())
                record.calibration_batches += 1
                record.calibration_images += shape[0]
            if record.calibration_batches == 0:
                return _fail(double, record, "calibrator delivered no batches")
            cache_text = (
                f"TRT-{double.version.replace('.', '')}-EntropyCalibration2\n"
                f"batches: {record.calibration_batches} checksum: {checksum}\n"
            )
            calibrator.write_calibration_cache(cache_text.encode())
            calibration = {"batches": record.calibration_batches, "checksum": checksum}
    if config.timing_cache is not None:
        record.timing_cache_entries_before = config.timing_cache.state["entries"]
        config.timing_cache.state["entries"] += 1
    double.builds.append(record)
    blob = {
        "tensorrt_version": double.version,
        "device": f"{double.gpu_name}/{double.compute_capability}/{double.version}",
        "onnx": base64.b64encode(network.onnx_bytes).decode(),
        "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
        "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs],
        "profile": {k: [list(s) for s in v] for k, v in record.profiles[0].items()}
        if record.profiles
        else {},
        "flags": sorted(record.flags),
        "calibration": calibration,
    }
    return ENGINE_MAGIC + json.dumps(blob).encode()


class _Engine:
    def __init__(self, double: TrtDouble, blob: dict[str, Any]) -> None:
        self.double = double
        self.blob = blob
        self.tensors = {
            name: (TensorIOMode.INPUT, tuple(shape), DataType(dtype)) for name, shape, dtype in blob["inputs"]
        }
        self.tensors.update(
            {
                name: (TensorIOMode.OUTPUT, tuple(shape), DataType(dtype))
                for name, shape, dtype in blob["outputs"]
            }
        )
        self.names = list(self.tensors)
        self._session: Any = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.blob["profile"][name]]

    def create_execution_context(self) -> _ExecutionContext:
        return _ExecutionContext(self)

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(
                base64.b64decode(self.blob["onnx"]), providers=["CPUExecutionProvider"]
            )
        return self._session


class _ExecutionContext:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        low, _opt, high = self.engine.get_tensor_profile_shape(name, 0)
        shape = tuple(int(d) for d in shape)
        if not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode, shape, _dtype = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, shape)
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        return (batch, *shape[1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        if not isinstance(address, int) or address not in self.engine.double.memory:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        double = self.engine.double
        if stream_handle not in double.streams:
            raise AssertionError("execute_async_v3 needs the handle of a live CUDA stream")
        if double.context_depth <= 0:
            raise AssertionError("no CUDA context is current (push the context before enqueueing)")
        if set(self.addresses) != set(self.engine.names):
            raise AssertionError(
                f"tensor addresses missing for {set(self.engine.names) - set(self.addresses)}"
            )
        feeds = {}
        for name, (mode, _shape, dtype) in self.engine.tensors.items():
            if mode == TensorIOMode.INPUT:
                shape = self.shapes[name]
                nbytes = int(np.prod(shape)) * np.dtype(_NP[dtype]).itemsize
                raw = bytes(double.memory[self.addresses[name]][:nbytes])
                feeds[name] = np.frombuffer(raw, _NP[dtype]).reshape(shape)
        outputs = self.engine.session().run(None, feeds)
        for (name, (_mode, _shape, dtype)), value in zip(
            [(n, t) for n, t in self.engine.tensors.items() if t[0] == TensorIOMode.OUTPUT], outputs
        ):
            data = np.ascontiguousarray(value, dtype=_NP[dtype]).tobytes()
            target = double.memory[self.addresses[name]]
            if len(data) > len(target):
                raise AssertionError(f"output {name} ({len(data)} bytes) overflows its device buffer")
            target[: len(data)] = data
        double.executions.append({"stream": stream_handle, "shapes": dict(self.shapes)})
        return True


# ----------------------------------------------------------------------------- pycuda.driver


def _build_pycuda(double: TrtDouble) -> None:
    cuda = double.cuda
    addresses = itertools.count(0x7F0000000000, 0x100000)
    handles = itertools.count(1)

    class Error(Exception):
        pass

    def _need_context(what: str) -> None:
        if double.context_depth <= 0:
            raise Error(f"{what}: no CUDA context is current on this thread (push one first)")

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            _need_context("mem_alloc")
            self.address = next(addresses)
            self.nbytes = nbytes
            double.memory[self.address] = bytearray(nbytes)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            _need_context("free")
            if double.memory.pop(self.address, None) is None:
                raise Error("double free")

    class Context:
        def push(self) -> None:
            double.context_depth += 1

        def pop(self) -> None:
            if double.context_depth <= 0:
                raise Error("context stack is empty")
            double.context_depth -= 1

        def detach(self) -> None:
            double.log.append("context detached")

    class Device:
        def __init__(self, index: int) -> None:
            if index != 0:
                raise Error(f"invalid device ordinal {index}")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return double.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return double.compute_capability

        def total_memory(self) -> int:
            return 8 << 30

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        def __init__(self) -> None:
            _need_context("Stream")
            self.handle = next(handles)
            double.streams[self.handle] = self

        def synchronize(self) -> None:
            pass

    class Event:
        def __init__(self) -> None:
            _need_context("Event")  # pycuda: "no currently active context?" without one
            self.time: float | None = None

        def record(self, stream: Stream | None = None) -> None:
            if stream is not None and stream.handle not in double.streams:
                raise Error("record on a dead stream")
            self.time = time.perf_counter()

        def synchronize(self) -> None:
            pass

        def time_since(self, other: Event) -> float:
            if self.time is None or other.time is None:
                raise Error("event not recorded")
            return (self.time - other.time) * 1000.0

    def _address(target: Any) -> int:
        address = int(target)
        if address not in double.memory:
            raise Error(f"{address:#x} is not a live device allocation")
        return address

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        _need_context("pagelocked_empty")
        array = np.empty(shape, dtype)
        double.pagelocked.append(array)
        return array

    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        _need_context("memcpy_htod")
        data = np.ascontiguousarray(src).tobytes()
        memory = double.memory[_address(dest)]
        if len(data) > len(memory):
            raise Error("copy larger than the device allocation")
        memory[: len(data)] = data

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
        if not double.is_pagelocked(src):
            raise Error("async host-to-device copy from pageable memory (use pagelocked_empty)")
        memcpy_htod(dest, src)

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
        _need_context("memcpy_dtoh_async")
        if not double.is_pagelocked(dest):
            raise Error("async device-to-host copy into pageable memory (use pagelocked_empty)")
        raw = bytes(double.memory[_address(src)][: dest.nbytes])
        dest[...] = np.frombuffer(raw, dest.dtype).reshape(dest.shape)

    for name, value in {
        "Error": Error,
        "Device": Device,
        "Stream": Stream,
        "Event": Event,
        "init": lambda: None,
        "mem_alloc": DeviceAllocation,
        "pagelocked_empty": pagelocked_empty,
        "memcpy_htod": memcpy_htod,
        "memcpy_htod_async": memcpy_htod_async,
        "memcpy_dtoh_async": memcpy_dtoh_async,
        "get_driver_version": lambda: 12060,
    }.items():
        setattr(cuda, name, value)
