"""What a run reports: PNG plots, the model card, and the one-screen summary table.

The model card is the record a reviewer reads before trusting a model: what
it is (architecture, parameters, FLOPs), what it saw (data, split, patients,
skipped files), how images become inputs and why, how it was trained, how it
was measured (test metrics with 95% CIs, at the validation-chosen threshold
and at 0.5), the threshold and how it was chosen, and what it is for:
decision support, not a diagnosis. Runs on synthetic phantoms say SYNTHETIC.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from edge_runtime.contract import (
    CONTRACT_FILE,
    INTENDED_USE,
    MODEL_INFO_FILE,
    SYNTHETIC_WARNING,
    ModelInfo,
    PreprocessContract,
)
from edge_runtime.fileio import atomic_write_via, sha256_file
from edge_runtime.metrics import BINARY_METRICS, format_with_ci
from edge_runtime.run_layout import (
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    MODEL_KERAS_FILE,
    SPLIT_FILE,
)
from train.config import CONFIG_FILE, TrainConfig

CARD_SCHEMA = 1
PLOTS_DIR = "plots"
SQUASH_SIZE = 224

_NAMES = {
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "f1": "F1",
    "roc_auc": "ROC AUC",
}


# --------------------------------------------------------------------------- plots


def write_plots(out: Path, metrics: dict[str, Any], labels: tuple[str, ...]) -> dict[str, str]:
    """Loss and accuracy curves, test confusion matrix and ROC curves as PNGs under ``out/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    banner = " [SYNTHETIC]" if metrics.get("synthetic") else ""

    history = metrics.get("history", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    label=("validation " if prefix else "train ") + key,
                )
        ax.set_xlabel("epoch")
        ax.set_title(key + banner)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written["curves"] = _save(fig, folder / "curves.png")

    test = metrics["test"]
    matrix = test["confusion_matrix"]["rows_true_cols_predicted"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(labels), 1.2 + 1.2 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test, threshold {test['threshold']:.3f}{banner}")
    fig.tight_layout()
    written["confusion_matrix"] = _save(fig, folder / "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, result in (("test", test), ("validation", metrics.get("validation"))):
        if result and result.get("roc_curve"):
            curve = result["roc_curve"]
            auc = result.get("roc_auc")
            ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, abnormal vs normal" + banner)
    ax.legend(loc="lower right")
    fig.tight_layout()
    written["roc"] = _save(fig, folder / "roc.png")
    return written


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    try:
        atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return f"{PLOTS_DIR}/{path.name}"


# --------------------------------------------------------------------------- model card


def contract_rationale(contract: PreprocessContract, summary: dict[str, Any]) -> str:
    """Why this contract, given where the training images come from (the MANIFEST `source` column)."""
    splits = summary.get("splits", {})

    def copies(split: str) -> tuple[int, int]:
        sources = splits.get(split, {}).get("sources", {})
        resized = sum(n for source, n in sources.items() if source.startswith("resized_copy"))
        return resized, sum(sources.values())

    train_copies, train_total = copies("train")
    test_copies, test_total = copies("test")
    squash = contract.resize == "stretch" and contract.height == contract.width == SQUASH_SIZE
    if train_copies == 0:
        return (
            f"Every image is resized ({contract.resize}) to {contract.height}x{contract.width} {contract.color}; "
            "all training images come from the same kind of source, so train and test pass the same step."
        )
    mix = (
        f"{train_copies} of {train_total} training images exist only as 224x224 squashed copies (aspect ratio "
        f"not kept), while {test_total - test_copies} of {test_total} test images are downsampled originals"
    )
    if squash:
        return (
            f"{mix}. Squashing every image the same way to 224x224 makes train and test images alike: the "
            "originals go through the step the copies went through."
        )
    return (
        f"{mix}. This contract ({contract.height}x{contract.width}, {contract.resize}) resamples the copies from "
        "224x224 and the originals from larger images, so train and test images differ in sharpness; "
        "the toolkit's 224x224 squash contract (--image-size 224 --resize stretch) removes that gap."
    )


def _weights_note(config: TrainConfig, spec: Any) -> str:
    if not spec.transfer:
        return "random initialisation (trained from scratch)"
    if config.weights is None:
        return (
            "random initialisation: no ImageNet weights file was given (--weights), so this is NOT a "
            "transfer-learned model; nothing is downloaded"
        )
    return f"ImageNet weights from {config.weights} (sha256 {sha256_file(config.weights)})"


def _metric_block(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_images": result["n_images"],
        "n_abnormal": result["n_abnormal"],
        "n_normal": result["n_normal"],
        "threshold": result["threshold"],
        **{name: result.get(name) for name in BINARY_METRICS},
        "ci95": result.get("ci95", {}),
        "confusion": result["confusion"],
        "per_class": result["per_class"],
    }


def build_model_card(
    *,
    config: TrainConfig,
    spec: Any,
    contract: PreprocessContract,
    info: ModelInfo,
    complexity: dict[str, Any],
    splits: Any,
    arrays: dict[str, Any],
    metrics: dict[str, Any],
    session: dict[str, Any],
    class_weights: dict[int, float] | None,
    plots: dict[str, str],
) -> dict[str, Any]:
    """The model card of a run (JSON-ready)."""
    summary = splits.summary()
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "model_version": info.model_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "synthetic": info.synthetic,
        "intended_use": INTENDED_USE,
        "decision_support_not_diagnosis": True,
        "architecture": _architecture_section(config, spec, info, complexity),
        "preprocessing": _preprocessing_section(contract, summary),
        "data": _data_section(config, summary, arrays),
        "training": _training_section(config, info, metrics["timing"], session, class_weights),
        "threshold": _threshold_section(info, metrics, summary),
        "metrics": _metrics_section(config, metrics),
        "reload_check": metrics["reload_check"],
        "limitations": _limitations(config, summary, info),
        "plots": plots,
        "files": {
            "model": MODEL_FILE,
            "model_keras": MODEL_KERAS_FILE,
            "contract": CONTRACT_FILE,
            "model_info": MODEL_INFO_FILE,
            "config": CONFIG_FILE,
            "split": SPLIT_FILE,
            "metrics": METRICS_FILE,
            "history": HISTORY_FILE,
        },
    }
    if info.synthetic:
        card = {"warning": SYNTHETIC_WARNING, **card}
    return card


def _architecture_section(
    config: TrainConfig, spec: Any, info: ModelInfo, complexity: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": config.arch,
        "from": spec.source,
        "summary": spec.summary,
        # the model settings it was built with (the builder's default where none was given)
        "options": config.model_settings(),
        "head": info.head,
        "labels": list(info.labels),
        "negative_label": info.negative_label,
        "weights": _weights_note(config, spec),
        **complexity,
    }


def _preprocessing_section(contract: PreprocessContract, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "contract": contract.to_dict(),
        "description": contract.describe(),
        "why": contract_rationale(contract, summary),
        "model_input": (
            f"float32 pixel values 0..255 of shape {list(contract.input_shape)} (NHWC); the first layer "
            "rescales; exported models take uint8"
        ),
    }


def _data_section(config: TrainConfig, summary: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any]:
    skipped = {name: [{"path": p, "reason": r} for p, r in arrays[name].skipped] for name in arrays}
    return {
        "root": str(config.data),
        "split_mode": config.split_mode,
        "label_mode": config.label_mode,
        "split": summary,
        "images_used": {name: len(arrays[name]) for name in arrays},
        "skipped_unreadable": {name: len(items) for name, items in skipped.items()},
        "skipped_files": skipped,
    }


def _training_section(
    config: TrainConfig,
    info: ModelInfo,
    timing: dict[str, Any],
    session: dict[str, Any],
    class_weights: dict[int, float] | None,
) -> dict[str, Any]:
    import keras

    return {
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "lr_schedule": config.lr_schedule,
        "batch_size": config.batch_size,
        "epochs_requested": config.epochs,
        "epochs_run": timing["epochs_run"],
        "early_stopping_patience": config.early_stopping,
        "loss": config.loss if config.loss == "crossentropy" else f"focal (gamma {config.focal_gamma})",
        "label_smoothing": config.label_smoothing,
        "mixup_alpha": config.mixup or None,
        "class_weights": (
            {info.labels[i]: round(w, 4) for i, w in class_weights.items()} if class_weights else None
        ),
        "augmentation": config.augment,
        "undersample": config.undersample,
        "seed": config.seed,
        "split_seed": config.seed if config.split_seed is None else config.split_seed,
        "compute": session,
        "seconds_per_epoch": timing["mean_epoch_seconds"],
        "steady_seconds_per_epoch": timing["steady_epoch_seconds"],
        "fit_seconds": timing["fit_seconds"],
        "versions": {
            "keras": keras.__version__,
            "python": platform.python_version(),
            **_framework_versions(),
        },
    }


def _threshold_section(info: ModelInfo, metrics: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "value": info.threshold,
        "rule": metrics["threshold"]["rule"],
        "how_chosen": metrics["threshold"]["how"],
        "chosen_on": (
            f"the validation split only ({metrics['validation']['n_images']} images, "
            f"{summary['splits']['val']['patients']} patients); the test split was predicted once, afterwards"
        ),
    }


def _metrics_section(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "test": _metric_block(metrics["test"]),
        "test_at_threshold_0.5": _metric_block(metrics["test_at_0.5"]),
        "validation": _metric_block(metrics["validation"]),
        "confidence_intervals": (
            f"95% percentile bootstrap over images, {metrics['test']['bootstrap_resamples']} resamples, "
            f"seed {config.seed}"
        ),
        "positive_class": metrics["test"]["positive"],
    }


def _framework_versions() -> dict[str, str]:
    try:
        import tensorflow as tf
    except ImportError:
        return {}
    return {"tensorflow": tf.__version__}


def _limitations(config: TrainConfig, summary: dict[str, Any], info: ModelInfo) -> list[str]:
    items = [
        "Decision support for a trained clinician, not a diagnosis; not validated for clinical use.",
        "Performance outside the population and equipment of the training data (for the Kermany set: children "
        "aged 1-5, anterior-posterior films, one hospital in Guangzhou) is unknown.",
        "Bootstrap intervals resample images, not patients; with several images per patient they are "
        "somewhat narrow.",
    ]
    if config.split_mode == "random":
        items.append(
            "Random image-level split (seed 000's protocol): images of one patient are on both sides of "
            "train/val/test, so these test figures are inflated; do not compare them with patient-wise runs."
        )
    overlap = summary.get("patient_overlap", {}).get("train-test", {})
    if overlap.get("patients"):
        items.append(
            f"{overlap['patients']} patient ids occur in both train and test "
            f"({overlap.get('test_images', 0)} test images), as in the official split."
        )
    if info.synthetic:
        items.insert(0, SYNTHETIC_WARNING)
    return items


# --------------------------------------------------------------------------- summary table


def summary_table(card: dict[str, Any], metrics: dict[str, Any], out: Path) -> str:
    """The one screen ``pneumo train`` prints at the end."""
    arch = card["architecture"]
    data = card["data"]
    training = card["training"]
    test, half = metrics["test"], metrics["test_at_0.5"]
    used = data["images_used"]
    skipped = sum(data["skipped_unreadable"].values())
    lines = []
    if card.get("synthetic"):
        lines.append(f"*** {SYNTHETIC_WARNING} ***")
    lines += [
        f"run        {out}   ({card['model_version']})",
        f"model      {arch['name']}: {arch['params']:,} parameters, {arch['gflops']:.3f} GFLOPs/image, "
        f"{card['preprocessing']['description']}",
        f"data       train {used['train']} / val {used['val']} / test {used['test']} images "
        f"({data['split_mode']} split{f', {skipped} unreadable skipped' if skipped else ''})",
        f"training   {training['epochs_run']} epochs, {training['optimizer']} lr {training['learning_rate']:g}, "
        f"batch {training['batch_size']}, {training['seconds_per_epoch']} s/epoch on "
        f"{', '.join(training['compute']['devices'])}",
        f"threshold  {test['threshold']:.4f}  ({metrics['threshold']['how']})",
        "",
        f"test ({test['n_images']} images)  {'at threshold ' + format(test['threshold'], '.3f'):<26}at 0.5",
    ]
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        lines.append(f"  {_NAMES[name]:<18}{format_with_ci(test, name):<26}{format_with_ci(half, name)}")
    c = test["confusion"]
    lines.append(f"  confusion         TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}")
    lines += [
        "",
        "Decision support, not a diagnosis. 95% bootstrap intervals in brackets.",
        f"files      {out}/{MODEL_FILE}, {MODEL_CARD_FILE}, {METRICS_FILE}, plots/",
        f"next       pneumo export bundle {out} -o bundles/{out.name}",
    ]
    return "\n".join(lines)
