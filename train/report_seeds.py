"""Refresh the generated tables of ``reports/seeds.md`` from sweep results.

``pneumo train report-seeds [--sweeps runs/sweeps] [--reports reports]`` (its flags live in
:mod:`train.cli`; ``python -m train.report_seeds`` runs the same command):

1. copies ``results.{csv,md,json,png}`` of every finished sweep folder under ``--sweeps``
   into ``REPORTS/sweeps/FOLDER/`` (small files, committed). A sweep still running (its
   ``.sweep.lock`` held), one with runs not finished (pending, interrupted, failed, stale), or one
   with fewer finished runs than the copy already there is skipped, and the log says why:
   its results would replace committed ones. ``--force`` copies it anyway;
2. rewrites every block of ``REPORTS/seeds.md`` written as::

       <!-- sweep-table: seed000_lhu_leak-reduced[,OTHER...] [runs=NAME,NAME] -->
       ...generated...
       <!-- end sweep-table -->

   with the rows of those sweeps (comma-separated folder names; only the named
   runs with ``runs=``), read from the copied ``results.json``. Everything
   outside the blocks (the prose) is kept.

Runs still pending get a row saying so and the sweep command that finishes them
(as the sweep recorded it).
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from edge_runtime.fileio import atomic_write_text, atomic_write_via, read_json
from train.errors import TrainError
from train.sweep import LOCK_FILE, lock_held
from train.sweep_results import RESULT_FILES, with_ci

log = logging.getLogger(__name__)

BLOCK = re.compile(r"(<!-- sweep-table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end sweep-table -->)", re.S)
# Row statuses a sweep never changes again: a run that finished, or one the experiment file skips.
FINAL_STATUSES = ("done", "not run")


def _results(path: Path) -> dict[str, Any]:
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError("expected an object with a 'rows' list")
    return results


def _done(rows: list[dict[str, Any]]) -> int:
    return sum(row.get("status") == "done" for row in rows)


def why_not_copied(folder: Path, target: Path) -> str:
    """Why the results of sweep ``folder`` must not replace those in ``target``, and what to do; '' when they may."""
    if lock_held(folder):
        return f"its sweep is still running (it holds {folder / LOCK_FILE}); wait for it to end"
    try:
        results = _results(folder / "results.json")
    except (OSError, ValueError) as exc:
        return f"{folder / 'results.json'} is unreadable ({exc}); rewrite it with the sweep's --results-only"
    rows = results["rows"]
    again = f"`{results['command']}`" if results.get("command") else "the sweep's command"
    unfinished = [
        f"{row.get('run')} ({row.get('status')})" for row in rows if row.get("status") not in FINAL_STATUSES
    ]
    if unfinished:
        return (
            f"{len(unfinished)} of {len(rows)} runs are not finished: {', '.join(unfinished)}; "
            f"finish them with {again}"
        )
    try:
        committed = (
            _done(_results(target / "results.json")["rows"]) if (target / "results.json").is_file() else 0
        )
    except (OSError, ValueError):
        committed = 0  # an unreadable copy holds no results worth keeping
    if _done(rows) < committed:
        return f"it has {_done(rows)} finished runs, fewer than the {committed} of the copy in {target}"
    return ""


def collect(sweeps: Path, reports: Path, force: bool = False) -> list[str]:
    """Copy each finished sweep folder's result files into ``reports/sweeps/NAME/``; the folder names copied.

    A sweep that is running, unfinished or has fewer finished runs than its copy is skipped (its
    results would replace committed ones), unless ``force``; the log says why, and what was copied.
    """
    copied = []
    for folder in sorted(p for p in sweeps.iterdir() if (p / "results.json").is_file()):
        target = reports / "sweeps" / folder.name
        why = why_not_copied(folder, target)
        if why and not force:
            log.warning(
                "%s: not copied, %s is kept: %s, or pass --force to copy it anyway", folder, target, why
            )
            continue
        if why:
            log.warning("%s: copied anyway (--force): %s", folder, why)
        target.mkdir(parents=True, exist_ok=True)
        names = [name for name in RESULT_FILES if (folder / name).is_file()]
        for name in names:
            atomic_write_via(target / name, partial(shutil.copyfile, folder / name))
        log.info("%s: copied %s -> %s", folder, ", ".join(names), target)
        copied.append(folder.name)
    return copied


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def sweep_table(folder_names: list[str], reports: Path, runs: set[str] | None = None) -> str:
    """The rows of those sweeps (only ``runs`` when given), with CIs, the study's claim, or why not run."""
    header = (
        "| run | mode | settings | test split (images) | accuracy | sensitivity | specificity | ROC AUC "
        "| accuracy at 0.5 | params | study's claim |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in folder_names:
        path = reports / "sweeps" / name / "results.json"
        if not path.is_file():
            lines.append(f"| *{name}: no results yet* |" + " |" * (header.count("|") - 2))
            continue
        results = read_json(path)
        experiment = Path(results["experiments"]).name
        resume = results.get("command") or (
            f"pneumo train sweep experiments/{experiment} --data DATA --out runs/sweeps/{name}"
        )
        for row in results["rows"]:
            if runs is not None and row["run"] not in runs:
                continue
            if row["status"] == "done":
                test = f"{row.get('test_split', '')} ({row.get('test_images', '')})"
                accuracy = with_ci(row, "accuracy")
                if row.get("class_accuracy") is not None:
                    accuracy += f"; {row.get('n_classes', 3)}-class {row['class_accuracy']:.3f}"
                ran = f"; ran {row['epochs_run']} ep" if row.get("epochs_run") else ""
                cells = [
                    row["run"],
                    row["mode"],
                    row["settings"] + ran,
                    test,
                    accuracy,
                    with_ci(row, "sensitivity"),
                    with_ci(row, "specificity"),
                    with_ci(row, "roc_auc"),
                    "" if row.get("accuracy_at_0.5") is None else f"{row['accuracy_at_0.5']:.3f}",
                    f"{row['params']:,}" if row.get("params") else "",
                    row["claim"],
                ]
            else:
                if row["status"] == "not run":
                    why = f"not run: {row['detail']}"
                else:
                    why = f"PENDING ({row['status']}): finish with `{resume}`"
                cells = [row["run"], row["mode"], row["settings"], why, "", "", "", "", "", "", row["claim"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def refresh(markdown: str, reports: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        names: list[str] = []
        runs: set[str] | None = None
        for token in match.group("spec").split():
            if token.startswith("runs="):
                runs = {n for n in token[5:].split(",") if n}
            else:
                names += [n for n in token.split(",") if n]
        return match.group(1) + sweep_table(names, reports, runs) + match.group(4)

    return BLOCK.sub(replace, markdown)


@dataclass(frozen=True)
class ReportSeedsConfig:
    """Where the sweep folders are, and the reports folder whose ``seeds.md`` is refreshed."""

    sweeps: Path = Path("runs/sweeps")
    reports: Path = Path("reports")
    force: bool = False  # copy running, unfinished or shrunken sweeps too


def report_seeds(config: ReportSeedsConfig) -> Path:
    """Copy the sweeps' results (when ``config.sweeps`` is a folder) and rewrite the tables; ``seeds.md``."""
    if config.sweeps.is_dir():
        copied = collect(config.sweeps, config.reports, config.force)
        log.info("copied results of %d sweeps: %s", len(copied), ", ".join(copied))
    seeds = config.reports / "seeds.md"
    if not seeds.is_file():
        raise TrainError(f"{seeds}: not found; pass --reports DIR, the folder that holds seeds.md")
    atomic_write_text(seeds, refresh(seeds.read_text(encoding="utf-8"), config.reports))
    log.info("refreshed the sweep tables of %s", seeds)
    return seeds


def main(argv: list[str] | None = None) -> int:
    """``python -m train.report_seeds``: the command ``pneumo train report-seeds``, under its old name."""
    from train.cli import report_seeds_main  # the command line stays in train.cli, as for every command

    return report_seeds_main(sys.argv[1:] if argv is None else argv, "python -m train.report_seeds")


if __name__ == "__main__":
    raise SystemExit(main())
