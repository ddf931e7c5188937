"""Typed errors of the training package. Only CLIs print them and pick exit codes."""

from __future__ import annotations


class TrainError(Exception):
    """Base class of every error raised by ``train``."""


class DataError(TrainError):
    """A data folder, file or split request is unusable; the message names the path and the fix."""


class ConfigError(TrainError):
    """A setting (a flag, or a value in a --config or experiment file) is unknown, out of range or
    contradicts another; the CLIs report it as a usage error (exit 2)."""


class MissingDependencyError(TrainError):
    """A module the command needs is not installed (the lean edge install has no TensorFlow or Keras)."""
