"""Run a TensorRT engine with pycuda: the module that runs engines on the GPU.

(The other pycuda users: ``engine_from_onnx``, whose INT8 calibrator copies
calibration batches to the GPU while building, and ``device``, which only
reads the GPU's name and compute capability.)

On ``open`` (in the manner of Polygraphy's runners) the backend

1. reads the engine's sidecar and refuses an engine built for another GPU,
   compute capability, TensorRT version or model, with the rebuild command in
   the message (:class:`~edge_runtime.errors.EngineMismatchError`);
2. deserializes the engine and creates one execution context;
3. allocates page-locked host buffers and device buffers sized for the
   profile's largest batch, one CUDA stream and two CUDA events.

``infer`` copies a uint8 NHWC batch host-to-device asynchronously, sets the
input shape, enqueues ``execute_async_v3`` between the two events, copies the
output back and synchronizes once. ``last_gpu_ms`` is the GPU compute time of
the last batch measured by the events (without copies), for the benchmarks.

The CUDA context is the device's primary context, pushed around every call
rather than held by one thread, so the watch daemon's worker thread and the
main thread can both use one backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import Backend, require_input_shape
from edge_runtime.device import PYCUDA_HINT, TENSORRT_HINT
from edge_runtime.engine_sidecar import EngineSidecar, check_engine_matches, sidecar_path
from edge_runtime.errors import BackendUnavailableError, EngineMismatchError, InferenceError


class TensorRTBackend(Backend):
    """A TensorRT engine built by ``pneumo edge build`` (or ``pneumo export engine``)."""

    name = "trt"

    def __init__(
        self,
        engine_path: str | Path,
        expected_onnx_sha256: str | None = None,
        rebuild_command: str = "",
        device_index: int = 0,
        expected_precision: str | None = None,
        expected_item_shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.engine_path = Path(engine_path)
        self.expected_onnx_sha256 = expected_onnx_sha256
        self.expected_precision = expected_precision
        self.expected_item_shape = expected_item_shape
        self.rebuild_command = rebuild_command
        self.device_index = device_index
        self.sidecar: EngineSidecar | None = None
        self.precision = "fp32"
        self.last_gpu_ms: float | None = None
        self._cuda: Any = None
        self._ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._events: tuple[Any, Any] | None = None
        self._input_name = ""
        self._output_name = ""
        self._item_shape: tuple[int, ...] = ()
        self._min_batch = 1
        self._max_batch = 1
        self._host_in: np.ndarray | None = None
        self._host_out: np.ndarray | None = None
        self._device_in: Any = None
        self._device_out: Any = None

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._ctx.pop()

    def open(self) -> None:
        if self._engine is not None:
            return
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(f"trt: TensorRT is not installed ({exc}); {TENSORRT_HINT}") from exc
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise BackendUnavailableError(f"trt: pycuda is not installed ({exc}); {PYCUDA_HINT}") from exc
        sidecar = EngineSidecar.load(sidecar_path(self.engine_path))
        try:
            cuda.init()
            device = cuda.Device(self.device_index)
            major, minor = device.compute_capability()
            gpu_name = str(device.name())
        except cuda.Error as exc:
            raise BackendUnavailableError(
                f"trt: no usable CUDA GPU ({exc}); 'pneumo edge doctor' shows what this machine has"
            ) from exc
        check_engine_matches(
            self.engine_path,
            sidecar,
            gpu_name=gpu_name,
            compute_capability=f"{major}.{minor}",
            tensorrt_version=str(trt.__version__),
            onnx_sha256=self.expected_onnx_sha256,
            precision=self.expected_precision,
            rebuild_command=self.rebuild_command,
        )
        self._cuda = cuda
        self._ctx = device.retain_primary_context()
        self.sidecar = sidecar
        self.precision = sidecar.precision
        try:
            with self._active():
                self._load(trt, cuda, self.engine_path.read_bytes())
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any, cuda: Any, data: bytes) -> None:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if self.sidecar is not None and self.sidecar.dla_core is not None:
            # The runtime picks the DLA core a DLA engine runs on; its default (-1) is not the one built for.
            runtime.DLA_core = self.sidecar.dla_core
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineMismatchError(
                f"{self.engine_path}: TensorRT could not deserialize this engine although its sidecar matches; "
                f"rebuild it: {self.rebuild_command or (self.sidecar.rebuild_command if self.sidecar else '')}"
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineMismatchError(
                f"{self.engine_path}: expected one input and one output tensor, found inputs {inputs}, outputs {outputs}"
            )
        self._input_name, self._output_name = inputs[0], outputs[0]
        if trt.nptype(engine.get_tensor_dtype(self._input_name)) != np.uint8:
            raise EngineMismatchError(
                f"{self.engine_path}: input {self._input_name!r} is not uint8; bundle models take uint8 NHWC pixels"
            )
        low, _opt, high = (
            tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self._input_name, 0)
        )
        self._item_shape = tuple(high[1:])
        require_input_shape(str(self.engine_path), high, self.expected_item_shape)
        self._min_batch, self._max_batch = low[0], high[0]
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(
                f"{self.engine_path}: could not create an execution context (GPU memory?)"
            )
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output_name)))
        self._context.set_input_shape(self._input_name, (self._max_batch, *self._item_shape))
        out_item = tuple(int(d) for d in self._context.get_tensor_shape(self._output_name))[1:]
        # Page-locked host memory: required for truly asynchronous copies.
        self._host_in = cuda.pagelocked_empty((self._max_batch, *self._item_shape), np.uint8)
        self._host_out = cuda.pagelocked_empty((self._max_batch, *out_item), out_dtype)
        self._device_in = cuda.mem_alloc(self._host_in.nbytes)
        self._device_out = cuda.mem_alloc(self._host_out.nbytes)
        self._context.set_tensor_address(self._input_name, int(self._device_in))
        self._context.set_tensor_address(self._output_name, int(self._device_out))
        self._stream = cuda.Stream()
        self._events = (cuda.Event(), cuda.Event())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._context is None or self._host_in is None or self._host_out is None or self._events is None:
            raise RuntimeError("backend is not open: use it as a context manager")
        batch = np.asarray(batch)
        n = int(batch.shape[0])
        if batch.dtype != np.uint8 or tuple(batch.shape[1:]) != self._item_shape:
            raise InferenceError(
                f"{self.engine_path}: expected uint8 (N, {', '.join(map(str, self._item_shape))}), "
                f"got {batch.dtype} {batch.shape}"
            )
        if n > self._max_batch:
            raise InferenceError(
                f"{self.engine_path}: batch of {n} is over this engine's profile maximum of {self._max_batch}"
            )
        if n == 0:
            return np.zeros((0, *self._host_out.shape[1:]), np.float32).reshape(0, -1)
        # A batch below the profile minimum runs padded and the padding is dropped.
        run = max(n, self._min_batch)
        cuda = self._cuda
        start, end = self._events
        with self._active():
            self._host_in[:n] = batch
            if run > n:
                self._host_in[n:run] = 0
            if not self._context.set_input_shape(self._input_name, (run, *self._item_shape)):
                raise InferenceError(
                    f"{self.engine_path}: engine rejected input shape {(run, *self._item_shape)}"
                )
            cuda.memcpy_htod_async(self._device_in, self._host_in[:run], self._stream)
            start.record(self._stream)
            if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                raise InferenceError(
                    f"{self.engine_path}: execute_async_v3 failed (see the TensorRT log above)"
                )
            end.record(self._stream)
            cuda.memcpy_dtoh_async(self._host_out[:run], self._device_out, self._stream)
            self._stream.synchronize()
            self.last_gpu_ms = float(end.time_since(start))
        return np.array(self._host_out[:n], dtype=np.float32).reshape(n, -1)

    def close(self) -> None:
        if self._ctx is None:
            return
        try:
            with self._active():
                for allocation in (self._device_in, self._device_out):
                    if allocation is not None:
                        allocation.free()
                self._device_in = self._device_out = None
                self._host_in = self._host_out = None
                self._events = None
                self._stream = None
                self._context = None
                self._engine = None
        finally:
            self._ctx.detach()
            self._ctx = None

    def describe(self) -> str:
        return f"trt {self.precision} ({self.engine_path.name}, batch {self._min_batch}..{self._max_batch})"
