"""Evaluate a saved model on any labelled folder, through the same metrics code as training.

MODEL may be:

* a run folder (``model.h5`` + ``contract.json`` + ``model_info.json``);
* a ``.h5`` or ``.keras`` file, with ``contract.json`` and ``model_info.json`` beside it;
* a deployment bundle folder (``manifest.json``; its FP32 ONNX model, verified);
* an ``.onnx`` file with ``contract.json`` and ``model_info.json`` beside it.

ONNX models run through the edge runtime's ONNX Runtime backend (CPU), so
this path needs no TensorFlow; Keras models are loaded in safe mode.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.errors import EdgeError
from edge_runtime.metrics import evaluate_outputs
from edge_runtime.run_layout import MODEL_FILE, MODEL_KERAS_FILE, SPLIT_FILE
from train.config import LabelMode
from train.errors import DataError, TrainError

if TYPE_CHECKING:
    from train.cache import ArraySet

KERAS_SUFFIXES = (".h5", ".keras")
EVAL_SPLITS = ("test", "val", "train", "all")
# Not a folder: the validation images listed in a run folder's split.json.
RUN_VAL = "run-val"
_BATCH = 64


@dataclass
class LoadedModel:
    """A model ready to score uint8 NHWC batches, with the contract and info that go with it."""

    path: Path
    kind: str  # "keras" or "onnx"
    runner: str  # e.g. "keras (tensorflow)" or "ort-cpu fp32"
    contract: PreprocessContract
    info: ModelInfo
    predict: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None]


def _sidecars(folder: Path) -> tuple[PreprocessContract, ModelInfo]:
    try:
        return PreprocessContract.load(folder), ModelInfo.load(folder)
    except EdgeError as exc:
        raise TrainError(f"{exc}; a model needs contract.json and model_info.json beside it") from exc


def load_keras(path: Path) -> Any:
    """A saved Keras model, loaded in safe mode (no code from the file) and uncompiled."""
    import keras

    try:
        return keras.models.load_model(str(path), safe_mode=True, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise TrainError(f"{path}: cannot load the Keras model in safe mode ({exc})") from exc


def _keras_model(path: Path) -> LoadedModel:
    from train.compute import require_keras

    # A bundle or .onnx needs no TensorFlow; a Keras file does, and on the lean install says so here.
    require_keras(f"evaluating the Keras model {path}")
    import keras

    contract, info = _sidecars(path.parent)
    model = load_keras(path)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(model(batch.astype(np.float32), training=False)))

    return LoadedModel(
        path, "keras", f"keras ({keras.backend.backend()})", contract, info, predict, lambda: None
    )


def _onnx_model(onnx_path: Path, contract: PreprocessContract, info: ModelInfo, source: Path) -> LoadedModel:
    from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, name="ort-cpu", precision="fp32")
    try:
        backend.open()
    except EdgeError as exc:
        raise TrainError(f"{onnx_path}: cannot open with ONNX Runtime ({exc})") from exc
    except Exception as exc:
        raise TrainError(f"{onnx_path}: not a loadable ONNX model ({exc})") from exc
    return LoadedModel(source, "onnx", backend.describe(), contract, info, backend.infer, backend.close)


def open_model(path: str | Path) -> LoadedModel:
    """Load MODEL (run folder, .h5/.keras, bundle folder or .onnx) for evaluation."""
    source = Path(path).expanduser()
    if not source.exists():
        raise TrainError(
            f"{source}: model not found (expected a run folder, bundle folder, .h5, .keras or .onnx)"
        )
    if source.is_dir():
        if (source / "manifest.json").is_file():
            from edge_runtime.bundle import Bundle

            try:
                bundle = Bundle.open(source)
                onnx_path = bundle.onnx_path("fp32")
            except EdgeError as exc:
                raise TrainError(f"{source}: bundle failed verification ({exc})") from exc
            return _onnx_model(onnx_path, bundle.contract, bundle.info, source)
        for name in (MODEL_FILE, MODEL_KERAS_FILE):
            if (source / name).is_file():
                return _keras_model(source / name)
        if (source / "model.onnx").is_file():
            contract, info = _sidecars(source)
            return _onnx_model(source / "model.onnx", contract, info, source)
        raise TrainError(f"{source}: no model.h5, model.keras or model.onnx in this folder")
    if source.suffix in KERAS_SUFFIXES:
        return _keras_model(source)
    if source.suffix == ".onnx":
        contract, info = _sidecars(source.parent)
        return _onnx_model(source, contract, info, source)
    raise TrainError(f"{source}: unsupported model file; expected .h5, .keras, .onnx or a folder")


def predict_batches(model: LoadedModel, x: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    chunks = [np.asarray(model.predict(x[i : i + batch]), dtype=np.float32) for i in range(0, len(x), batch)]
    if not chunks:
        return np.zeros((0, model.info.n_outputs), np.float32)
    return np.concatenate(chunks).reshape(len(x), -1)


def _label_mode(info: ModelInfo) -> LabelMode:
    return "kind" if {"BACTERIA", "VIRUS"} & {label.upper() for label in info.labels} else "binary"


def _run_folder(model_path: Path) -> Path:
    return model_path if model_path.is_dir() else model_path.parent


def run_splits(model_path: Path) -> Any | None:
    """The :class:`train.data.Splits` of the run MODEL came from (its split.json), or None without one."""
    from train.data import Splits

    split_file = _run_folder(model_path) / SPLIT_FILE
    return Splits.load(split_file) if split_file.is_file() else None


def reroot(samples: list[Any], old_root: Path, new_root: Path) -> list[Any]:
    """``samples`` with paths under ``old_root`` moved under ``new_root`` (where the data set is now)."""
    from dataclasses import replace

    # discover() records resolved paths; the root may be recorded as typed (relative, via a symlink)
    bases = (old_root, old_root.resolve())
    moved = []
    for sample in samples:
        for base in bases:
            with contextlib.suppress(ValueError):
                moved.append(replace(sample, path=new_root / sample.path.relative_to(base)))
                break
        else:  # recorded outside the old root: keep it as it was
            moved.append(sample)
    return moved


def run_validation_samples(model_path: Path, data_root: Path | None = None) -> list[Any]:
    """The validation images recorded in the run folder's split.json (where the threshold was chosen).

    ``data_root`` re-roots them: the data set's folder now, when it has moved since training.
    """
    split_file = _run_folder(model_path) / SPLIT_FILE
    splits = run_splits(model_path)
    if splits is None:
        raise TrainError(
            f"{split_file}: not found; --split run-val needs a run folder (or its model.h5) written by "
            "pneumo train, which records its validation split there"
        )
    samples = splits.val
    if not samples:
        raise DataError(f"{split_file}: the run has no validation images")
    if data_root is not None:
        if not data_root.is_dir():
            raise DataError(
                f"{data_root}: data folder not found; pass --data where the run's data set is now "
                f"(it was {splits.config.root} at training time)"
            )
        samples = reroot(samples, splits.config.root, data_root)
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        where = (
            f"under --data {data_root}"
            if data_root is not None
            else f"at {splits.config.root} (training time)"
        )
        raise DataError(
            f"{split_file}: {len(missing)} of {len(samples)} validation images are not {where} "
            f"(first: {missing[0]}); pass --data ROOT where the data set the run was trained on is now"
        )
    return samples


def _refs(sample: Any, roots: tuple[Path, ...]) -> set[str]:
    """How a sample is recognised in another listing: its path relative to its data root (the data set
    may have moved), its absolute path, and its MANIFEST.csv digest (a copy under another name)."""
    refs = {"abs:" + os.path.abspath(sample.path)}
    for base in roots:
        with contextlib.suppress(ValueError):
            refs.add("rel:" + sample.path.relative_to(base).as_posix())
    if sample.sha256:
        refs.add("sha:" + sample.sha256.lower())
    return refs


def training_overlap(samples: list[Any], data_root: Path, splits: Any) -> list[Any]:
    """The ``samples`` (under ``data_root``) that are in ``splits``' training list."""
    # discover() lists resolved paths; a split.json root may be recorded as typed (relative, a symlink)
    train_roots = (splits.config.root, splits.config.root.resolve())
    train: set[str] = set()
    for sample in splits.train:
        train |= _refs(sample, train_roots)
    roots = (data_root, data_root.resolve())
    return [s for s in samples if _refs(s, roots) & train]


def select_samples(data: Path, info: ModelInfo, split: str) -> list[Any]:
    """The labelled images of ``split`` under ``data`` (a flat folder counts as one split)."""
    from train.data import discover

    if split not in EVAL_SPLITS:
        raise TrainError(f"--split {split!r}: expected one of {', '.join(EVAL_SPLITS)}")
    samples = discover(data, _label_mode(info))
    flat = all(s.split == "" for s in samples)
    if split != "all" and not flat:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(f"{data / split}: no images in split '{split}'; use --split all or another split")
    unknown = sorted({s.label for s in samples} - set(info.labels))
    if unknown:
        from edge_runtime.labelled import case_hint

        hints = "".join(case_hint(label, info.labels) for label in unknown)
        raise DataError(
            f"{data}: class folder(s) {unknown} are not labels of this model {list(info.labels)}{hints}; "
            "evaluate on a folder with the model's classes"
        )
    return samples


def overlap_refusal(overlap: list[Any], samples: list[Any], data: Path, split: str, model: Path) -> str:
    split_file = _run_folder(model) / SPLIT_FILE
    return (
        f"{data} (--split {split}): {len(overlap)} of {len(samples)} images are in the training list of "
        f"{split_file} (first: {overlap[0].path}); the default patient-wise split folds the official val/ "
        "folder into the training pool, and --split random --random-pool all mixes every folder. Scores on training images are "
        "optimistic, not validation or test results. Use --split run-val for the run's own held-out "
        f"validation images{'' if split == 'test' else ', or --split test'}; pass --allow-train-overlap "
        "to score them anyway (the report then says the figures include training images)"
    )


def overlap_fields(overlap: list[Any] | None, scored: list[str]) -> dict[str, Any]:
    """Report fields saying whether the scored images include training images (None: not checked)."""
    if overlap is None:
        return {"train_overlap": None}
    scored_paths = set(scored)
    n = sum(1 for s in overlap if str(s.path) in scored_paths)
    fields: dict[str, Any] = {"train_overlap": n}
    if n:
        fields["train_overlap_warning"] = (
            f"{n} of the {len(scored)} scored images are in the model's training set: these figures include "
            "training images and are optimistic, not a validation or test result"
        )
    return fields


def evaluate_model(
    model_path: str | Path,
    data: str | Path | None,
    split: str = "test",
    bootstrap: int = 1000,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
    workers: int = 2,
    probe_shape: bool = False,
    allow_train_overlap: bool = False,
) -> dict[str, Any]:
    """Metrics of MODEL on the labelled images of ``data`` (JSON-ready).

    ``split="run-val"`` scores the run's own validation split (from its split.json), re-rooted onto
    ``data`` when given (the data set may have moved since training); ``probe_shape`` adds the
    one-axis rescale probe of train/shape_probe.py. Any other split that shares images with the
    run's training list (split.json) is refused unless ``allow_train_overlap``, and then reported
    as such (``train_overlap``; None where no split.json sits beside the model to check against).
    """
    from train.cache import load_arrays

    model_file = Path(model_path).expanduser()
    data_path = None if data is None else Path(data).expanduser()
    model = open_model(model_path)
    try:
        if split == RUN_VAL:
            samples, data_path = _run_val_samples(model_file, data_path)
            overlap: list[Any] | None = []  # held out of training by construction
        else:
            samples, overlap = _split_samples(model, model_file, data_path, split, allow_train_overlap)
        arrays = load_arrays(samples, model.info.labels, model.contract, cache_dir, progress, workers)
        if len(arrays) == 0:
            raise DataError(f"{data_path}: none of the {len(samples)} images could be decoded")
        outputs, seconds, probe = _predict(model, arrays, probe_shape)
    finally:
        model.close()
    metrics = evaluate_outputs(arrays.y, outputs, model.info, bootstrap=bootstrap, seed=seed)
    return _report(model, data_path, split, arrays, overlap, seconds, metrics, probe)


def _run_val_samples(model_file: Path, data_path: Path | None) -> tuple[list[Any], Path | None]:
    """The run's validation images and the folder they are read from (``data_path`` or the recorded root)."""
    samples = run_validation_samples(model_file, data_path)
    recorded = run_splits(model_file)
    if data_path is None and recorded is not None:
        data_path = recorded.config.root  # where the images were read from
    return samples, data_path


def _split_samples(
    model: LoadedModel, model_file: Path, data_path: Path | None, split: str, allow_train_overlap: bool
) -> tuple[list[Any], list[Any] | None]:
    """The images of ``split`` under ``data_path`` and those of them the run trained on (None: not checked).

    A DataError when they include training images, unless ``allow_train_overlap``.
    """
    if data_path is None:
        raise DataError(f"--split {split} needs --data: the labelled folder to score")
    samples = select_samples(data_path, model.info, split)
    splits = run_splits(model_file)
    if splits is None:
        return samples, None
    overlap = training_overlap(samples, data_path, splits)
    if overlap and not allow_train_overlap:
        raise DataError(overlap_refusal(overlap, samples, data_path, split, model_file))
    return samples, overlap


def _predict(
    model: LoadedModel, arrays: ArraySet, probe_shape: bool
) -> tuple[np.ndarray, float, dict[str, Any] | None]:
    """The model's outputs on ``arrays``, the seconds they took, and the shape probe when asked for."""
    started = time.perf_counter()
    outputs = predict_batches(model, arrays.x)
    seconds = time.perf_counter() - started
    if not probe_shape:
        return outputs, seconds, None
    from train.shape_probe import shape_probe

    probe = shape_probe(lambda batch: predict_batches(model, batch), arrays.x, arrays.y, model.info, outputs)
    return outputs, seconds, probe


def _report(
    model: LoadedModel,
    data_path: Path | None,
    split: str,
    arrays: ArraySet,
    overlap: list[Any] | None,
    seconds: float,
    metrics: dict[str, Any],
    probe: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON-ready report of one evaluation."""
    from train.synth import is_synthetic

    return {
        "model": str(model.path),
        "model_version": model.info.model_version,
        "runner": model.runner,
        "data": str(data_path),
        "split": split,
        "synthetic_model": model.info.synthetic,
        "synthetic_data": data_path is not None and is_synthetic(data_path),
        "images": len(arrays),
        **overlap_fields(overlap, arrays.paths),
        "skipped": [{"path": p, "reason": r} for p, r in arrays.skipped],
        "seconds": round(seconds, 3),
        "note": "Decision support, not a diagnosis.",
        "metrics": metrics,
        **({"shape_probe": probe} if probe is not None else {}),
    }
