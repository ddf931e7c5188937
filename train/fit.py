"""One training run: data -> model -> fit -> threshold on validation -> test once -> run folder.

:func:`train_run` is what ``pneumo train`` calls. The order matters for
honesty: the decision threshold is chosen on the **validation** split only, and
the test split is predicted exactly once, after training and after the
threshold is fixed. The run folder it writes::

    runs/NAME/
      model.h5            what ``pneumo export`` consumes (loads in Keras safe mode, compile=False)
      model.keras         the same model in the native Keras format
      contract.json       preprocessing contract (edge_runtime.contract)
      model_info.json     labels, threshold + rule, model version, SYNTHETIC flag
      config.json         the resolved TrainConfig
      split.json          every file of train / val / test, with patient ids
      history.csv         per-epoch loss, metrics and seconds
      logs/               TensorBoard
      plots/              loss and accuracy curves, confusion matrix, ROC
      metrics.json        test (at the chosen threshold and at 0.5) and validation metrics with 95% CIs
      model_card.json     what this model is, how it was made and measured, and what it is for

The run is built in a hidden sibling folder (``.NAME.building-HOST-PID-K``) and
renamed to ``NAME`` only when every file is written, so a run folder is either
complete or absent: a run that fails is removed, one that is killed leaves only
its hidden sibling, which the next run to the same folder removes once that
process is gone (same host, pid not alive). ``--overwrite`` swaps a finished new
run in for the old one (moved aside, then removed), never a mix of the two, and
refuses a folder that holds anything a run does not write or any input of the run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_runtime.contract import CONTRACT_FILE, MODEL_INFO_FILE, ModelInfo, PreprocessContract
from edge_runtime.fileio import atomic_write_json, atomic_write_via, fsync_dir
from edge_runtime.metrics import ThresholdChoice, choose_threshold, evaluate_outputs
from edge_runtime.run_layout import (
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    MODEL_KERAS_FILE,
    SPLIT_FILE,
)
from train.compute import RUN_FOLDER_MODULES, require_keras
from train.config import CONFIG_FILE, TrainConfig
from train.errors import DataError, TrainError
from train.models import ArchSpec, Head, build_model, get_arch, resolve_head
from train.models.complexity import model_complexity

if TYPE_CHECKING:
    from train.cache import ArraySet
    from train.compute import ComputeSession
    from train.models.complexity import Complexity

log = logging.getLogger(__name__)

PREDICT_BATCH = 64
# A model reloaded from its own .h5 must give the same outputs; anything above this is a saving bug.
RELOAD_TOLERANCE = 1e-5


@dataclass
class RunResult:
    """What a finished run produced (everything is also on disk in ``out``)."""

    out: Path
    config: TrainConfig
    info: ModelInfo
    metrics: dict[str, Any]
    card: dict[str, Any]


# --------------------------------------------------------------------------- small pieces


# What `pneumo train` and `pneumo train ensemble` write into a run folder (ensemble.json is
# train.ensemble.ENSEMBLE_FILE); --overwrite replaces a folder holding only these, nothing else.
RUN_FOLDER_ENTRIES = frozenset(
    {
        MODEL_FILE, MODEL_KERAS_FILE, CONTRACT_FILE, MODEL_INFO_FILE, CONFIG_FILE, SPLIT_FILE, HISTORY_FILE,
        METRICS_FILE, MODEL_CARD_FILE, "logs", "plots", "ensemble.json",
    }
)  # fmt: skip
STAGING_TAG = "building"


def _run_entry(name: str) -> bool:
    """A file a run writes, or a temporary file of an atomic write that a kill left behind."""
    return name in RUN_FOLDER_ENTRIES or (name.startswith(".") and name.endswith(".tmp"))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_run_folder(out: Path, overwrite: bool, inputs: Mapping[str, Path | None] | None = None) -> None:
    """TrainError unless ``out`` can take a new run: absent or empty, or (``overwrite``) an old run folder.

    Nothing is written. ``inputs`` (what -> path) must lie outside ``out``: the finished run
    replaces the whole folder, so an input there would be deleted.
    """
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a folder; choose another run folder name")
    resolved = out.resolve()
    for what, path in (inputs or {}).items():
        if path is not None and _inside(Path(path).expanduser().resolve(), resolved):
            raise TrainError(
                f"--out {out}: holds {what} {path}; a finished run replaces its whole folder, "
                "so choose an --out apart from the run's inputs"
            )
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise TrainError(
            f"--out {out}: run folder already exists and is not empty; choose a new name or pass --overwrite "
            "(the old run is replaced once the new one has finished)"
        )
    foreign = sorted(entry.name for entry in out.iterdir() if not _run_entry(entry.name))
    if foreign:
        raise TrainError(
            f"--out {out}: holds files a run does not write ({', '.join(foreign[:5])}); --overwrite "
            "replaces a run folder only, so move them out or choose another --out"
        )


def staging_folders(out: Path) -> list[Path]:
    """The hidden ``.NAME.building-*`` siblings of ``out``: runs being built, or left by a killed run."""
    pattern = f".{glob.escape(out.name)}.{STAGING_TAG}-*"
    return sorted(path for path in out.parent.glob(pattern) if path.is_dir())


def _sibling(out: Path, tag: str) -> Path:
    """An unused hidden sibling name of ``out``: ``.NAME.TAG-HOST-PID-K``, naming the process that builds it."""
    k = 1
    while (path := out.parent / f".{out.name}.{tag}-{_this_host()}-{os.getpid()}-{k}").exists():
        k += 1
    return path


def staging_builder(staging: Path, out: Path) -> tuple[str, int] | None:
    """The (host, pid) a staging folder of ``out`` records in its name; None for an unknown name.

    Hosts may hold '-', so the pid and counter are split off from the right. Folders of earlier
    versions (``.NAME.building-PID-K``) name no host: None.
    """
    prefix = f".{out.name}.{STAGING_TAG}-"
    if not staging.name.startswith(prefix):
        return None
    parts = staging.name[len(prefix) :].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return parts[0], int(parts[1])


def builder_gone(host: str, pid: int) -> bool:
    """True only when the process ``pid`` on ``host`` has certainly ended: this host, pid not alive.

    Any doubt keeps a staging folder: another host (its pids mean nothing here), this very
    process, or a pid that is alive (possibly reused by an unrelated process: still kept). Hosts
    are told apart by name: machines or containers of one hostname that share a run folder and
    not their process table would defeat the rule, so give them distinct hostnames.
    """
    return host == _this_host() and pid != os.getpid() and not pid_alive(pid)


def _this_host() -> str:
    """This machine's name as a folder name records it (characters a path cannot hold become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts: it is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` whose builder is gone (:func:`builder_gone`); those removed.

    A killed ``pneumo train`` cannot clean up after itself; without this its folders would pile
    up beside every rerun. A name without host and pid (an earlier version's) is kept.
    """
    removed = []
    for staging in staging_folders(out):
        builder = staging_builder(staging, out)
        if builder is None or not builder_gone(*builder):
            continue
        shutil.rmtree(staging, ignore_errors=True)
        if staging.exists():
            log.warning("%s: left by a killed run; could not remove it completely, delete it", staging)
            continue
        log.warning(
            "removed %s: left by a killed run of %s (pid %d, no longer running)", staging, out, builder[1]
        )
        removed.append(staging)
    return removed


def _missing_parents(out: Path) -> list[Path]:
    """The folders above ``out`` that do not exist yet, deepest first."""
    return [parent for parent in out.parents if not parent.exists()]


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are still empty; a folder with anything in it stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _new_staging(out: Path) -> Path:
    """A fresh hidden sibling of ``out`` to build in (a leftover of an earlier process is kept)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            staging = _sibling(out, STAGING_TAG)
            with contextlib.suppress(FileExistsError):
                staging.mkdir()
                return staging
    except OSError as exc:
        raise TrainError(f"--out {out}: cannot create the run folder ({exc})") from exc


def install_run_folder(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished run ``staging`` to ``out``; an old run there is moved aside, then removed.

    ``out`` is checked again: something written there while the run trained is never removed;
    the finished run then stays in ``staging``, named in the error.
    """
    try:
        check_run_folder(out, overwrite)
    except TrainError as exc:
        raise TrainError(
            f"{exc}. It changed while this run trained; the finished run is in {staging}"
        ) from None
    old: Path | None = None
    if out.exists():
        old = _sibling(out, "replaced")
        os.replace(out, old)
    # a crash between the two renames leaves no NAME, the old run hidden: never a mix of two runs
    os.replace(staging, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            log.warning("the replaced run could not be removed completely; delete %s", old)


@contextlib.contextmanager
def building_run_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling of ``out`` to write the run into, installed as ``out`` when the block succeeds.

    A run that fails (an exception, Ctrl-C) is removed: a half run must never be read as one.
    Check ``out`` with :func:`check_run_folder` before the expensive work starts.
    """
    out = Path(os.path.abspath(out))  # "." or "runs/x/..": the sibling must lie beside the folder itself
    remove_stale_staging(out)
    leftovers = staging_folders(out)
    if leftovers:
        log.warning(
            "%s: left by an interrupted run of %s (or one still running); delete it when you no longer need it",
            leftovers[0],
            out,
        )
    created = _missing_parents(out)
    staging = _new_staging(out)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)  # a failed run leaves no empty runs/a/b/ behind either
        raise
    install_run_folder(staging, out, overwrite)


# Cosine decay ends at this fraction of the initial learning rate.
COSINE_FINAL_FRACTION = 0.01


def make_optimizer(name: str, learning_rate: float, schedule: str = "constant", total_steps: int = 0) -> Any:
    """The optimizer ``name``; with ``schedule="cosine"`` its rate decays over ``total_steps`` steps."""
    import keras

    classes = {
        "adagrad": keras.optimizers.Adagrad,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "adamax": keras.optimizers.Adamax,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
        "adadelta": keras.optimizers.Adadelta,
    }
    if name not in classes:
        raise TrainError(f"--optimizer {name!r}: expected one of {', '.join(classes)}")
    if schedule == "constant":
        return classes[name](learning_rate=learning_rate)
    if schedule != "cosine":
        raise TrainError(f"--lr-schedule {schedule!r}: expected constant or cosine")
    if total_steps < 1:
        raise TrainError(f"--lr-schedule cosine needs the number of training steps, got {total_steps}")
    rate = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=total_steps, alpha=COSINE_FINAL_FRACTION
    )
    return classes[name](learning_rate=rate)


def make_loss(head: Head, loss: str, focal_gamma: float, label_smoothing: float) -> Any:
    import keras

    if head.kind == "sigmoid":
        if loss == "focal":
            return keras.losses.BinaryFocalCrossentropy(gamma=focal_gamma, label_smoothing=label_smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=focal_gamma, label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def training_metrics(head: Head) -> list[Any]:
    """Training-set accuracy (and AUC) for history.csv, scored against the *rounded* target.

    Distillation and mixup train on soft targets (0.3, 0.85, ...); Keras's binary metrics compare
    those to 0/1 and report 0.0, which reads like a broken run. Rounding at 0.5 scores each image
    against the label its target leans to; hard labels are unchanged by it.
    """
    import keras

    if head.kind == "sigmoid":
        return [_on_rounded_targets(keras.metrics.BinaryAccuracy)(name="accuracy"),
                _on_rounded_targets(keras.metrics.AUC)(name="auc")]  # fmt: skip
    return [keras.metrics.CategoricalAccuracy(name="accuracy")]


def _on_rounded_targets(metric: Any) -> Any:
    import keras

    class OnRoundedTargets(metric):  # type: ignore[misc, valid-type]
        def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
            hard = keras.ops.cast(keras.ops.greater_equal(y_true, 0.5), y_pred.dtype)
            return super().update_state(hard, y_pred, sample_weight)

    OnRoundedTargets.__name__ = metric.__name__
    return OnRoundedTargets


def predict_arrays(model: Any, x: np.ndarray, batch: int = PREDICT_BATCH) -> np.ndarray:
    """Model outputs (N, units) for uint8 images, fed as float32 pixels in small batches."""
    import keras

    chunks = [
        np.asarray(keras.ops.convert_to_numpy(model(x[i : i + batch].astype(np.float32), training=False)))
        for i in range(0, len(x), batch)
    ]
    units = int(model.output_shape[-1])
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, units), np.float32)


def _epoch_timer() -> Any:
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` to each epoch's logs (so history.csv records the time per epoch)."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self.started

    return EpochTimer()


def _callbacks(config: TrainConfig, out: Path) -> list[Any]:
    import keras

    callbacks: list[Any] = [_epoch_timer(), keras.callbacks.CSVLogger(str(out / HISTORY_FILE))]
    if config.tensorboard:
        if _has_module("tensorflow") and _has_module("tensorboard"):
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "logs"), histogram_freq=0))
        else:
            log.warning(
                "TensorBoard logs skipped: tensorflow and tensorboard are needed (pip install tensorboard)"
            )
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(config.early_stopping), restore_best_weights=True, verbose=1
            )
        )
    return callbacks


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def teacher_targets(
    cfg: TrainConfig, splits: Any, contract: PreprocessContract, train: Any, head: Head
) -> np.ndarray:
    """Distillation targets from ``cfg.teacher``, which must share the contract and the split.

    A teacher that trained on this run's validation (or test) images would leak
    them into the student, so anything but the very same split is refused.
    """
    from train.ensemble import Member, member_outputs, require_compatible, split_key
    from train.pipeline import distillation_targets, targets

    assert cfg.teacher is not None
    teacher = Member.open(cfg.teacher)
    require_compatible(teacher, contract, splits.labels, head.kind, split_key(splits), "this run's")
    soft = member_outputs(teacher, train.x)
    log.info("distilling from %s (weight %.2f)", teacher.info.model_version, cfg.distill_weight)
    return distillation_targets(targets(train.y, head), soft, cfg.distill_weight)


def validation_threshold(
    y_val: np.ndarray,
    val_out: np.ndarray,
    labels: tuple[str, ...],
    head: Literal["sigmoid", "softmax"],
    rule: str,
) -> Any:
    """The decision threshold on P(abnormal), chosen by ``rule`` on validation outputs only."""
    from edge_runtime.predictor import abnormal_probability

    negative = negative_label(labels)
    # abnormal_probability reads only the labels, the negative label and the head
    reader = ModelInfo(
        model_version="provisional", arch="-", labels=labels, negative_label=negative, head=head
    )
    abnormal = np.asarray(y_val) != labels.index(negative)
    return choose_threshold(abnormal, abnormal_probability(val_out, reader), rule)


def choose_validation_threshold(
    predict: Callable[[np.ndarray], np.ndarray],
    val: ArraySet,
    val_out: np.ndarray,
    labels: tuple[str, ...],
    head: Literal["sigmoid", "softmax"],
    rule: str,
    threshold_on: str | None,
) -> Any:
    """``rule`` applied to the validation outputs, or (``shape-pooled``) to them pooled with the
    outputs of the same images under the shape probe's width/height rescales."""
    if threshold_on != "shape-pooled":
        return validation_threshold(val.y, val_out, labels, head, rule)
    from train.shape_probe import PROBES, shape_pooled

    y, out = shape_pooled(predict, val.x, val.y, val_out)
    choice = validation_threshold(y, out, labels, head, rule)
    return replace(
        choice,
        description=f"{choice.description}; on validation pooled with the shape probe's "
        f"{len(PROBES) - 1} rescales ({len(y)} outputs)",
    )


def threshold_record(choice: Any) -> dict[str, Any]:
    """How the decision threshold was chosen, as metrics.json records it (always on validation)."""
    return {
        "value": float(choice.threshold),
        "rule": choice.rule,
        "how": choice.description,
        "chosen_on": "validation",
    }


def _refuse_an_inverted_sigmoid(cfg: TrainConfig, labels: tuple[str, ...], head: Head) -> None:
    """A sigmoid unit learns P(labels[1]), which everything downstream reads as P(abnormal).

    Labels sort by name, so folders such as COVID / NORMAL put the normal class second: the
    model would learn P(normal) and every probability, threshold and decision would be inverted.
    """
    negative = negative_label(labels)
    if head.kind == "sigmoid" and negative != labels[0]:
        raise TrainError(
            f"{cfg.data}: classes {list(labels)}: a sigmoid head would learn P({labels[1]!r}), but "
            f"{negative!r} is the normal class, so every probability would be P(normal) read as "
            f"P(abnormal); pass --head softmax (P(abnormal) = 1 - P({negative!r})), or name the "
            "abnormal folder so that it sorts after the normal one"
        )


def negative_label(labels: tuple[str, ...]) -> str:
    """The 'normal' class: NORMAL when present (any case), else the first label."""
    for label in labels:
        if label.upper() == "NORMAL":
            return label
    return labels[0]


def model_version(config: TrainConfig) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    assert config.out is not None
    return f"{config.arch}-{config.out.name}-{stamp}"


def save_model(model: Any, out: Path) -> dict[str, Any]:
    """Write model.h5 and model.keras atomically; reload the .h5 in safe mode and compare outputs."""
    import keras

    for name in (MODEL_FILE, MODEL_KERAS_FILE):
        # Keras picks the format from the suffix; atomic_write_via's temporary name keeps it.
        atomic_write_via(out / name, lambda tmp: model.save(str(tmp)))
    reloaded = keras.models.load_model(str(out / MODEL_FILE), safe_mode=True, compile=False)
    return {"h5_safe_mode_load": True, "model": reloaded}


def reload_check(model: Any, reloaded: Any, x: np.ndarray) -> dict[str, Any]:
    """Max |output difference| between the trained model and its reloaded .h5 on up to 16 images.

    Callers pass validation images, so the test split is still predicted only once (by the scoring).
    """
    sample = x[:16]
    if len(sample) == 0:
        return {"images": 0, "max_abs_diff": None}
    diff = float(np.max(np.abs(predict_arrays(model, sample) - predict_arrays(reloaded, sample))))
    if not diff <= RELOAD_TOLERANCE:
        raise TrainError(
            f"{MODEL_FILE} reloaded in safe mode differs from the trained model by {diff:.2e} "
            f"(> {RELOAD_TOLERANCE:.0e}); the saved file is not trustworthy"
        )
    return {"images": len(sample), "max_abs_diff": diff, "tolerance": RELOAD_TOLERANCE, "safe_mode": True}


def float32_copy(
    spec: ArchSpec, contract: PreprocessContract, head: Head, opts: dict[str, Any], model: Any
) -> Any:
    """The same weights in a float32 model: what is saved after mixed-precision training."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = spec.builder(contract, head, **opts)
        clean.set_weights(model.get_weights())
        return clean
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _load_split_arrays(splits: Any, contract: PreprocessContract, config: TrainConfig) -> dict[str, Any]:
    from train.cache import load_arrays

    arrays = {}
    for name in ("train", "val", "test"):
        arrays[name] = load_arrays(
            splits.split(name),
            splits.labels,
            contract,
            cache_dir=config.cache_dir,
            progress=config.progress,
            workers=config.workers,
        )
        if len(arrays[name]) == 0:
            raise DataError(
                f"{config.data}: no readable image in the {name} split "
                f"({len(arrays[name].skipped)} skipped; run 'pneumo data check {config.data}')"
            )
        for path, reason in arrays[name].skipped:
            log.warning("skipped %s: %s", path, reason)
    present = set(np.unique(arrays["train"].y).tolist())
    if len(present) < 2:
        raise DataError(
            f"{config.data}: the train split holds only one class after skipping unreadable files"
        )
    return arrays


# --------------------------------------------------------------------------- the run


def train_run(config: TrainConfig) -> RunResult:
    """Train ``config.arch`` on ``config.data`` and write the run folder ``config.out``."""
    cfg = config.resolved()
    spec = get_arch(cfg.arch)
    if cfg.data is None:
        raise TrainError("--data is required: a chest X-ray folder (or 'pneumo data synth DIR' output)")
    if cfg.out is None:
        raise TrainError("--out is required: the run folder to create, e.g. runs/lhu-seed")
    require_keras("training", RUN_FOLDER_MODULES)
    inputs = {"the data folder": cfg.data, "the cache folder": cfg.cache_dir, "the teacher run": cfg.teacher,
              "the weights file": cfg.weights}  # fmt: skip
    check_run_folder(cfg.out, cfg.overwrite, inputs)
    started = time.perf_counter()
    # the data is checked before any folder exists: a bad --data leaves nothing behind
    splits = _make_splits(cfg)
    with building_run_folder(cfg.out, cfg.overwrite) as work:
        result = _train_into(cfg, spec, splits, work, started)
    return replace(result, out=cfg.out)


def _make_splits(cfg: TrainConfig) -> Any:
    """The train/val/test splits of the resolved ``cfg`` (a TrainError/DataError on bad data)."""
    from train.data import DataConfig, make_splits

    assert cfg.data is not None
    data_config = DataConfig(
        root=cfg.data,
        label_mode=cfg.label_mode,
        split_mode=cfg.split_mode,
        val_fraction=cfg.val_fraction,
        random_pool=cfg.random_pool,
        sources=cfg.sources,
        undersample=bool(cfg.undersample),
        max_per_class=cfg.max_per_class,
        exclude_test_patients=cfg.exclude_test_patients,
        seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
    )
    return make_splits(data_config)


@dataclass
class _Fitted:
    """A trained model (float32 weights) and what training reported about it."""

    model: Any
    history: dict[str, list[Any]]  # Keras's History.history: per-epoch loss, metrics, epoch_seconds
    fit_seconds: float
    complexity: Complexity
    class_weights: dict[int, float] | None
    session: ComputeSession


@dataclass
class _Scores:
    """The decision threshold chosen on validation, and the metrics measured with it."""

    choice: ThresholdChoice
    info: ModelInfo
    validation: dict[str, Any]
    test: dict[str, Any]
    test_at_half: dict[str, Any]


def _train_into(cfg: TrainConfig, spec: ArchSpec, splits: Any, out: Path, started: float) -> RunResult:
    """The run of the resolved ``cfg`` on ``splits``, its files written into ``out`` (the folder being built)."""
    from train.synth import is_synthetic

    assert cfg.data is not None
    synthetic = is_synthetic(cfg.data)
    contract = spec.contract(cfg.height, cfg.width, cfg.color, cfg.interpolation, cfg.resize)
    head = resolve_head(cfg.head if cfg.head != "auto" else spec.head, len(splits.labels))
    _refuse_an_inverted_sigmoid(cfg, splits.labels, head)
    log.info("data: %s", "; ".join(splits.notes))
    arrays = _load_split_arrays(splits, contract, cfg)
    decode_seconds = time.perf_counter() - started
    fitted = _fit(cfg, spec, splits, contract, head, arrays, out)
    scores = _score(cfg, fitted, splits, head, arrays, synthetic)
    saved = save_model(fitted.model, out)
    reload = reload_check(fitted.model, saved["model"], arrays["val"].x)
    metrics = _run_metrics(scores, fitted, arrays, len(splits.labels), decode_seconds, reload)
    card = _write_run_files(out, cfg, spec, contract, splits, arrays, fitted, scores.info, metrics)
    if not math.isfinite(float(fitted.history.get("loss", [0.0])[-1])):
        log.warning("the training loss ended as %s: lower --learning-rate", fitted.history["loss"][-1])
    return RunResult(out=out, config=cfg, info=scores.info, metrics=metrics, card=card)


def _fit(
    cfg: TrainConfig,
    spec: ArchSpec,
    splits: Any,
    contract: PreprocessContract,
    head: Head,
    arrays: dict[str, ArraySet],
    out: Path,
) -> _Fitted:
    """Build, compile and fit the model in its compute session; history.csv and logs/ go into ``out``."""
    from train.compute import compute_session
    from train.pipeline import evaluation_data

    assert cfg.batch_size is not None and cfg.epochs is not None
    opts = cfg.model_options()
    with compute_session(cfg.seed, cfg.deterministic, cfg.mixed_precision, cfg.strategy) as session:
        with session.scope:
            model = _compiled_model(cfg, contract, head, opts, len(splits.labels), len(arrays["train"].y))
        weights, train_data = _training_data(cfg, splits, contract, head, arrays["train"])
        val_data = evaluation_data(arrays["val"].x, arrays["val"].y, head, cfg.batch_size)
        complexity = model_complexity(model)
        log.info(
            "model %s: %s parameters, %.3f GFLOPs per image, input %s; training on %s",
            cfg.arch,
            f"{complexity.params:,}",
            complexity.flops / 1e9,
            contract.input_shape,
            ", ".join(session.devices),
        )
        fit_started = time.perf_counter()
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=cfg.epochs,
            shuffle=False,  # the pipeline already shuffles, seeded
            callbacks=_callbacks(cfg, out),
            verbose=(1 if _interactive() else 2) if cfg.progress else 0,
        )
        fit_seconds = time.perf_counter() - fit_started
        if session.mixed_precision:
            model = float32_copy(spec, contract, head, opts, model)
    return _Fitted(model, history.history, fit_seconds, complexity, weights, session)


def _compiled_model(
    cfg: TrainConfig,
    contract: PreprocessContract,
    head: Head,
    opts: dict[str, Any],
    n_labels: int,
    n_train: int,
) -> Any:
    """The model of ``cfg.arch`` compiled with its optimizer, loss and training metrics."""
    assert cfg.batch_size is not None and cfg.epochs is not None and cfg.learning_rate is not None
    assert cfg.optimizer is not None and cfg.label_smoothing is not None
    model = build_model(cfg.arch, contract, n_labels, head.kind, **opts)
    model.compile(
        optimizer=make_optimizer(
            cfg.optimizer,
            cfg.learning_rate,
            cfg.lr_schedule,
            cfg.epochs * math.ceil(n_train / cfg.batch_size),
        ),
        loss=make_loss(head, cfg.loss, cfg.focal_gamma, cfg.label_smoothing),
        metrics=training_metrics(head),
    )
    return model


def _training_data(
    cfg: TrainConfig, splits: Any, contract: PreprocessContract, head: Head, train: ArraySet
) -> tuple[dict[int, float] | None, Any]:
    """The class weights (None when off) and the augmented, shuffled training batches."""
    from train.augment import Mixup, build_augmenter
    from train.pipeline import class_weights, training_data

    assert cfg.batch_size is not None and cfg.augment is not None
    weights = class_weights(train.y, len(splits.labels)) if cfg.class_weights else None
    negative_index = splits.labels.index(negative_label(splits.labels))
    augmenter = build_augmenter(cfg.augment, cfg.seed, negative_index)
    soft = teacher_targets(cfg, splits, contract, train, head) if cfg.teacher else None
    batches = training_data(
        train.x,
        train.y,
        head,
        cfg.batch_size,
        augmenter,
        weights,
        seed=cfg.seed,
        soft_targets=soft,
        mixup=Mixup(cfg.mixup, cfg.seed) if cfg.mixup > 0 else None,
    )
    return weights, batches


def _score(
    cfg: TrainConfig, fitted: _Fitted, splits: Any, head: Head, arrays: dict[str, ArraySet], synthetic: bool
) -> _Scores:
    """Threshold on validation only; then the test split, once."""
    assert cfg.out is not None and cfg.threshold_rule is not None
    model = fitted.model
    val_out = predict_arrays(model, arrays["val"].x)
    choice = choose_validation_threshold(
        lambda x: predict_arrays(model, x), arrays["val"], val_out, splits.labels, head.kind,
        cfg.threshold_rule, cfg.threshold_on,
    )  # fmt: skip
    complexity = fitted.complexity
    info = ModelInfo(
        model_version=model_version(cfg),
        arch=cfg.arch,
        labels=splits.labels,
        negative_label=negative_label(splits.labels),
        threshold=float(choice.threshold),
        head=head.kind,
        synthetic=synthetic,
        threshold_rule=f"{choice.rule}: {choice.description}",
        extra={"params": complexity.params, "flops": complexity.flops, "run_folder": cfg.out.name},
    )
    validation = evaluate_outputs(arrays["val"].y, val_out, info, bootstrap=cfg.bootstrap, seed=cfg.seed)
    test_out = predict_arrays(model, arrays["test"].x)
    test = evaluate_outputs(arrays["test"].y, test_out, info, bootstrap=cfg.bootstrap, seed=cfg.seed)
    test_half = evaluate_outputs(
        arrays["test"].y, test_out, info, bootstrap=cfg.bootstrap, seed=cfg.seed, threshold=0.5
    )
    return _Scores(choice, info, validation, test, test_half)


def _timing(fitted: _Fitted, arrays: dict[str, ArraySet], decode_seconds: float) -> dict[str, Any]:
    """Where the run's time went, as metrics.json records it."""
    epoch_seconds = [float(s) for s in fitted.history.get("epoch_seconds", [])]
    return {
        "decode_and_split_seconds": round(decode_seconds, 2),
        "fit_seconds": round(fitted.fit_seconds, 2),
        "epochs_run": len(epoch_seconds),
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "mean_epoch_seconds": round(float(np.mean(epoch_seconds)), 2) if epoch_seconds else None,
        # the first epoch includes graph tracing; later ones are the steady state
        "steady_epoch_seconds": round(float(np.median(epoch_seconds[1:])), 2)
        if len(epoch_seconds) > 1
        else None,
        "train_images": len(arrays["train"]),
        "devices": fitted.session.devices,
    }


def _run_metrics(
    scores: _Scores,
    fitted: _Fitted,
    arrays: dict[str, ArraySet],
    n_labels: int,
    decode_seconds: float,
    reload: dict[str, Any],
) -> dict[str, Any]:
    """The content of metrics.json."""
    metrics = {
        "model_version": scores.info.model_version,
        "synthetic": scores.info.synthetic,
        "threshold": threshold_record(scores.choice),
        "test": scores.test,
        "test_at_0.5": scores.test_at_half,
        "validation": scores.validation,
        "history": {k: [float(v) for v in vals] for k, vals in fitted.history.items()},
        "timing": _timing(fitted, arrays, decode_seconds),
        "reload_check": reload,
    }
    if n_labels != len(set(arrays["test"].y.tolist())):
        metrics["note"] = (
            "the test split does not hold every class; per-class figures of absent classes are empty"
        )
    return metrics


def _write_run_files(
    out: Path,
    cfg: TrainConfig,
    spec: ArchSpec,
    contract: PreprocessContract,
    splits: Any,
    arrays: dict[str, ArraySet],
    fitted: _Fitted,
    info: ModelInfo,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write the sidecars, config, split, metrics, plots and model card into ``out``; the card."""
    from train.report import build_model_card, write_plots

    contract.save(out)
    info.save(out)
    atomic_write_json(out / CONFIG_FILE, cfg.to_dict())
    splits.save(out / SPLIT_FILE)
    atomic_write_json(out / METRICS_FILE, metrics)
    plots = write_plots(out, metrics, splits.labels)
    card = build_model_card(
        config=cfg,
        spec=spec,
        contract=contract,
        info=info,
        complexity=fitted.complexity.to_dict(),
        splits=splits,
        arrays=arrays,
        metrics=metrics,
        session=fitted.session.to_dict(),
        class_weights=fitted.class_weights,
        plots=plots,
    )
    atomic_write_json(out / MODEL_CARD_FILE, card)
    return card


def _interactive() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())
