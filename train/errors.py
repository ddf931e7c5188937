"""Typed errors of the training package. Only CLIs print them and pick exit codes."""

from __future__ import annotations


class TrainError(Exception):
    """Base class of every error raised by ``train``."""


class DataError(TrainError):
    """A data folder, file or split request is unusable; the message names the path and the fix."""
