"""The results of a sweep: one row per run, as results.csv, results.md, results.json and results.png.

A row is read from the run folder itself (``metrics.json``, ``model_card.json``,
``config.json``), never from the sweep's memory, so a resumed or refreshed
sweep (``pneumo train sweep ... --results-only``) writes the same table. A run
whose folder finished under other settings than the experiment file now says
is shown as ``stale`` with what it actually ran.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import math
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edge_runtime.fileio import atomic_write_json, atomic_write_text, atomic_write_via, read_json, sha256_file
from edge_runtime.run_layout import METRICS_FILE, MODEL_CARD_FILE, MODEL_FILE, SPLIT_FILE
from train.config import CONFIG_FILE, TrainConfig
from train.errors import TrainError

if TYPE_CHECKING:
    from train.sweep import Experiment, PlannedRun

# Kermany et al., Cell 2018, Inception v3 on the official test split: the reference line of the plot.
KERMANY_2018 = {"accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "roc_auc": 0.968}
METRIC_COLUMNS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
RESULT_FILES = ("results.csv", "results.md", "results.json", "results.png")
# Every row column computed from the test split's outputs: what --blind hides (see result_row).
TEST_FIGURES = frozenset(
    {name for metric in METRIC_COLUMNS for name in (metric, f"{metric}_low", f"{metric}_high")}
    | {"accuracy_at_0.5", "sensitivity_at_0.5", "specificity_at_0.5", "class_accuracy"}
)
# Settings that do not change what a run computes; a completed run is not redone when only these differ.
NOT_COMPARED = ("out", "overwrite", "progress", "workers", "cache_dir", "tensorboard")
# Fields that default to "the architecture's" (or changed their default) and were added after runs had
# been saved: what those runs did before the field existed. A random split pooled every folder before
# session 21 made the official train folder its default pool.
BEFORE_FIELD_EXISTED = MappingProxyType({"threshold_on": "validation", "random_pool": "all"})


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def is_complete(folder: Path) -> bool:
    """A run folder is complete when every file a finished ``pneumo train`` run writes is there.

    ``metrics.json`` and ``model_card.json`` must parse; the model and the records that
    ``pneumo export bundle`` reads (and config.json, which tells whether the settings changed)
    must exist. Partial folders of old versions, written in place, miss one of them.
    """
    from edge_runtime.contract import CONTRACT_FILE, MODEL_INFO_FILE

    if not all(
        (folder / name).is_file()
        for name in (MODEL_FILE, CONTRACT_FILE, MODEL_INFO_FILE, SPLIT_FILE, CONFIG_FILE)
    ):
        return False
    try:
        return isinstance(read_json(folder / METRICS_FILE), dict) and isinstance(
            read_json(folder / MODEL_CARD_FILE), dict
        )
    except (OSError, ValueError):
        return False


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def settings_changed(run: PlannedRun) -> list[str]:
    """Fields whose saved value in the run's config.json differs from the plan (empty: same run)."""
    assert run.config.out is not None
    try:
        saved = read_json(run.config.out / CONFIG_FILE)
    except (OSError, ValueError):
        return ["config.json missing or unreadable"]
    planned = comparable(run.config.to_dict())
    saved = comparable(saved if isinstance(saved, dict) else {})
    # A field added to TrainConfig after the run was saved is absent there: it ran with the default,
    # or, for a field whose default is "the architecture's", with what the code did before it existed.
    defaults = {f.name: f.default for f in fields(TrainConfig)} | dict(BEFORE_FIELD_EXISTED)
    if planned.get("data") is None:
        # --dry-run / --results-only without --data: no folder was named, so none has changed
        planned.pop("data", None)
        saved.pop("data", None)
    else:
        # `pneumo train --data ../shared/...` records the folder as typed; the sweep plans it absolute
        planned["data"], saved["data"] = _folder(planned["data"]), _folder(saved.get("data"))
    if "random" not in (planned.get("split_mode"), saved.get("split_mode", defaults["split_mode"])):
        # only a random split reads its pool: a patient-wise run is the same run whatever it says
        planned.pop("random_pool", None)
        saved.pop("random_pool", None)
    if _same_file(planned.get("weights"), saved.get("weights")):
        # a weights package installed in another checkout's .venv: another path, the same file
        saved["weights"] = planned["weights"]
    return sorted(k for k in set(planned) | set(saved) if planned.get(k) != saved.get(k, defaults.get(k)))


def _same_file(a: Any, b: Any) -> bool:
    if a is None or b is None or a == b:
        return False
    try:
        return sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def _folder(path: Any) -> str | None:
    """``path`` made absolute against the working folder, as the sweep that compares it sees it."""
    return None if path is None else str(Path(str(path)).resolve())


def _ci(metrics: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    ci = (metrics.get("ci95") or {}).get(name) or [None, None]
    return ci[0], ci[1]


def settings_summary(config: TrainConfig) -> str:
    """The settings that tell runs apart, in a few words."""
    c = config
    parts = [
        f"{c.optimizer} {c.learning_rate:g}",
        f"batch {c.batch_size}",
        f"{c.epochs} ep",
        f"{c.height}x{c.width} {'gray' if c.color == 'grayscale' else c.color}",
    ]
    if c.early_stopping:
        parts.append(f"early stop {c.early_stopping}")
    if c.augment and c.augment != "none":
        parts.append(f"aug {c.augment}")
    if c.class_weights:
        parts.append("class weights")
    if c.undersample:
        parts.append("undersample")
    if c.dropout is not None:
        parts.append(f"dropout {c.dropout:g}")
    if c.width_multiplier != 1.0:
        parts.append(f"width x{c.width_multiplier:g}")
    if c.activation is not None:
        parts.append(c.activation)
    if c.last_conv_filters is not None:
        parts.append(f"last conv {c.last_conv_filters}")
    if c.pool_dropout is not None:
        parts.append(f"pool dropout {c.pool_dropout:g}")
    if c.loss == "focal":
        parts.append(f"focal gamma {c.focal_gamma:g}")
    if c.label_smoothing:
        parts.append(f"smoothing {c.label_smoothing:g}")
    if c.mixup:
        parts.append(f"mixup {c.mixup:g}")
    if c.lr_schedule != "constant":
        parts.append(f"{c.lr_schedule} lr")
    if c.split_mode == "random":
        parts.append(
            f"random 70/20/10 split of {'the train folder' if c.random_pool == 'train' else 'all folders'}"
        )
    if c.label_mode != "binary":
        parts.append(f"labels {c.label_mode}")
    if c.sources != "all":
        parts.append(f"sources {c.sources}")
    if c.max_per_class:
        parts.append(f"max {c.max_per_class}/class")
    if c.resize != "stretch":
        parts.append(c.resize)
    if c.threshold_rule != "sensitivity:0.95":
        parts.append(f"threshold {c.threshold_rule}")
    if c.threshold_on not in (None, "validation"):
        parts.append(f"threshold on {c.threshold_on}")
    if c.seed != 0:
        parts.append(f"seed {c.seed}")
    if c.split_seed is not None and c.split_seed != c.seed:
        parts.append(f"split seed {c.split_seed}")
    return ", ".join(parts)


def _test_split(card: dict[str, Any]) -> str:
    data = card.get("data", {})
    splits = (data.get("split") or {}).get("splits", {})
    folders = set(splits.get("test", {}).get("from_folder") or {})
    if data.get("split_mode") == "random":
        # read from the folders the images came from, so cards written before random_pool existed say it too
        pooled = {folder for part in splits.values() for folder in part.get("from_folder") or {}}
        if pooled == {"flat"}:
            return "random image split (leaks patients)"
        return f"random image split of {'train' if pooled == {'train'} else 'all folders'} (leaks patients)"
    return "official test" if folders == {"test"} else "test carved by patient"


def result_row(run: PlannedRun, state: dict[str, Any], sweep_name: str) -> dict[str, Any]:
    """One row of the results table: the run's plan, and its metrics when its folder is complete."""

    folder = run.config.out
    assert folder is not None
    entry = state.get(run.spec.name, {})
    row: dict[str, Any] = {
        "sweep": sweep_name,
        "run": run.spec.name,
        "study": run.spec.study,
        "mode": "reduced" if run.reduced else "full",
        "arch": run.config.arch,
        "settings": settings_summary(run.config),
        "reductions": "; ".join(run.reductions),
        "claim": run.spec.claim,
        "note": run.spec.note,
        "attempts": int(entry.get("attempts", 0)),
        "wall_seconds": entry.get("wall_seconds"),
        "run_folder": str(folder),
    }
    if run.spec.skip:
        row.update(status="not run", detail=run.spec.skip)
        return row
    if not (folder.is_dir() and is_complete(folder)):
        status = entry.get("status", "pending")
        row.update(status="pending" if status == "running" else status, detail=entry.get("error", ""))
        return row
    metrics = read_json(folder / METRICS_FILE)
    card = read_json(folder / MODEL_CARD_FILE)
    test = metrics.get("test", {})
    arch = card.get("architecture", {})
    timing = metrics.get("timing", {})
    row.update(status="done", detail="")
    changed = settings_changed(run)
    if changed:
        # the folder holds an older run: show what it actually ran, and say it is stale
        with contextlib.suppress(TrainError, OSError, ValueError, TypeError):
            saved = dict(BEFORE_FIELD_EXISTED) | read_json(folder / CONFIG_FILE)
            row["settings"] = settings_summary(TrainConfig.from_dict(saved))
        row.update(
            status="stale", detail=f"finished with other settings ({', '.join(changed)}); rerun the sweep"
        )
    if metrics.get("synthetic"):
        row["mode"] += " SYNTHETIC"
    row["test_split"] = _test_split(card)
    row["test_images"] = test.get("n_images")
    overlap = ((card.get("data", {}).get("split") or {}).get("patient_overlap") or {}).get("train-test", {})
    row["train_test_shared_patients"] = overlap.get("patients")
    row["threshold"] = test.get("threshold")
    # what a choice between runs may look at: the test columns are reported, never chosen on
    row["val_roc_auc"] = (metrics.get("validation") or {}).get("roc_auc")
    for name in METRIC_COLUMNS:
        low, high = _ci(test, name)
        row[name], row[f"{name}_low"], row[f"{name}_high"] = test.get(name), low, high
    # the studies report accuracy at 0.5 (or argmax); the same outputs at 0.5, for comparison only
    half = metrics.get("test_at_0.5") or {}
    row["accuracy_at_0.5"] = half.get("accuracy")
    row["sensitivity_at_0.5"] = half.get("sensitivity")
    row["specificity_at_0.5"] = half.get("specificity")
    matrix = (test.get("confusion_matrix") or {}).get("rows_true_cols_predicted")
    if matrix and len(matrix) > 2:
        total = sum(sum(r) for r in matrix)
        row["class_accuracy"] = sum(matrix[i][i] for i in range(len(matrix))) / total if total else None
        row["n_classes"] = len(matrix)
    row["params"] = arch.get("params")
    row["flops"] = arch.get("flops")
    row["epochs_run"] = timing.get("epochs_run")
    row["fit_seconds"] = timing.get("fit_seconds")
    row["seconds_per_epoch"] = timing.get("mean_epoch_seconds")
    row["train_images"] = timing.get("train_images")
    return row


CSV_COLUMNS = (
    "sweep", "run", "study", "status", "mode", "arch", "settings", "test_split", "test_images",
    "train_images", "train_test_shared_patients", "threshold", "val_roc_auc",
    *(f"{m}{s}" for m in METRIC_COLUMNS for s in ("", "_low", "_high")),
    "accuracy_at_0.5",
    "sensitivity_at_0.5",
    "specificity_at_0.5",
    "class_accuracy", "params", "flops", "epochs_run", "fit_seconds", "seconds_per_epoch", "wall_seconds",
    "attempts", "claim", "note", "reductions", "detail", "run_folder",
)  # fmt: skip


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def with_ci(row: dict[str, Any], name: str) -> str:
    """'0.912 [0.890, 0.933]' from a results row's value and its 95% interval columns."""
    value = row.get(name)
    if value is None:
        return ""
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _count(value: Any) -> str:
    if value is None:
        return ""
    number = float(value)
    if number >= 1e9:
        return f"{number / 1e9:.2f} G"
    if number >= 1e6:
        return f"{number / 1e6:.2f} M"
    if number >= 1e3:
        return f"{number / 1e3:.1f} k"
    return f"{number:.0f}"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def results_markdown(experiment: Experiment, rows: list[dict[str, Any]]) -> str:
    reduced = any(row["mode"].startswith("reduced") for row in rows)
    synthetic = any("SYNTHETIC" in row["mode"] for row in rows)
    lines = [f"# Sweep {experiment.name}" + (" (REDUCED settings)" if reduced else "")]
    if synthetic:
        lines += ["", "**SYNTHETIC data: these figures say nothing about chest X-rays.**"]
    if experiment.description:
        lines += ["", experiment.description]
    lines += [
        "",
        f"Experiment file `{experiment.path.name}`, written {utc_now()}. Metrics on each run's test split at the "
        "threshold chosen on its validation split, with 95% bootstrap intervals; choose between runs by "
        "the validation column, never by the test columns. Positive = pneumonia "
        "(any label other than NORMAL). Decision support, not a diagnosis.",
    ]
    if reduced:
        lines += ["", "Reduced rows ran with fewer images and epochs than the study (see *Reductions*), "
                  "so they measure the recipe on a CPU budget, not its ceiling."]  # fmt: skip
    header = (
        "| run | study | mode | arch | settings | validation ROC AUC | test split (images) | accuracy "
        "| sensitivity | specificity "
        "| F1 | ROC AUC | accuracy at 0.5 | params | FLOPs | train s | study's claim | status |"
    )
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        test = f"{row.get('test_split', '')} ({row['test_images']})" if row.get("test_images") else ""
        accuracy = with_ci(row, "accuracy")
        if row.get("class_accuracy") is not None:
            accuracy += f"; {row['n_classes']}-class accuracy {row['class_accuracy']:.3f}"
        cells = [
            row["run"], row["study"], row["mode"], row["arch"], row["settings"],
            _fmt(row.get("val_roc_auc"), 4), test, accuracy,
            with_ci(row, "sensitivity"), with_ci(row, "specificity"), with_ci(row, "f1"),
            with_ci(row, "roc_auc"), _fmt(row.get("accuracy_at_0.5")), _count(row.get("params")),
            _count(row.get("flops")),
            _fmt(row.get("fit_seconds"), 0), row["claim"], row["status"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    notes = [f"- **{row['run']}**: {row['note']}" for row in rows if row["note"]]
    if notes:
        lines += ["", "## Notes", "", *notes]
    reductions = [f"- **{row['run']}**: {row['reductions']}" for row in rows if row["reductions"]]
    if reductions:
        lines += ["", "## Reductions (--reduced)", "", *reductions]
    problems = [f"- **{row['run']}** ({row['status']}): {row['detail']}" for row in rows if row["detail"]]
    if problems:
        lines += ["", "## Not run or failed", "", *problems]
    lines += [
        "",
        "FLOPs: 2 x multiply-accumulates per image of the conv and dense layers (analytic). "
        "train s: Keras fit time. accuracy at 0.5: the same test outputs at threshold 0.5, as the studies "
        "scored (not chosen on validation; for comparison only). Claims are the studies' own figures, "
        "mostly on splits that leak patients.",
    ]
    return "\n".join(lines) + "\n"


def results_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def plot_results(experiment: Experiment, rows: list[dict[str, Any]], path: Path) -> bool:
    """Accuracy and ROC AUC with 95% intervals per finished run; False when there is nothing to plot."""
    done = [row for row in rows if row["status"] == "done"]
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["run"] + (" (leaky split)" if "leaks" in row.get("test_split", "") else "") for row in done]
    height = max(2.5, 0.45 * len(done) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    positions = list(range(len(done)))[::-1]
    for axis, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "roc_auc", "ROC AUC")):
        for y, row in zip(positions, done):
            value = row.get(metric)
            if value is None:
                continue
            low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
            err = [[value - low], [high - value]] if low is not None and high is not None else None
            color = "tab:red" if "leaks" in row.get("test_split", "") else "tab:blue"
            axis.errorbar(value, y, xerr=err, fmt="o", color=color, capsize=3)
        axis.axvline(KERMANY_2018[metric], color="gray", linestyle="--", linewidth=1, label="Kermany 2018")
        axis.set_title(title + " (95% CI)")
        axis.set_xlim(0.0, 1.02)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_ylim(-0.7, len(done) - 0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(labels)
    axes[1].legend(loc="lower left", fontsize=8)
    mode = " - REDUCED settings" if any(r["mode"].startswith("reduced") for r in done) else ""
    synthetic = " - SYNTHETIC data" if any("SYNTHETIC" in r["mode"] for r in done) else ""
    fig.suptitle(f"{experiment.name}{mode}{synthetic}: test split, threshold from validation")
    fig.tight_layout()
    try:
        atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return True


def write_results(
    experiment: Experiment, plan: list[PlannedRun], root: Path, state: dict[str, Any]
) -> list[dict[str, Any]]:
    """results.csv / .md / .json / .png of every run of the plan (finished or not)."""
    rows = [result_row(run, state, experiment.name) for run in plan]
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "results.csv", results_csv(rows))
    atomic_write_text(root / "results.md", results_markdown(experiment, rows))
    atomic_write_json(
        root / "results.json",
        {
            "sweep": experiment.name,
            "experiments": str(experiment.path),
            "command": (state.get("_sweep") or {}).get("command", ""),
            "rows": rows,
        },
    )
    plot_results(experiment, rows, root / "results.png")
    return rows


def blinded_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without its test figures (:data:`TEST_FIGURES`), as ``--blind`` shows it."""
    return {key: value for key, value in row.items() if key not in TEST_FIGURES}


def summary_table(rows: list[dict[str, Any]], blind: bool = False) -> str:
    """The console table; ``blind``: validation ROC AUC only, no test figure (``--blind``).

    Any row trained on synthetic images puts a SYNTHETIC banner above and below the table
    (the project's contract: a synthetic result says so wherever it is shown).
    """
    table = _blind_table(rows) if blind else _test_table(rows)
    synthetic = [row["run"] for row in rows if "SYNTHETIC" in str(row.get("mode", ""))]
    if not synthetic:
        return table
    banner = (
        f"SYNTHETIC data ({len(synthetic)} of {len(rows)} rows: {', '.join(synthetic)}): "
        "these figures say nothing about chest X-rays"
    )
    return "\n".join([banner, table, banner])


def _blind_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(row["run"]) for row in rows)
    lines = [f"{'run'.ljust(width)}  {'status':<10} {'val AUC':>8} {'fit s':>7}"]
    lines += [
        f"{row['run'].ljust(width)}  {row['status'][:10]:<10} {_fmt(row.get('val_roc_auc'), 4):>8} "
        f"{_fmt(row.get('fit_seconds'), 0):>7}"
        for row in rows
    ]
    lines.append("test figures hidden (--blind): choose first, then read results.md")
    return "\n".join(lines)


def _test_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(row["run"]) for row in rows)
    lines = [
        f"{'run'.ljust(width)}  {'status':<10} {'accuracy':>8} {'sens':>6} {'spec':>6} {'AUC':>6} {'fit s':>7}  test split"
    ]
    for row in rows:
        lines.append(
            f"{row['run'].ljust(width)}  {row['status'][:10]:<10} {_fmt(row.get('accuracy')):>8} "
            f"{_fmt(row.get('sensitivity')):>6} {_fmt(row.get('specificity')):>6} {_fmt(row.get('roc_auc')):>6} "
            f"{_fmt(row.get('fit_seconds'), 0):>7}  {row.get('test_split', '')}"
        )
    return "\n".join(lines)
