"""Write small ``torch.save`` files (both formats) without PyTorch, to test the reader on real bytes.

The pickles name ``torch.FloatStorage`` and ``torch._utils._rebuild_tensor_v2``
exactly as PyTorch writes them; stand-in modules under those names exist only
while the file is being written.
"""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from train.models.torch_checkpoint import LEGACY_MAGIC


class _StorageRef:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


@contextmanager
def _torch_names() -> Iterator[tuple[type, Any]]:
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args: Any) -> None:  # pragma: no cover - only its name is pickled
        raise AssertionError(args)

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage = storage  # type: ignore[attr-defined]
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield storage, _rebuild_tensor_v2
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Tensor:
    def __init__(
        self, rebuild: Any, ref: _StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]
    ):
        self.args = (ref, offset, shape, stride, False, collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self) -> Any:
        return (self.rebuild, self.args)


def _pickled_state(
    tensors: dict[str, np.ndarray], storage: type, rebuild: Any
) -> tuple[bytes, dict[str, bytes]]:
    """The state_dict pickle (one storage per tensor, in its own memory order) and each storage's bytes.

    A Fortran-ordered array is written with column-major strides, as a transposed tensor is.
    """
    import io

    state: collections.OrderedDict[str, Any] = collections.OrderedDict()
    raw: dict[str, bytes] = {}
    for i, (name, array) in enumerate(tensors.items()):
        array = np.asarray(array, dtype=np.float32)
        if not (array.flags.c_contiguous or array.flags.f_contiguous):
            array = np.ascontiguousarray(array)
        key = str(i)
        stride = tuple(s // 4 for s in array.strides)
        state[name] = _Tensor(rebuild, _StorageRef(key, array.size), 0, array.shape, stride)
        raw[key] = array.tobytes(order="A")

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _StorageRef):
                return ("storage", storage, obj.key, "cpu", obj.numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue(), raw


def write_legacy(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """torch.save's pre-1.6 format: magic, protocol, sys info, state, storage keys, storages."""
    with _torch_names() as (storage, rebuild):
        state, raw = _pickled_state(tensors, storage, rebuild)
    with path.open("wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(state)
        pickle.dump(list(raw), f, protocol=2)
        for data in raw.values():
            f.write(struct.pack("<q", len(data) // 4))
            f.write(data)
    return path


def write_zip(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """torch.save's zip format (PyTorch >= 1.6): archive/data.pkl and archive/data/KEY."""
    with _torch_names() as (storage, rebuild):
        state, raw = _pickled_state(tensors, storage, rebuild)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state)
        for key, data in raw.items():
            archive.writestr(f"archive/data/{key}", data)
    return path
