"""The edge runtime stays lean: no TensorFlow, Keras, tf2onnx, ``train`` or ``export``, in a fresh interpreter.

Each check runs in a subprocess, because this test session itself may have
imported TensorFlow through other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "train", "export", "torch")
# Imported lazily inside the functions that need them, never at module import.
LAZY = ("tensorrt", "pycuda", "onnx")

CHECK = """
import json, sys
{body}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {names!r})
print(json.dumps(loaded))
"""


def _loaded_after(body: str, names: tuple[str, ...]) -> list[str]:
    script = CHECK.format(body=body, names=set(names))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_edge_runtime_module_imports_without_heavy_frameworks() -> None:
    body = """
import importlib, pkgutil, edge_runtime
names = [m.name for m in pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime.")]
for required in ("edge_runtime.cli", "edge_runtime.watch", "edge_runtime.camera", "edge_runtime.engine_from_onnx",
                 "edge_runtime.backends.tensorrt", "edge_runtime.backends.select", "edge_runtime.edge_build"):
    assert required in names, required
for name in names:
    importlib.import_module(name)
"""
    assert _loaded_after(body, FORBIDDEN + LAZY) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["edge", "--help"],
        ["edge", "predict", "--help"],
        ["edge", "camera", "--help"],
        ["edge", "build", "--help"],
        ["edge", "doctor", "--json"],
    ],
)
def test_pneumo_commands_do_not_import_tensorflow(argv: list[str]) -> None:
    body = f"""
from edge_runtime import pneumo_cli
code = pneumo_cli.main({argv!r})
assert code == 0, code
"""
    assert _loaded_after(body, FORBIDDEN) == []
