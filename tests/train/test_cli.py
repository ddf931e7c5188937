"""``pneumo train`` / ``pneumo evaluate`` command lines: exit codes and messages that name the flag or file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_image
from tests.without_modules import TRAINING_STACK, run_pneumo_without
from train.cli import evaluate_main, train_main
from train.models import ARCHITECTURES


def _tiny_folder(root: Path, classes: dict[str, tuple[str, ...]]) -> Path:
    """ROOT/{split}/{CLASS}/ with one small image per folder."""
    import numpy as np

    for split, labels in classes.items():
        for label in labels:
            write_image(
                root / split / label / f"{label.lower()}-IM-000{len(label)}-0001.png",
                np.full((40, 40), 90, np.uint8),
            )
    return root


def test_train_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--help"], prog="pneumo train") == 0
    text = capsys.readouterr().out
    assert "pneumo train --arch lhu --data" in text and "--threshold-rule" in text
    assert all(name in text for name in ARCHITECTURES)
    assert "pneumo train sweep EXPERIMENTS.toml" in text
    assert "pneumo train sweep experiments/seed004_sutd.toml --data" in text
    for flag in ("--activation {relu,sigmoid}", "--last-conv-filters N", "--pool-dropout RATE"):
        assert flag in text


def test_model_option_flags_reach_the_config() -> None:
    from train.cli import train_parser

    args = vars(
        train_parser("pneumo train").parse_args(
            ["--arch", "roskilde", "--last-conv-filters", "256", "--pool-dropout", "0.25"]
        )
    )
    assert args == {"arch": "roskilde", "last_conv_filters": 256, "pool_dropout": 0.25}
    args = vars(train_parser("pneumo train").parse_args(["--activation", "relu"]))
    assert args == {"activation": "relu"}


def test_model_option_for_the_wrong_arch_fails_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--arch", "lhu", "--data", str(tmp_path / "absent"), "--out", str(out)]
    assert train_main([*argv, "--last-conv-filters", "256"]) == 2, "a flag --arch does not take is usage"
    err = capsys.readouterr().err
    assert "--last-conv-filters does not apply to --arch lhu; it is an option of roskilde" in err
    assert "data folder not found" not in err and not out.exists()


def test_unknown_arch_is_an_error_listing_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_main(["--arch", "alexnet", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--arch 'alexnet'" in err and "lhu" in err and "dsconv" in err
    assert not (tmp_path / "run").exists()


def test_missing_data_folder_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_data"
    code = train_main(["--arch", "lhu", "--data", str(missing), "--out", str(tmp_path / "run")])
    assert code == 1
    assert f"{missing}: data folder not found" in capsys.readouterr().err


def test_missing_class_folder_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny_folder(tmp_path / "data", {"train": ("NORMAL", "PNEUMONIA"), "test": ("NORMAL",)})
    code = train_main(["--arch", "lhu", "--data", str(data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert str(data / "test" / "PNEUMONIA") in err and "class folder missing" in err


def test_empty_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "xrays").mkdir()
    code = train_main(["--arch", "lhu", "--data", str(tmp_path / "xrays"), "--out", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "xrays") in err and "the folder is empty" in err


def test_existing_run_folder_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.h5").write_bytes(b"keep me")
    code = train_main(["--arch", "lhu", "--data", str(tmp_path), "--out", str(out)])
    assert code == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.h5").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("argv", "how", "text"),
    [
        (["--epochs", "0"], "returned", "--epochs 0: must be within"),
        (["--epochs", "-1"], "returned", "--epochs -1: must be within 1..10000"),
        (["--threshold-rule", "youden:3"], "returned", "--threshold-rule"),
        (["--learning-rate", "-1"], "returned", "--learning-rate"),
        (["--workers", "0"], "returned", "--workers 0: must be within 1..64"),
        (["--epochs", "ten"], "argparse", "invalid int value"),
        (["--optimizer", "lion"], "argparse", "invalid choice"),
        (["--no-such-flag"], "argparse", "unrecognized arguments"),
    ],
)
def test_bad_flag_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], how: str, text: str
) -> None:
    """Exit 2 whether argparse or the config's bounds catch the value, and no run folder is made."""
    full = ["--arch", "lhu", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *argv]
    assert train_main(full) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_value_in_the_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[train]\narch = "lhu"\nepochs = "ten"\n')
    argv = ["--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    assert "epochs must be an integer, got 'ten'" in capsys.readouterr().err


def test_a_missing_config_file_is_a_failure_not_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(tmp_path / "absent.toml"), "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    assert train_main(argv) == 1
    assert "absent.toml: file not found" in capsys.readouterr().err


def test_train_help_teaches_the_random_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--help"], prog="pneumo train") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--random-pool {train,all}" in text
    assert "'train' (default), the official train folder alone, as seed 000 did" in text
    assert "'all': the train, val and test folders together" in text
    assert "--split random --random-pool all" in text
    assert "--split patient only (random mode's shares are fixed at 70/20/10)" in text


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (
            ["--split", "random", "--val-fraction", "0.2"],
            "--val-fraction 0.2 has no effect with --split random",
        ),
        # given on the command line, even at its default value, it asks for something random mode does not do
        (
            ["--split", "random", "--val-fraction", "0.1"],
            "--val-fraction 0.1 has no effect with --split random",
        ),
        (["--random-pool", "all"], "--random-pool all has no effect with --split patient"),
        (
            ["--split", "patient", "--random-pool", "train"],
            "--random-pool train has no effect with --split patient",
        ),
    ],
)
def test_split_options_the_split_mode_ignores_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    full = ["--arch", "lhu", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"), *argv]
    assert train_main(full) == 2
    err = capsys.readouterr().err
    assert text in err and "data folder not found" not in err
    assert not (tmp_path / "run").exists()


def test_a_config_file_may_hold_the_defaults_of_options_its_split_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep's configs/NAME.toml write every setting out: val_fraction = 0.1 with a random split is fine."""
    from train.config import load_toml, merge

    config = tmp_path / "run.toml"
    config.write_text('[train]\nsplit_mode = "random"\nval_fraction = 0.1\nrandom_pool = "all"\n')
    assert merge(load_toml(config), {}, str(config)).random_pool == "all"
    config.write_text('[train]\nsplit_mode = "random"\nval_fraction = 0.3\n')
    argv = ["--config", str(config), "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    assert f"{config}: --val-fraction 0.3 has no effect with --split random" in capsys.readouterr().err


def test_pneumo_train_splits_the_pool_it_is_given(tmp_path: Path) -> None:
    from tests.train.test_data import make_folder
    from train.config import merge
    from train.fit import _make_splits

    data = make_folder(tmp_path / "data")
    config = merge({}, {"data": data, "out": tmp_path / "run", "split_mode": "random", "random_pool": "all"})
    splits = _make_splits(config)
    assert {s.split for s in splits.train + splits.val + splits.test} == {"train", "val", "test"}


def test_data_and_out_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--arch", "lhu"]) == 2
    assert "--data and --out are required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "text"),
    [(["--workers", "0"], "--workers 0: must be 1 or more"), (["--bootstrap", "-1"], "--bootstrap -1")],
)
def test_evaluate_out_of_range_flags_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], text: str
) -> None:
    assert evaluate_main([str(tmp_path), "--data", str(tmp_path), *flags]) == 2
    assert text in capsys.readouterr().err


def test_evaluate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_main([str(tmp_path / "nope.h5"), "--data", str(tmp_path)]) == 1
    assert "model not found" in capsys.readouterr().err
    (tmp_path / "model.txt").write_text("x")
    assert evaluate_main([str(tmp_path / "model.txt"), "--data", str(tmp_path)]) == 1
    assert "unsupported model file" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path)]) == 2, "--data is required"


def test_pneumo_train_help_through_the_console_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage: pneumo train" in result.stdout


# --------------------------------------------------------------------------- lean install (no TensorFlow)

INSTALL_TRAIN = "pip install -e '.[train]'"


def test_train_without_keras_fails_at_once_with_the_install_command(tmp_path: Path) -> None:
    data = _tiny_folder(
        tmp_path / "data", {"train": ("NORMAL", "PNEUMONIA"), "test": ("NORMAL", "PNEUMONIA")}
    )
    out = tmp_path / "run"
    done = run_pneumo_without(
        TRAINING_STACK, ["train", "--arch", "lhu", "--data", str(data), "--out", str(out)]
    )
    assert done.returncode == 1, done.stderr
    assert "pneumo train: error: training needs keras, tensorflow, which are not installed" in done.stderr
    assert INSTALL_TRAIN in done.stderr and "Traceback" not in done.stderr
    assert not out.exists(), "no run folder is created before the check"


def test_train_help_works_without_keras() -> None:
    done = run_pneumo_without(TRAINING_STACK, ["train", "--help"])
    assert done.returncode == 0 and "usage: pneumo train" in done.stdout


def test_evaluate_keras_model_without_keras_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"not read before the check")
    done = run_pneumo_without(
        TRAINING_STACK, ["evaluate", str(tmp_path / "model.h5"), "--data", str(tmp_path)]
    )
    assert done.returncode == 1, done.stderr
    assert "evaluating the Keras model" in done.stderr and INSTALL_TRAIN in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.tf
def test_a_failed_data_check_leaves_no_empty_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train_run creates --out before it reads --data; the CLI removes what it created when that fails."""
    out = tmp_path / "runs" / "new" / "run"
    argv = ["--arch", "lhu", "--data", str(tmp_path / "no_such_data"), "--out", str(out)]
    assert train_main(argv) == 1
    assert "data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # A folder that was there before stays, empty or not.
    (tmp_path / "mine").mkdir()
    assert train_main([*argv[:4], "--out", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine").is_dir()


# --------------------------------------------------------------------------- train report-seeds

SEEDS_MD = "intro\n<!-- sweep-table: tiny,absent -->\nstale\n<!-- end sweep-table -->\nprose kept\n"


def _reports_and_sweeps(root: Path) -> tuple[Path, Path]:
    """A reports folder whose seeds.md names sweep 'tiny', and a sweeps folder holding its results."""
    import json

    sweep = root / "sweeps" / "tiny"
    sweep.mkdir(parents=True)
    row = {"run": "a", "mode": "full", "settings": "adam", "status": "not run", "detail": "no GPU"}
    results = {"experiments": "experiments/tiny.toml", "rows": [{**row, "claim": "c"}]}
    (sweep / "results.json").write_text(json.dumps(results))
    (sweep / "results.md").write_text("| a |\n")
    reports = root / "reports"
    reports.mkdir()
    (reports / "seeds.md").write_text(SEEDS_MD)
    return root / "sweeps", reports


def test_report_seeds_help_through_pneumo_train() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "report-seeds", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: pneumo train report-seeds" in result.stdout and "--sweeps DIR" in result.stdout


def test_report_seeds_is_listed_in_pneumo_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--help"], prog="pneumo train") == 0
    assert "pneumo train report-seeds" in capsys.readouterr().out


def test_report_seeds_usage_and_failure_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(["report-seeds", "--no-such-flag"]) == 2
    assert "report-seeds: error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert train_main(["report-seeds", "--reports"]) == 2, "a flag without its value"
    capsys.readouterr()
    absent = tmp_path / "absent"
    assert train_main(["report-seeds", "--sweeps", str(absent), "--reports", str(absent)]) == 1
    err = capsys.readouterr().err
    assert f"pneumo train report-seeds: error: {absent / 'seeds.md'}: not found" in err
    assert "Traceback" not in err


def test_report_seeds_copies_results_and_rewrites_the_tables_only(tmp_path: Path) -> None:
    sweeps, reports = _reports_and_sweeps(tmp_path)
    assert train_main(["report-seeds", "--sweeps", str(sweeps), "--reports", str(reports)]) == 0
    assert (reports / "sweeps" / "tiny" / "results.md").read_text() == "| a |\n"
    seeds = (reports / "seeds.md").read_text()
    assert seeds.startswith("intro\n<!-- sweep-table: tiny,absent -->\n| run | mode |")
    assert seeds.endswith("<!-- end sweep-table -->\nprose kept\n") and "stale" not in seeds
    assert "| a | full | adam | not run: no GPU |" in seeds and "*absent: no results yet*" in seeds


def test_python_m_train_report_seeds_runs_the_same_command(tmp_path: Path) -> None:
    """The old entry point still works, and writes what 'pneumo train report-seeds' writes."""
    old_sweeps, old_reports = _reports_and_sweeps(tmp_path / "old")
    new_sweeps, new_reports = _reports_and_sweeps(tmp_path / "new")
    module = [sys.executable, "-m", "train.report_seeds"]
    argv = ["--sweeps", str(old_sweeps), "--reports", str(old_reports)]
    old = subprocess.run([*module, *argv], capture_output=True, text=True)
    assert old.returncode == 0, old.stderr
    assert "copied results of 1 sweeps: tiny" in old.stderr and "refreshed the sweep tables" in old.stderr
    assert train_main(["report-seeds", "--sweeps", str(new_sweeps), "--reports", str(new_reports)]) == 0
    for name in ("seeds.md", "sweeps/tiny/results.json", "sweeps/tiny/results.md"):
        assert (old_reports / name).read_bytes() == (new_reports / name).read_bytes(), name
    bad = subprocess.run([*module, "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: python -m train.report_seeds" in bad.stderr


def _results_json(folder: Path, statuses: dict[str, str], command: str = "") -> Path:
    """``folder/results.json`` (and results.md) with one row per run in the given status."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"run": run, "mode": "full", "settings": "adam", "status": status, "detail": "", "claim": "",
         **({"accuracy": 0.875, "params": 10} if status == "done" else {})}
        for run, status in statuses.items()
    ]  # fmt: skip
    results = {"experiments": "experiments/tiny.toml", "command": command, "rows": rows}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "results.md").write_text(f"| {' | '.join(statuses.values())} |\n")
    return folder / "results.json"


def _committed(root: Path, statuses: dict[str, str]) -> tuple[Path, Path, bytes]:
    """A reports folder whose seeds.md shows sweep 'tiny' from a committed copy; the sweeps folder; the copy."""
    reports = root / "reports"
    committed = _results_json(reports / "sweeps" / "tiny", statuses)
    (reports / "seeds.md").write_text(SEEDS_MD)
    return root / "sweeps", reports, committed.read_bytes()


def _report_seeds(sweeps: Path, reports: Path, *extra: str) -> None:
    assert train_main(["report-seeds", "--sweeps", str(sweeps), "--reports", str(reports), *extra]) == 0


def test_report_seeds_keeps_the_committed_results_of_an_unfinished_sweep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="train.report_seeds")
    sweeps, reports, committed = _committed(tmp_path, {"a": "done", "b": "done"})
    command = "pneumo train sweep experiments/tiny.toml --out runs/sweeps/tiny"
    _results_json(sweeps / "tiny", {"a": "done", "b": "pending", "c": "failed"}, command)
    _report_seeds(sweeps, reports)
    copy = reports / "sweeps" / "tiny"
    assert (copy / "results.json").read_bytes() == committed and (
        copy / "results.md"
    ).read_text() == "| done | done |\n"
    assert (
        f"{sweeps / 'tiny'}: not copied, {copy} is kept: 2 of 3 runs are not finished: b (pending), c (failed)"
        in caplog.text
    )
    assert f"finish them with `{command}`, or pass --force to copy it anyway" in caplog.text
    assert (
        "| a | full | adam |" in (reports / "seeds.md").read_text()
        and "PENDING" not in (reports / "seeds.md").read_text()
    )
    assert "copied results of 0 sweeps" in caplog.text

    caplog.clear()
    _report_seeds(sweeps, reports, "--force")
    assert (copy / "results.md").read_text() == "| done | pending | failed |\n"
    assert f"{sweeps / 'tiny'}: copied anyway (--force): 2 of 3 runs are not finished" in caplog.text
    assert f"{sweeps / 'tiny'}: copied results.md, results.json -> {copy}" in caplog.text
    assert "PENDING (pending): finish with" in (reports / "seeds.md").read_text()


def test_report_seeds_keeps_a_copy_with_more_finished_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every row final (done or skipped) but fewer done than the copy: another or an edited sweep."""
    import logging

    caplog.set_level(logging.INFO, logger="train.report_seeds")
    sweeps, reports, committed = _committed(tmp_path, {"a": "done", "b": "done"})
    _results_json(sweeps / "tiny", {"a": "done", "b": "not run"})
    _report_seeds(sweeps, reports)
    assert (reports / "sweeps" / "tiny" / "results.json").read_bytes() == committed
    assert "it has 1 finished runs, fewer than the 2 of the copy in" in caplog.text
    _results_json(sweeps / "tiny", {"a": "done", "b": "done", "c": "not run"})
    _report_seeds(sweeps, reports)
    assert (reports / "sweeps" / "tiny" / "results.md").read_text() == "| done | done | not run |\n"


def test_report_seeds_skips_a_sweep_that_is_still_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its .sweep.lock is flocked by another process: skipped; a killed sweep's leftover lock file is not."""
    import logging

    from train.sweep import LOCK_FILE

    caplog.set_level(logging.INFO, logger="train.report_seeds")
    sweeps, reports, committed = _committed(tmp_path, {"a": "done"})
    folder = sweeps / "tiny"
    _results_json(folder, {"a": "done", "b": "done"})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from train.sweep import sweep_lock\n"
         "with sweep_lock(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()", str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        _report_seeds(sweeps, reports)
        assert (reports / "sweeps" / "tiny" / "results.json").read_bytes() == committed
        assert (
            f"its sweep is still running (it holds {folder / LOCK_FILE}); wait for it to end" in caplog.text
        )
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    # a SIGKILLed sweep leaves its lock file, unlocked: that sweep is over
    (folder / LOCK_FILE).write_text("999999999")
    caplog.clear()
    _report_seeds(sweeps, reports)
    assert (reports / "sweeps" / "tiny" / "results.md").read_text() == "| done | done |\n"
    assert "still running" not in caplog.text and (folder / LOCK_FILE).read_text() == "999999999"
