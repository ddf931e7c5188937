"""Typed errors of the export package. Only the CLI prints them and picks exit codes (2 for
:class:`ExportConfigError`, 1 for the others)."""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every error raised by ``export``; the message names the file and the fix."""


class ExportConfigError(ExportError):
    """A setting out of range or contradicting another (a usage error: the CLI exits 2)."""


class MissingDependencyError(ExportError):
    """A module a step needs (Keras, TensorFlow, tf2onnx, onnx...) is not installed here."""


class RunFolderError(ExportError):
    """A run folder or model file is missing a required file (model.h5, contract.json, split.json...)."""


class ModelLoadError(ExportError):
    """A file is not a Keras model that safe mode can load."""


class ConversionError(ExportError):
    """tf2onnx, the ONNX checker, the FP16 converter or the quantizer failed."""


class ParityError(ExportError):
    """An exported graph's outputs differ from its reference by more than the tolerance."""


class CalibrationError(ExportError):
    """The calibration set is missing, too small, or not drawn from the training split."""


class AccuracyDropError(ExportError):
    """A reduced-precision model lost more accuracy on the test split than allowed."""


class OutputExistsError(ExportError):
    """The output folder is not empty and --overwrite was not given."""


class EngineUnavailableError(ExportError):
    """TensorRT is not installed here; engines are built on the target device."""
