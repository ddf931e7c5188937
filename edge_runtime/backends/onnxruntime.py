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

from edge_runtime.backends.base import Backend
from edge_runtime.errors import BackendUnavailableError

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
        session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        active = session.get_providers()
        if not active or active[0] != provider:
            raise BackendUnavailableError(
                f"{self.name}: {provider} is listed but did not load (active: {active}); "
                "check CUDA/cuDNN/TensorRT libraries with 'pneumo edge doctor'"
            )
        self._session = session
        self._input_name = session.get_inputs()[0].name

    def close(self) -> None:
        self._session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("backend is not open: use it as a context manager")
        outputs = self._session.run(None, {self._input_name: np.ascontiguousarray(batch, dtype=np.uint8)})
        return np.asarray(outputs[0], dtype=np.float32).reshape(batch.shape[0], -1)

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []
