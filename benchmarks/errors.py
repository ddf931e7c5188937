"""Typed errors of the benchmarks package. Only benchmarks.cli prints them."""

from __future__ import annotations


class BenchError(Exception):
    """Base class of every error raised by benchmarks."""


class BenchConfigError(BenchError):
    """A benchmark setting is out of range or contradicts another one."""


class BenchInputError(BenchError):
    """A bundle, Keras model, test folder or results file cannot be used."""
