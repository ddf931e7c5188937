"""Typed errors of the edge runtime. Only CLIs print them and pick exit codes."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error raised by edge_runtime."""


class ContractError(EdgeError):
    """A preprocessing contract is missing, malformed or incompatible."""


class ImageDecodeError(EdgeError):
    """An input file could not be decoded into an image; the message says why.

    ``maybe_incomplete`` marks the failures a file still being written also gives (empty, truncated,
    corrupt data), so the watch daemon can wait for a paused writer instead of failing the input.
    """

    def __init__(self, path: str, reason: str, *, maybe_incomplete: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.maybe_incomplete = maybe_incomplete


class BundleError(EdgeError):
    """A deployment bundle is incomplete, tampered with or truncated."""


class BackendUnavailableError(EdgeError):
    """The requested inference backend cannot run on this machine."""


class EngineMismatchError(EdgeError):
    """A TensorRT engine was built for another device, TensorRT version or model."""


class EngineBuildError(EdgeError):
    """A TensorRT engine could not be built as asked (precision, calibration, DLA, profile)."""


class CameraError(EdgeError):
    """A camera or video source could not be opened or stopped delivering frames."""


class InferenceError(EdgeError):
    """A loaded backend failed to run a batch (the runtime's own error, wrapped with what ran)."""


class LabelledSetError(EdgeError):
    """A labelled image set (class folders or a run's split.json) cannot be read as one."""


class MetricsError(EdgeError, ValueError):
    """Outputs and labels that cannot be scored (shapes, empty input, bad threshold rule).

    Still a ValueError for callers that predate the hierarchy; train reports it as a failure, export
    and benchmarks wrap it in their own error types.
    """


class UsageError(EdgeError):
    """A command-line value is malformed or out of range; the CLI exits with status 2."""
