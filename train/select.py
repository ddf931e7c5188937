"""Choose between finished runs on validation only: ``pneumo train select RUN... [--data DATA]``.

The rule of issue 6, as code, so that a choice can be re-run and audited:

* score every run on its own patient-wise validation split (its split.json; all runs must share
  it, or their scores are not comparable), never on the test split;
* criterion ``shape-pooled`` (the default): the ROC AUC of the validation images as they are and
  width- or height-only rescaled x0.85 / x1.15, pooled (train/shape_probe.py); a model that reads
  chest shape instead of the lungs loses there. ``val-auc``: the plain validation ROC AUC, the
  rule up to session 5;
* a run within ``tie`` (0.001) of the best score ties with it, and among ties the cheapest wins
  (fewest FLOPs, then fewest parameters): validation AUCs this close are inside each other's
  intervals, and the Jetson pays for every FLOP.

The validation images are read from the paths the runs' split.json recorded, or, with ``--data``,
from the same paths under DATA (a data set that moved since training). A ranking of runs trained on
SYNTHETIC phantoms carries the synthetic warning, in the table and in the JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_runtime.run_layout import SPLIT_FILE
from train.errors import ConfigError, DataError, TrainError

CRITERIA = ("shape-pooled", "val-auc")
DEFAULT_TIE = 0.001


@dataclass(frozen=True)
class SelectConfig:
    runs: tuple[Path, ...]
    data: Path | None = None  # where the runs' data set is now; None: the paths split.json recorded
    criterion: str = "shape-pooled"
    tie: float = DEFAULT_TIE
    cache_dir: Path | None = None
    progress: bool = True
    workers: int = 2

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"--criterion {self.criterion!r}: expected one of {', '.join(CRITERIA)}")
        if not (math.isfinite(self.tie) and 0.0 <= self.tie < 0.5):
            raise ConfigError(f"--tie {self.tie}: expected a number in [0, 0.5)")
        if len(set(self.runs)) < 2:
            raise ConfigError(f"select needs at least two distinct run folders, got {len(set(self.runs))}")


@dataclass(frozen=True)
class Candidate:
    """One run's validation scores and cost."""

    run: str
    model_version: str
    params: int
    flops: int
    val_auc: float
    shape_pooled_auc: float
    synthetic: bool = False  # trained (model_info) or scored on SYNTHETIC phantoms

    def score(self, criterion: str) -> float:
        return self.shape_pooled_auc if criterion == "shape-pooled" else self.val_auc


def choose(candidates: list[Candidate], criterion: str, tie: float = DEFAULT_TIE) -> dict[str, Any]:
    """The winner by ``criterion`` with the tie rule, and every candidate ranked (JSON-ready)."""
    if not candidates:
        raise TrainError("no candidates to choose between")
    best = max(c.score(criterion) for c in candidates)
    # 1e-12: "within 0.001" must not hinge on a float's last bit
    ties = [c for c in candidates if best - c.score(criterion) <= tie + 1e-12]
    winner = min(ties, key=lambda c: (c.flops, c.params, -c.score(criterion), c.run))
    ranked = sorted(candidates, key=lambda c: -c.score(criterion))
    synthetic = any(c.synthetic for c in candidates)
    from edge_runtime.contract import SYNTHETIC_WARNING

    return {
        **({"warning": SYNTHETIC_WARNING} if synthetic else {}),
        "synthetic": synthetic,
        "criterion": criterion,
        "tie": tie,
        "best_score": best,
        "winner": winner.run,
        "tied_with_best": [c.run for c in ties],
        "candidates": [
            {**asdict(c), "score": c.score(criterion), "tied": c in ties, "chosen": c is winner}
            for c in ranked
        ],
        "note": "chosen on validation only; the test split was not read",
    }


def require_shared_validation(runs: tuple[Path, ...]) -> None:
    """TrainError unless every run's split.json lists the same validation images."""
    from train.data import Splits
    from train.ensemble import split_key

    def val_of(run: Path) -> list[tuple[str, str]]:
        path = run / SPLIT_FILE
        if not path.is_file():
            raise TrainError(f"{path}: not found; select takes run folders written by 'pneumo train'")
        return sorted(split_key(Splits.load(path))["val"])

    first = val_of(runs[0])
    for run in runs[1:]:
        if val_of(run) != first:
            raise TrainError(
                f"{run}: its validation split differs from {runs[0]}'s; scores on different images are not "
                "comparable. Train candidates with the same --data, --val-fraction and --split-seed"
            )


def score_run(run: Path, config: SelectConfig) -> Candidate:
    from train.evaluate import RUN_VAL, evaluate_model

    report = evaluate_model(
        run, config.data, split=RUN_VAL, bootstrap=0, cache_dir=config.cache_dir,
        progress=config.progress, workers=config.workers, probe_shape=True,
    )  # fmt: skip
    from edge_runtime.contract import ModelInfo

    info = ModelInfo.load(run)
    return Candidate(
        run=str(run),
        model_version=report["model_version"],
        params=int(info.extra.get("params") or 0),
        flops=int(info.extra.get("flops") or 0),
        val_auc=float(report["metrics"]["roc_auc"]),
        shape_pooled_auc=float(report["shape_probe"]["pooled"]["roc_auc"]),
        synthetic=bool(info.synthetic or report["synthetic_data"]),
    )


def select_runs(config: SelectConfig) -> dict[str, Any]:
    runs = tuple(Path(r).expanduser() for r in config.runs)
    if config.data is not None and not config.data.is_dir():
        raise DataError(
            f"--data {config.data}: folder not found; pass the folder the runs' data set is in now, or leave "
            "--data out to read the validation images where the runs' split.json recorded them"
        )
    require_shared_validation(runs)
    return choose([score_run(run, config) for run in runs], config.criterion, config.tie)


def selection_table(result: dict[str, Any]) -> str:
    from edge_runtime.contract import SYNTHETIC_WARNING

    lines = [f"*** {SYNTHETIC_WARNING} ***"] if result.get("synthetic") else []
    lines.append(f"{'run':<44}{'params':>10}{'GFLOPs':>8}{'val AUC':>9}{'shape-pooled':>14}")
    for c in result["candidates"]:
        mark = "  <- chosen" if c["chosen"] else ("  (tie)" if c["tied"] else "")
        lines.append(
            f"{Path(c['run']).name:<44}{c['params']:>10,}{c['flops'] / 1e9:>8.3f}{c['val_auc']:>9.4f}"
            f"{c['shape_pooled_auc']:>14.4f}{mark}"
        )
    lines += [
        "",
        f"criterion {result['criterion']}, ties within {result['tie']:g} go to the fewest FLOPs: "
        f"{Path(result['winner']).name}",
        "Chosen on the runs' shared validation split only; the test split was not read.",
    ]
    return "\n".join(lines)
