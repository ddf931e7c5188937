"""The interface every inference backend implements.

A backend is a context manager in the manner of Polygraphy's runners: it
allocates on ``__enter__`` (session, engine, buffers, stream) and frees on
``__exit__``. ``infer`` takes what the preprocessing contract produces, a
``uint8`` NHWC batch, and returns float32 model outputs ``(N, n_outputs)``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.errors import BundleError

if TYPE_CHECKING:
    from edge_runtime.bundle import Bundle

#: every backend a bundle can run on; "auto" picks the first that loads, in this order
BACKEND_NAMES = ("trt", "ort-trt", "ort-cuda", "ort-cpu")
#: what a --backend flag accepts
BACKEND_CHOICES = ("auto", *BACKEND_NAMES)


class Backend(abc.ABC):
    """One loaded model on one device, ready to run batches."""

    #: short id used in results and benchmarks, e.g. "ort-cpu", "trt"
    name: str = "abstract"
    #: precision actually executed: "fp32", "fp16" or "int8"
    precision: str = "fp32"

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Allocate everything needed to run."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free what open() allocated. Safe to call twice."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, n_outputs)."""

    @property
    def max_batch(self) -> int:
        """Largest batch one ``infer`` call accepts (engines have a profile)."""
        return 1 << 16

    def describe(self) -> str:
        return f"{self.name} {self.precision}"


def require_input_shape(model: str, dims: Sequence[object], expected: tuple[int, int, int] | None) -> None:
    """Refuse a model whose input is not one contract image per batch item.

    ``dims`` is the model's input shape ``(N, H, W, C)``; symbolic or unknown
    dimensions (strings, None, -1) match anything. A bundle whose contract says
    224x224 while its model takes 160x160 would otherwise fail on the first
    image, or worse, if both were dynamic, run on the wrong size.
    """
    if expected is None:
        return
    item = list(dims)[1:]
    fixed = [d if isinstance(d, int) and d > 0 else None for d in item]
    if len(item) != 3 or any(d is not None and d != e for d, e in zip(fixed, expected)):
        shown = "x".join("?" if d is None else str(d) for d in fixed) if len(item) == 3 else str(list(dims))
        raise BundleError(
            f"{model}: the model takes {shown} (height x width x channels) per image, but the bundle's "
            f"contract.json says {'x'.join(map(str, expected))}; the bundle's files do not belong together. "
            "Re-copy the bundle or re-run 'pneumo export bundle'"
        )


def source_onnx_sha256(bundle: Bundle, backend: Backend) -> str:
    """sha256 of the bundle's ONNX file an opened backend runs, or its engine was built from.

    What results stamp as ``model_sha256``, for ``pneumo edge predict`` and the watch daemon alike.
    A TensorRT engine's sidecar names its source (an FP16 engine built from ``model.onnx``, an INT8
    one calibrated from it); ONNX Runtime runs its ``model_path`` (``ort-trt`` fp16 runs
    ``model.onnx`` with a flag). "" for a backend that names neither. Raises OSError when the file
    is neither in the manifest nor on disk.
    """
    sidecar = getattr(backend, "sidecar", None)
    if sidecar is not None:
        return str(sidecar.onnx_sha256)
    model_path = getattr(backend, "model_path", None)
    return str(bundle.file_sha256(Path(model_path).name)) if model_path is not None else ""
