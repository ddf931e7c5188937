"""ONNX Runtime backend with the TensorRT, CUDA or CPU execution provider.

``onnxruntime.get_available_providers()`` lists CUDA and TensorRT even where
their libraries cannot load, so the provider actually in use is read back from
``session.get_providers()`` after creation, and asking for a GPU provider that
did not load is an error, never a silent CPU run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import Backend, require_input_shape
from edge_runtime.errors import BackendUnavailableError, BundleError, InferenceError

PROVIDERS = {
    "ort-trt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file from a bundle with one ONNX Runtime execution provider."""

    def __init__(
        self,
        model_path: str | Path,
        name: str = "ort-cpu",
        precision: str = "fp32",
        threads: int = 0,
        provider_options: dict[str, Any] | None = None,
        expected_item_shape: tuple[int, int, int] | None = None,
    ) -> None:
        if name not in PROVIDERS:
            raise BackendUnavailableError(
                f"unknown ONNX Runtime backend {name!r}: expected one of {sorted(PROVIDERS)}"
            )
        self.model_path = Path(model_path)
        self.name = name
        self.precision = precision
        self.threads = threads
        self.provider_options = provider_options or {}
        self.expected_item_shape = expected_item_shape
        self._session: Any = None
        self._input_name = ""

    def open(self) -> None:
        import onnxruntime as ort

        provider = PROVIDERS[self.name]
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"{self.name}: ONNX Runtime {ort.__version__} has no {provider}; "
                "install onnxruntime-gpu (JetPack: NVIDIA's wheel for your JetPack release)"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = [(provider, self.provider_options)] if self.provider_options else [provider]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        if not self.model_path.is_file():
            raise BackendUnavailableError(f"{self.model_path}: ONNX model not found")
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own pybind exception types; wrapped, not swallowed
            raise BackendUnavailableError(
                f"{self.model_path}: ONNX Runtime cannot load this model ({type(exc).__name__}: {exc}); "
                "re-copy the bundle or re-run 'pneumo export bundle'"
            ) from exc
        active = session.get_providers()
        if not active or active[0] != provider:
            raise BackendUnavailableError(
                f"{self.name}: {provider} is listed but did not load (active: {active}); "
                "check CUDA/cuDNN/TensorRT libraries with 'pneumo edge doctor'"
            )
        model_input = session.get_inputs()[0]
        if model_input.type != "tensor(uint8)":
            raise BundleError(
                f"{self.model_path}: input {model_input.name!r} is {model_input.type}, but bundle models take "
                "uint8 NHWC pixels (scaling inside the graph); re-export it with 'pneumo export bundle'"
            )
        require_input_shape(str(self.model_path), model_input.shape, self.expected_item_shape)
        self._session = session
        self._input_name = model_input.name

    def close(self) -> None:
        self._session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("backend is not open: use it as a context manager")
        try:
            outputs = self._session.run(None, {self._input_name: np.ascontiguousarray(batch, dtype=np.uint8)})
        except Exception as exc:  # ONNX Runtime raises its own pybind exception types; wrapped, not swallowed
            raise InferenceError(
                f"{self.model_path}: {self.name} {self.precision} failed on a batch of shape "
                f"{tuple(np.shape(batch))} ({type(exc).__name__}: {exc})"
            ) from exc
        return np.asarray(outputs[0], dtype=np.float32).reshape(batch.shape[0], -1)

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []
