"""Average trained runs into one model: one graph, one contract, one threshold chosen on validation.

``pneumo train ensemble RUN RUN ... --out DIR`` writes a run folder like
``pneumo train`` does (model.h5, contract.json, model_info.json, split.json,
metrics.json, model_card.json), so ``pneumo export bundle`` and ``pneumo
evaluate`` take it unchanged, and it can be the ``--teacher`` of a distilled
run. The members must share the preprocessing contract, the labels and the
exact train/val/test split: a member that trained on another member's
validation images would make the ensemble's threshold and validation score a
leak. The test split is scored once, after the threshold is fixed.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import CONTRACT_FILE, MODEL_INFO_FILE, ModelInfo, PreprocessContract
from edge_runtime.errors import EdgeError
from edge_runtime.fileio import atomic_write_json, read_json
from edge_runtime.run_layout import METRICS_FILE, MODEL_CARD_FILE, MODEL_FILE, SPLIT_FILE
from train.config import THRESHOLD_SOURCES
from train.errors import ConfigError, TrainError

log = logging.getLogger("pneumo")

ENSEMBLE_FILE = "ensemble.json"
TTA_MODES = ("none", "crops")
# Test-time views for --tta crops, as fractions of the side cropped (top, bottom, left, right) before
# resizing back: the whole image, a centre view with 6% cut from every side (content x1.14) and two
# views with 8% cut from two sides (content x1.09, shifted 4%). The shifts lie inside what the xray
# augmentation trains on (shift 5%), the x1.14 zoom slightly beyond its zoom (content x0.91..x1.11)
# and inside xray-shape's (x0.83..x1.25).
TTA_CROPS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    (0.06, 0.06, 0.06, 0.06),
    (0.08, 0.0, 0.08, 0.0),
    (0.0, 0.08, 0.0, 0.08),
)


@dataclass(frozen=True)
class EnsembleConfig:
    """Which runs to average and where the ensemble's run folder goes."""

    members: tuple[Path, ...]
    out: Path
    tta: str = "none"
    threshold_rule: str | None = None  # None: the first member's rule
    threshold_on: str | None = None  # validation | shape-pooled; None: the first member's
    overwrite: bool = False
    bootstrap: int = 1000
    seed: int = 0
    cache_dir: Path | None = None
    progress: bool = True
    workers: int = 2

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ConfigError(f"--tta {self.tta!r}: expected one of {', '.join(TTA_MODES)}")
        if self.threshold_on is not None and self.threshold_on not in THRESHOLD_SOURCES:
            raise ConfigError(
                f"--threshold-on {self.threshold_on!r}: expected one of {', '.join(THRESHOLD_SOURCES)}"
            )
        if len(self.members) < (1 if self.tta != "none" else 2):
            raise ConfigError(
                f"an ensemble needs at least two run folders (or one with --tta crops), got {len(self.members)}"
            )
        names = [Path(m).resolve() for m in self.members]
        if len(set(names)) != len(names):
            raise ConfigError("the same run folder is given twice; each member must be a different run")


@dataclass(frozen=True)
class EnsembleResult:
    """What :func:`make_ensemble` produced (everything is also on disk in ``out``), like ``fit.RunResult``."""

    out: Path
    config: EnsembleConfig
    info: ModelInfo
    metrics: dict[str, Any]
    card: dict[str, Any]


@dataclass
class Member:
    """One run folder to average: its records and its (trained) configuration."""

    folder: Path
    contract: PreprocessContract
    info: ModelInfo
    config: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> Member:
        from train.config import CONFIG_FILE

        for name in (MODEL_FILE, SPLIT_FILE, CONTRACT_FILE, MODEL_INFO_FILE):
            if not (folder / name).is_file():
                raise TrainError(
                    f"{folder / name}: missing; an ensemble member must be a run folder written by 'pneumo train'"
                )
        try:
            contract = PreprocessContract.load(folder)
            info = ModelInfo.load(folder)
        except EdgeError as exc:
            raise TrainError(f"{folder}: {exc}") from exc
        # An ensemble's folder has no config.json (it can still be a member or a teacher).
        config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        return cls(folder=folder, contract=contract, info=info, config=dict(config))


def split_key(splits: Any) -> dict[str, list[tuple[str, str]]]:
    return {name: [(str(s.path), s.label) for s in splits.split(name)] for name in ("train", "val", "test")}


def check_compatible(members: list[Member]) -> Any:
    """The shared Splits of ``members``; TrainError naming the first member that differs."""
    from train.data import Splits

    first = members[0]
    splits = Splits.load(first.folder / SPLIT_FILE)
    key = split_key(splits)
    for member in members[1:]:
        require_compatible(
            member, first.contract, first.info.labels, first.info.head, key, f"{first.folder}'s"
        )
    return splits


def require_compatible(
    run: Member,
    contract: PreprocessContract,
    labels: tuple[str, ...],
    head: str,
    key: dict[str, list[tuple[str, str]]],
    whose: str,
) -> None:
    """TrainError unless ``run`` takes the same input, has the same outputs and lists exactly the split ``key``.

    Runs combined (ensemble members, a teacher and its student) must match, or one of them
    would have trained on the others' validation images.
    """
    from train.data import Splits

    if run.contract.to_dict() != contract.to_dict():
        raise TrainError(
            f"{run.folder}: preprocessing contract differs from {whose} ({run.contract.describe()} vs "
            f"{contract.describe()}); runs combined this way take the same input, so train them with the "
            "same --image-size, --color and --resize"
        )
    if run.info.labels != labels or run.info.head != head:
        raise TrainError(
            f"{run.folder}: labels/head {run.info.labels}/{run.info.head} differ from {whose} ({labels}/{head})"
        )
    other = split_key(Splits.load(run.folder / SPLIT_FILE))
    for name in ("train", "val", "test"):
        if other[name] != key[name]:
            raise TrainError(
                f"{run.folder}: its {name} split differs from {whose}; runs combined this way must share the "
                "split (same --data, --split-seed or --seed, --val-fraction and --sources), or validation "
                "would hold images one of them trained on"
            )


def build_ensemble(member_models: list[Any], contract: PreprocessContract, tta: str = "none") -> Any:
    """One Keras model: every member on every view of one input, all outputs averaged."""
    import keras

    for k, model in enumerate(member_models):
        model.name = f"member_{k}"  # nested models need distinct names in one graph
    image = keras.Input(shape=contract.input_shape, name="image")
    views = (
        [image]
        if tta == "none"
        else [_crop_view(image, crop, k, contract) for k, crop in enumerate(TTA_CROPS)]
    )
    # Members are frozen: training=False fixes BatchNorm/Dropout to inference even if a caller forgets it
    # (a nested model called with training=None would otherwise run in training mode).
    outputs = [m(view, training=False) for m in member_models for view in views]
    mean = keras.layers.Average(name="ensemble_mean")(outputs)
    return keras.Model(image, mean, name="ensemble")


def _crop_view(
    image: Any, crop: tuple[float, float, float, float], k: int, contract: PreprocessContract
) -> Any:
    """``image`` cropped by the fractions ``crop`` and resized back (bilinear) to the contract's size."""
    import keras

    if not any(crop):
        return image
    top, bottom, left, right = crop
    h, w = contract.height, contract.width
    pixels = ((round(top * h), round(bottom * h)), (round(left * w), round(right * w)))
    cropped = keras.layers.Cropping2D(pixels, name=f"tta_crop_{k}")(image)
    return keras.layers.Resizing(h, w, interpolation="bilinear", name=f"tta_resize_{k}")(cropped)


def make_ensemble(config: EnsembleConfig) -> EnsembleResult:
    """Average the member runs, choose the threshold on validation, score test once; write a run folder."""
    from edge_runtime.metrics import evaluate_outputs
    from train.cache import load_arrays
    from train.compute import require_keras
    from train.evaluate import load_keras
    from train.fit import (
        building_run_folder,
        check_run_folder,
        choose_validation_threshold,
        negative_label,
        predict_arrays,
        reload_check,
        save_model,
        threshold_record,
    )
    from train.models.complexity import model_complexity
    from train.synth import is_synthetic

    require_keras("an ensemble", ("h5py",))
    members = [Member.open(Path(folder)) for folder in config.members]
    splits = check_compatible(members)
    # --overwrite replaces the whole folder (built aside, swapped in at the end): never an old run's
    # config.json or history beside the ensemble, and never a member's own files deleted.
    check_run_folder(config.out, config.overwrite, {f"the member run {m.folder}": m.folder for m in members})
    contract, first = members[0].contract, members[0].info
    model = build_ensemble([load_keras(m.folder / MODEL_FILE) for m in members], contract, config.tta)
    complexity = model_complexity(model)
    if config.tta != "none":  # layer counting sees each member once; it runs once per view
        complexity = replace(complexity, macs=complexity.macs * len(TTA_CROPS))
    arrays = {
        name: load_arrays(
            splits.split(name), splits.labels, contract, config.cache_dir, config.progress, config.workers
        )
        for name in ("val", "test")
    }
    rule = config.threshold_rule or _member_rule(members[0])
    val_out = predict_arrays(model, arrays["val"].x)
    negative = negative_label(splits.labels)
    threshold_on = config.threshold_on or str(members[0].config.get("threshold_on") or "validation")
    choice = choose_validation_threshold(
        lambda x: predict_arrays(model, x), arrays["val"], val_out, splits.labels, first.head, rule,
        threshold_on,
    )  # fmt: skip
    synthetic = any(m.info.synthetic for m in members) or is_synthetic(splits.config.root)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    info = ModelInfo(
        model_version=f"ensemble-{config.out.name}-{stamp}",
        arch="ensemble",
        labels=splits.labels,
        negative_label=negative,
        threshold=float(choice.threshold),
        head=first.head,
        synthetic=synthetic,
        threshold_rule=f"{choice.rule}: {choice.description}",
        extra={
            "params": complexity.params,
            "flops": complexity.flops,
            "run_folder": config.out.name,
            "members": [m.info.model_version for m in members],
            "tta": config.tta,
        },
    )
    validation = evaluate_outputs(
        arrays["val"].y, val_out, info, bootstrap=config.bootstrap, seed=config.seed
    )
    test_out = predict_arrays(model, arrays["test"].x)
    test = evaluate_outputs(arrays["test"].y, test_out, info, bootstrap=config.bootstrap, seed=config.seed)
    with building_run_folder(config.out, config.overwrite) as work:
        saved = save_model(model, work)
        reload = reload_check(model, saved["model"], arrays["val"].x)
        metrics = {
            "model_version": info.model_version,
            "synthetic": synthetic,
            "threshold": threshold_record(choice),
            "test": test,
            "validation": validation,
            "members": [_member_row(m) for m in members],
            "reload_check": reload,
        }
        contract.save(work)
        info.save(work)
        splits.save(work / SPLIT_FILE)
        atomic_write_json(work / METRICS_FILE, metrics)
        atomic_write_json(work / ENSEMBLE_FILE, _config_record(config))
        card = {
            "model_version": info.model_version,
            "created": stamp,
            "architecture": {
                "name": "ensemble",
                "summary": f"mean of {len(members)} runs' outputs in one graph"
                + (f", each on {len(TTA_CROPS)} test-time crops" if config.tta != "none" else ""),
                "tta": config.tta,
                "members": metrics["members"],
                "head": first.head,
                "labels": list(splits.labels),
                "negative_label": negative,
                **complexity.to_dict(),
            },
            "preprocessing": contract.to_dict(),
            "threshold": metrics["threshold"],
            "metrics": {"validation": validation, "test": test},
            "intended_use": info.intended_use,
            "decision_support_not_diagnosis": True,
            "synthetic": synthetic,
        }
        atomic_write_json(work / MODEL_CARD_FILE, card)
    return EnsembleResult(out=config.out, config=config, info=info, metrics=metrics, card=card)


def _member_rule(member: Member) -> str:
    from edge_runtime.metrics import DEFAULT_THRESHOLD_RULE

    rule = member.config.get("threshold_rule")
    return str(rule) if rule else DEFAULT_THRESHOLD_RULE


def _member_row(member: Member) -> dict[str, Any]:
    metrics_path = member.folder / METRICS_FILE
    scores = read_json(metrics_path) if metrics_path.is_file() else {}
    val, test = scores.get("validation", {}), scores.get("test", {})
    return {
        "folder": str(member.folder),
        "model_version": member.info.model_version,
        "val_roc_auc": val.get("roc_auc"),
        "test_roc_auc": test.get("roc_auc"),
        "test_accuracy": test.get("accuracy"),
    }


def _config_record(config: EnsembleConfig) -> dict[str, Any]:
    record = asdict(config)
    record["members"] = [str(m) for m in config.members]
    record["out"] = str(config.out)
    record["cache_dir"] = str(config.cache_dir) if config.cache_dir else None
    return record


def member_outputs(member: Member, x: np.ndarray) -> np.ndarray:
    """An opened run's model outputs on uint8 images (used for distillation targets)."""
    from train.evaluate import load_keras
    from train.fit import predict_arrays

    return predict_arrays(load_keras(member.folder / MODEL_FILE), x)


# --------------------------------------------------------------------------- the summary of a result


def blinded(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without any test figure (the ensemble's or a member's), for ``--blind``."""
    members = [{k: v for k, v in row.items() if not k.startswith("test_")} for row in metrics["members"]]
    return {
        **{k: v for k, v in metrics.items() if k != "test"},
        "members": members,
        "test": None,
        "blind": "test figures hidden; they are in metrics.json",
    }


def summary(result: EnsembleResult, metrics: dict[str, Any] | None = None) -> str:
    """A short table: each member's stored scores, then the ensemble's.

    ``metrics``: the figures to show, default ``result.metrics``; :func:`blinded` ones show validation only.
    """
    metrics = result.metrics if metrics is None else metrics
    card = result.card
    synthetic = " (SYNTHETIC phantoms: not a medical result)" if metrics["synthetic"] else ""
    blind = metrics.get("test") is None
    header = f"{'model':<40} {'val AUC':>8}" + ("" if blind else f" {'test AUC':>9} {'test acc':>9}")
    lines = [f"ensemble {metrics['model_version']} -> {result.out}{synthetic}", header]
    val, test = metrics["validation"], metrics.get("test") or {}
    rows = [(Path(row["folder"]).name, row) for row in metrics["members"]]
    rows.append(
        (
            "ensemble",
            {
                "val_roc_auc": val.get("roc_auc"),
                "test_roc_auc": test.get("roc_auc"),
                "test_accuracy": test.get("accuracy"),
            },
        )
    )
    for name, row in rows:
        tail = "" if blind else f" {_fmt(row.get('test_roc_auc')):>9} {_fmt(row.get('test_accuracy')):>9}"
        lines.append(f"{name:<40} {_fmt(row.get('val_roc_auc')):>8}{tail}")
    threshold = metrics["threshold"]
    scored = (
        f"test figures hidden (--blind); they are in {result.out}/metrics.json"
        if blind
        else f"test sensitivity {_fmt(test.get('sensitivity'))}, specificity {_fmt(test.get('specificity'))}"
    )
    lines.append(f"threshold {threshold['value']:.4f} ({threshold['rule']}, chosen on validation); {scored}")
    lines.append(
        f"{card['architecture']['params']:,} parameters, "
        f"{card['architecture']['gflops']:.3f} GFLOPs per image. Decision support, not a diagnosis."
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
