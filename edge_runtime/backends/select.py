"""Choose and create a backend for a bundle: ``--backend auto`` or a named one."""

from __future__ import annotations

from edge_runtime.backends.base import Backend
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import Bundle
from edge_runtime.errors import BackendUnavailableError

BACKENDS = ("ort-cpu",)


def create_backend(bundle: Bundle, backend: str = "auto", precision: str = "fp32", threads: int = 0) -> Backend:
    """Return an unopened backend for ``bundle``; use it as a context manager."""
    if backend in ("auto", "ort-cpu"):
        return OnnxRuntimeBackend(bundle.onnx_path(precision), name="ort-cpu", precision=precision, threads=threads)
    raise BackendUnavailableError(f"unknown backend {backend!r}: expected auto or one of {BACKENDS}")
