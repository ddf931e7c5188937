"""The interface every inference backend implements.

A backend is a context manager in the manner of Polygraphy's runners: it
allocates on ``__enter__`` (session, engine, buffers, stream) and frees on
``__exit__``. ``infer`` takes what the preprocessing contract produces, a
``uint8`` NHWC batch, and returns float32 model outputs ``(N, n_outputs)``.
"""

from __future__ import annotations

import abc
from types import TracebackType

import numpy as np


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
