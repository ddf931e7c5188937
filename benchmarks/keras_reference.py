"""The Keras reference row: the trained ``.h5`` called directly, the way a training notebook would.

Every speedup in a report is a ratio against this row measured in the same
run. The model is called as ``model(x, training=False)`` on a float32 batch,
not through ``model.predict``, whose per-call overhead (a new data adapter and
callbacks each call) would make every other row look faster than it is.

The Keras model's first layer is the ``Rescaling`` of the preprocessing
contract, so it takes float32 pixel values 0..255; the ONNX files take uint8.
The uint8 -> float32 cast is done once outside the timed loop
(:attr:`KerasReference.input_dtype`) and inside the end-to-end loop.

TensorFlow is imported only in :meth:`KerasReference.open`, which first sets its
intra-op threads to ``--threads`` (as ONNX Runtime's) and records what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.errors import BenchInputError
from edge_runtime.backends.base import Backend
from edge_runtime.bundle import EXPORT_REPORT_FILE
from edge_runtime.bundle import MODEL_CARD_FILE as BUNDLE_MODEL_CARD_FILE
from edge_runtime.contract import CONTRACT_FILE, PreprocessContract
from edge_runtime.fileio import read_json, sha256_file
from edge_runtime.run_layout import MODEL_FILE, SPLIT_FILE

# Keys under which a bundle's model_card.json may name the training run folder.
_RUN_KEYS = ("run_dir", "run_folder", "run_path", "run")


@dataclass(frozen=True)
class KerasSource:
    """Where the reference model comes from: the .h5 and, when known, its run folder."""

    h5: Path
    run_dir: Path | None

    @property
    def split_json(self) -> Path | None:
        if self.run_dir is None:
            return None
        path = self.run_dir / SPLIT_FILE
        return path if path.is_file() else None


def resolve_keras_source(run_or_h5: str | Path) -> KerasSource:
    """A run folder (``runs/NAME`` with model.h5) or an ``.h5`` file -> :class:`KerasSource`."""
    path = Path(run_or_h5).expanduser()
    if path.is_dir():
        h5 = path / MODEL_FILE
        if not h5.is_file():
            raise BenchInputError(f"{path}: run folder has no {MODEL_FILE}; pass the .h5 itself with --keras")
        return KerasSource(h5, path)
    if path.is_file():
        if path.suffix.lower() not in (".h5", ".hdf5", ".keras"):
            raise BenchInputError(f"{path}: --keras expects a run folder or a .h5/.keras file")
        run_dir = path.parent if (path.parent / CONTRACT_FILE).is_file() else None
        return KerasSource(path, run_dir)
    raise BenchInputError(f"{path}: no such run folder or Keras file (--keras)")


def not_the_bundles_model(h5: Path, bundle_manifest: dict[str, Any]) -> str | None:
    """Why ``h5`` is not the model the bundle was exported from, or None when it is (or cannot be told).

    A run folder retrained in place (``pneumo train --out RUN --overwrite``) keeps its path and
    model version; only the sha256 the manifest records tells the old .h5 from the new one. Every
    "x Keras" ratio, every decision-agreement figure and the run's test split would otherwise
    describe another model.
    """
    expected = bundle_manifest.get("source_h5_sha256")
    if not isinstance(expected, str) or not expected:
        return None  # bundles from before the manifest recorded it
    actual = sha256_file(h5)
    if actual == expected:
        return None
    return (
        f"{h5} (sha256 {actual[:12]}...) is not the .h5 this bundle was exported from "
        f"(sha256 {expected[:12]}... in its manifest.json): retrained since?"
    )


def run_dir_from_bundle(bundle_root: Path) -> Path | None:
    """The training run folder a bundle records, if that folder (with model.h5) still exists here.

    Looked up in the model card (``run_dir``/``run_folder``/``run`` ...) and in
    export_report.json's ``source.run``, which ``pneumo export bundle`` writes.
    """
    candidates: list[Any] = []
    card = _read_object(bundle_root / BUNDLE_MODEL_CARD_FILE)
    candidates += [card.get(key) for key in _RUN_KEYS]
    for section in ("run", "training", "provenance"):
        if isinstance(card.get(section), dict):
            candidates += [card[section].get(key) for key in (*_RUN_KEYS, "dir", "path")]
    source = _read_object(bundle_root / EXPORT_REPORT_FILE).get("source")
    if isinstance(source, dict):
        candidates.append(source.get("run"))
    for value in candidates:
        if isinstance(value, str) and value:
            run_dir = Path(value).expanduser()
            if not run_dir.is_absolute():
                run_dir = (bundle_root / run_dir) if (bundle_root / run_dir).is_dir() else run_dir.resolve()
            if (run_dir / MODEL_FILE).is_file():
                return run_dir
    return None


def _read_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class KerasReference(Backend):
    """The .h5 model behind the :class:`Backend` interface (CPU or GPU, wherever TensorFlow puts it)."""

    name = "keras"
    precision = "fp32"
    #: the timed loop feeds this dtype; the cast from uint8 happens before timing
    input_dtype = np.float32

    def __init__(self, source: KerasSource, contract: PreprocessContract, threads: int = 0) -> None:
        self.source = source
        self.contract = contract
        #: intra-op threads asked for (--threads); 0 leaves TensorFlow's default
        self.threads = threads
        self.device = "cpu"
        self.tensorflow_version = ""
        #: what TensorFlow runs with, read back after open() (0: its default, all cores)
        self.thread_settings: dict[str, Any] = {}
        self._model: Any = None

    def open(self) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:
            from edge_runtime.extras import install_hint

            raise BenchInputError(f"TensorFlow not installed; {install_hint('train')}") from exc
        self.thread_settings = _apply_threads(tf, self.threads)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            # Without this TensorFlow takes all GPU memory and starves the TensorRT rows of the same run.
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        self.device = "gpu" if gpus else "cpu"
        self.tensorflow_version = tf.__version__
        model = tf.keras.models.load_model(str(self.source.h5), compile=False)
        expected = (None, *self.contract.input_shape)
        actual = tuple(model.input_shape)
        if actual != expected:
            raise BenchInputError(
                f"{self.source.h5}: Keras input shape {actual} does not match the bundle contract {expected}; "
                "pass the run folder this bundle was exported from (--keras)"
            )
        self._model = model

    def close(self) -> None:
        self._model = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("Keras reference is not open: use it as a context manager")
        x = batch if batch.dtype == np.float32 else batch.astype(np.float32)
        outputs = self._model(x, training=False)
        # .numpy() is the device-to-host copy; np.asarray on an EagerTensor warns under numpy 2.
        return np.asarray(outputs.numpy(), dtype=np.float32).reshape(batch.shape[0], -1)

    def describe(self) -> str:
        return f"keras fp32 on {self.device} (TensorFlow {self.tensorflow_version})"


def _apply_threads(tf: Any, threads: int) -> dict[str, Any]:
    """Set TensorFlow's intra-op threads like ONNX Runtime's, and read back what it really uses.

    TensorFlow takes the setting only before its runtime starts; in a process where it already ran
    (a second benchmark in one Python) the refusal is recorded rather than hidden.
    """
    note = ""
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError as exc:
            note = f"--threads {threads} not applied: TensorFlow was already running in this process ({exc})"
    return {
        "runtime": "tensorflow",
        "requested": threads,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "zero_means": "TensorFlow's default (one per core)",
        "note": note,
    }
