"""Run ``pneumo`` in a fresh interpreter where installed modules act as if absent: the lean edge install.

A ``None`` entry in ``sys.modules`` makes ``import keras`` raise ModuleNotFoundError (name 'keras') and
``importlib.util.find_spec("keras")`` return None, exactly as when the package is not installed, so
one test machine with TensorFlow can check what a Jetson without it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tests.conftest import REPO

TRAINING_STACK = ("keras", "tensorflow", "tf2onnx")

_SHIM = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
from edge_runtime.pneumo_cli import main
raise SystemExit(main({argv!r}))
"""


def run_pneumo_without(blocked: Sequence[str], argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``pneumo ARGV`` with ``blocked`` unimportable; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-c", _SHIM.format(blocked=tuple(blocked), argv=list(argv))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
