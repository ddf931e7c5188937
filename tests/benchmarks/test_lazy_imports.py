"""Benchmarks import their heavy modules inside the functions that need them (STYLE.md).

On a Jetson only the edge runtime's dependencies are installed, and ``pneumo bench --help``
must answer at once: importing any ``benchmarks`` module loads no deep-learning framework,
no plotting library and nothing of ``export`` (``benchmarks.int8_search`` imports export only
when it runs). Checked in a fresh interpreter, because this test session may already have
imported them.
"""

from __future__ import annotations

import pytest

from tests.edge_runtime.test_lean import _loaded_after

HEAVY = (
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "pycuda",
    "matplotlib",
    "export",
    "train",
)


def test_every_benchmarks_module_imports_without_heavy_modules() -> None:
    body = """
import importlib, pkgutil, benchmarks
names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.")]
for required in ("benchmarks.int8_search", "benchmarks.keras_reference", "benchmarks.report", "benchmarks.run"):
    assert required in names, required
for name in names:
    importlib.import_module(name)
"""
    assert _loaded_after(body, HEAVY) == []


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "watch", "--help"]])
def test_bench_help_imports_no_heavy_module(argv: list[str]) -> None:
    body = f"""
from edge_runtime import pneumo_cli
try:
    code = pneumo_cli.main({argv!r})
except SystemExit as exc:  # argparse's --help exits, inside bench's parser
    code = exc.code
assert code in (0, None), code
"""
    assert _loaded_after(body, HEAVY) == []
