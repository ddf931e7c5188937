"""``pneumo train sweep``: experiment files validate; a tiny sweep survives a kill and resumes without retraining."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from train.cli import sweep_main as main
from train.config import OPTIMIZERS, TrainConfig, load_toml, merge
from train.sweep import (
    REDUCTION,
    RunOutcome,
    SweepConfig,
    SweepError,
    config_toml,
    load_experiment,
    plan_sweep,
)
from train.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))


# --------------------------------------------------------------------------- committed experiment files


def test_experiment_files_exist() -> None:
    names = {path.stem for path in EXPERIMENTS}
    assert {
        "seed000_lhu_optimizers",
        "seed000_lhu_leak",
        "seed001_go19_augmentation",
        "seed002_roskilde_adjustments",
        "seed003_vgg16_three_class",
        "seed004_sutd",
        "best_model",
    } <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
def test_every_run_of_every_experiment_file_validates(path: Path, reduced: bool, tmp_path: Path) -> None:
    experiment = load_experiment(path)
    plan = plan_sweep(
        experiment, SweepConfig(experiments=path, out=tmp_path / "sweep", data=tmp_path, reduced=reduced)
    )
    assert len(plan) == len(experiment.runs) >= 1
    for run in plan:
        assert run.config.out == (tmp_path / "sweep" / "runs" / run.spec.name).resolve()
        assert run.config.optimizer in OPTIMIZERS and run.config.epochs and run.config.height
        # what the sweep hands to `pneumo train --config` reads back as the same config
        written = tmp_path / f"{run.spec.name}.toml"
        written.write_text(config_toml(run.config, "test"))
        assert merge(load_toml(written), {}).resolved() == run.config
        if reduced:
            assert run.config.max_per_class is not None and run.reductions
        else:
            assert not run.reductions
    assert not (tmp_path / "sweep").exists(), "planning must not write anything"


def test_studies_are_covered_as_the_issue_asks() -> None:
    by_name = {path.stem: load_experiment(path) for path in EXPERIMENTS}
    plan = {
        name: plan_sweep(exp, SweepConfig(experiments=exp.path, data=Path("/data"), dry_run=True))
        for name, exp in by_name.items()
    }
    optimizers = {run.config.optimizer for run in plan["seed000_lhu_optimizers"]}
    assert optimizers == set(OPTIMIZERS)
    assert {run.config.arch for run in plan["seed000_lhu_optimizers"]} == {"lhu"}
    assert {run.config.split_mode for run in plan["seed000_lhu_leak"]} == {"random", "patient"}
    # seed 000 split its train folder alone (image_dataset_from_directory('data/chest_xray/train'))
    assert {
        run.config.random_pool for run in plan["seed000_lhu_leak"] if run.config.split_mode == "random"
    } == {"train"}
    assert {run.config.augment for run in plan["seed001_go19_augmentation"]} == {"seed001", "none"}
    roskilde = plan["seed002_roskilde_adjustments"]
    assert len(roskilde) == 8 and all(run.config.undersample for run in roskilde)
    assert {run.config.height for run in roskilde} == {64, 128}
    assert {run.config.optimizer for run in roskilde} == {"rmsprop", "adam"}
    # the study's rows 4-7 raise the last convolution to 256 filters; row 7 adds Dropout 0.25 after every pool
    assert {run.spec.name: run.config.last_conv_filters for run in roskilde} == {
        "r0-original": None, "r1-20-epochs": None, "r2-64px": None, "r3-adam": None,
        "r4-no-dropout": 256, "r5-dropout-back": 256, "r6-128px": 256, "r7-pool-dropout": 256,
    }  # fmt: skip
    assert [run.spec.name for run in roskilde if run.config.pool_dropout] == ["r7-pool-dropout"]
    sutd = {run.spec.name: run.config.activation for run in plan["seed004_sutd"] if run.config.activation}
    assert sutd == {"cnn1-r1-relu": "relu", "cnn2-r1-relu": "relu", "cnn3-r5-sigmoid": "sigmoid"}
    assert not [run.spec.name for run in roskilde + plan["seed004_sutd"] if run.spec.skip]
    vgg = plan["seed003_vgg16_three_class"]
    assert [(run.config.arch, run.config.label_mode) for run in vgg] == [("vgg16_transfer", "kind")]
    assert {run.config.arch for run in plan["seed004_sutd"]} == {
        "sutd_cnn1",
        "sutd_cnn2",
        "sutd_cnn3",
        "resnet50",
    }
    assert {run.config.arch for run in plan["best_model"]} == {"dsconv", "lite0"}
    # every row that cannot run says why, and no reduced run shrinks the official test split:
    # the largest test class (PNEUMONIA, 390 images) must fit under the per-class cap
    for experiment in by_name.values():
        reduced = plan_sweep(
            experiment, SweepConfig(experiments=experiment.path, data=Path("/d"), reduced=True, dry_run=True)
        )
        for run in reduced:
            assert run.config.max_per_class is None or run.config.max_per_class >= 390
    assert REDUCTION["max_per_class"] >= 390


# --------------------------------------------------------------------------- file and flag errors


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_experiment_files_name_the_run_and_key(tmp_path: Path) -> None:
    bad_key = _write(tmp_path / "a.toml", '[[run]]\nname = "one"\narch = "lhu"\nlearning_rat = 0.1\n')
    with pytest.raises(SweepError, match=r"run 'one'.*learning_rat"):
        plan_sweep(load_experiment(bad_key), SweepConfig(experiments=bad_key, data=tmp_path))
    bad_value = _write(tmp_path / "b.toml", '[[run]]\nname = "two"\noptimizer = "lion"\n')
    with pytest.raises(SweepError, match=r"run 'two'.*--optimizer 'lion'"):
        plan_sweep(load_experiment(bad_value), SweepConfig(experiments=bad_value, data=tmp_path))
    wrong_arch = _write(tmp_path / "e.toml", '[[run]]\nname = "three"\narch = "lhu"\nactivation = "relu"\n')
    with pytest.raises(SweepError, match=r"run 'three'.*--activation does not apply to --arch lhu"):
        plan_sweep(load_experiment(wrong_arch), SweepConfig(experiments=wrong_arch, data=tmp_path))
    no_teacher = _write(
        tmp_path / "d.toml", '[[run]]\nname = "four"\narch = "dsconv"\ndistill_weight = 0.3\n'
    )
    with pytest.raises(SweepError, match=r"run 'four'.*--distill-weight 0.3 has no effect without --teacher"):
        plan_sweep(load_experiment(no_teacher), SweepConfig(experiments=no_teacher, data=tmp_path))
    ignored = _write(tmp_path / "f.toml", '[[run]]\nname = "five"\nsplit = "random"\nval_fraction = 0.2\n')
    with pytest.raises(SweepError, match=r"run 'five'.*--val-fraction 0.2 has no effect with --split random"):
        plan_sweep(load_experiment(ignored), SweepConfig(experiments=ignored, data=tmp_path))
    twice = _write(tmp_path / "c.toml", '[[run]]\nname = "x"\n[[run]]\nname = "x"\n')
    with pytest.raises(SweepError, match="used twice"):
        load_experiment(twice)
    owned = _write(tmp_path / "d.toml", '[[run]]\nname = "x"\nout = "elsewhere"\n')
    with pytest.raises(SweepError, match="set by the sweep"):
        load_experiment(owned)
    with pytest.raises(SweepError, match="not found"):
        load_experiment(tmp_path / "missing.toml")


def test_cli_dry_run_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "experiments" / "seed000_lhu_leak.toml"
    out = tmp_path / "sweep"
    assert main([str(path), "--dry-run", "--reduced", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random-split" in text and "patient-split" in text and "max_per_class none -> 400" in text
    assert not out.exists()
    assert main([str(path), "--dry-run", "--only", "nope"]) == 2
    assert "--only nope" in capsys.readouterr().err
    assert main([str(path), "--out", str(out), "--data", str(tmp_path / "absent")]) == 1
    assert "folder not found" in capsys.readouterr().err
    assert main([str(path), "--dry-run", "--set", "epochs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # An out-of-range value is usage too, whichever run it reaches; the sweep folder is not created.
    assert main([str(path), "--out", str(out), "--data", str(tmp_path), "--set", "epochs=-1"]) == 2
    assert "--epochs -1: must be within 1..10000" in capsys.readouterr().err
    assert main([str(path), "--dry-run", "--set", "no_such_setting=1"]) == 2
    assert "unknown setting 'no_such_setting'" in capsys.readouterr().err
    assert not out.exists()


def test_pneumo_train_dispatches_sweep(tmp_path: Path) -> None:
    path = REPO / "experiments" / "seed001_go19_augmentation.toml"
    result = subprocess.run(
        [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "sweep", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert "augmented" in names and "not-augmented" in names


# --------------------------------------------------------------------------- a real tiny sweep


TINY = """
[sweep]
name = "tiny"
study = "test"

[defaults]
arch = "lhu"
data = "{data}"
image_size = 32
epochs = 1
batch_size = 8
bootstrap = 50
tensorboard = false
cache_dir = "{cache}"

[[run]]
name = "first"
optimizer = "adagrad"
claim = "a claim"

[[run]]
name = "second"
optimizer = "adam"

[[run]]
name = "broken"
data = "{empty}"
note = "an empty data folder: fails at run time, the sweep goes on"
"""


def _sweep_command(experiment: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge_runtime.pneumo_cli",
        "train",
        "sweep",
        str(experiment),
        "--out",
        str(out),
    ]


@pytest.mark.tf
@pytest.mark.slow
def test_tiny_sweep_killed_then_resumed_skips_finished_runs(tmp_path: Path) -> None:
    data = tmp_path / "synth"
    generate(data, SynthConfig(per_class=16, size=64, seed=3))
    (tmp_path / "empty").mkdir()
    experiment = _write(
        tmp_path / "tiny.toml",
        TINY.format(data=data, cache=tmp_path / "cache", empty=tmp_path / "empty"),
    )
    out = tmp_path / "sweep"

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = out / "runs" / "first"
    second = out / "runs" / "second"

    def building(name: str) -> list[Path]:
        """The hidden folders pneumo train builds run ``name`` in (renamed to runs/NAME when complete)."""
        return sorted((out / "runs").glob(f".{name}.building-*"))

    def start_and_wait_for(started: Callable[[], bool]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            _sweep_command(experiment, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + 240
        while not started() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started(), "the run never started"
        return process

    # 1. SIGTERM (``kill PID``) while the second run trains: the sweep stops its child and exits 130
    process = start_and_wait_for(lambda: bool(building("second")))
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "the training child outlived the sweep"
    assert (first / "metrics.json").is_file() and not second.exists()
    first_mtime = (first / "metrics.json").stat().st_mtime_ns
    state = json.loads((out / "state.json").read_text())
    assert state["first"]["attempts"] == 1 and state["second"]["status"] == "interrupted"
    assert "| second |" in (out / "results.md").read_text()
    assert not (out / ".sweep.lock").exists()

    # 2. SIGKILL of the sweep's process group during the restarted second run: no cleanup at all. The
    # child runs in a session of its own, so it is not in that group: it must die with the sweep.
    process = start_and_wait_for(
        lambda: (out / "runs" / "second.incomplete-1").is_dir() and bool(building("second"))
    )
    children = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "the training child outlived the killed sweep"
    assert (out / ".sweep.lock").exists(), "a killed sweep leaves its lock behind"
    assert json.loads((out / "state.json").read_text())["second"]["status"] == "running"

    # 2. the same command again: first is skipped, second restarts in a fresh folder, broken fails
    result = subprocess.run(
        _sweep_command(experiment, out), capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert result.returncode == 1, result.stderr  # one run failed; the stale lock did not block
    assert "broken" in result.stderr
    assert (first / "metrics.json").stat().st_mtime_ns == first_mtime, "the finished run was retrained"
    assert not (out / "runs" / "first.incomplete-1").exists()
    assert (out / "runs" / "second.incomplete-1").is_dir(), "interrupted attempts must be kept, moved aside"
    assert (out / "runs" / "second.incomplete-2").is_dir() and not building("second")
    assert (second / "metrics.json").is_file() and (second / "model.h5").is_file()
    state = json.loads((out / "state.json").read_text())
    assert state["first"]["attempts"] == 1
    assert state["second"]["attempts"] == 3 and state["second"]["status"] == "done"
    assert state["broken"]["status"] == "failed"

    # 3. one row per run in results.csv / .md, and a PNG plot
    with open(out / "results.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["first", "second", "broken"]
    for name in ("first", "second"):
        row = rows[name]
        saved = json.loads((out / "runs" / name / "metrics.json").read_text())
        metrics = saved["test"]
        assert float(row["val_roc_auc"]) == pytest.approx(saved["validation"]["roc_auc"])  # what to choose by
        assert row["status"] == "done" and row["mode"] == "full SYNTHETIC"
        assert float(row["accuracy"]) == pytest.approx(metrics["accuracy"])
        assert float(row["roc_auc_low"]) <= float(row["roc_auc"]) <= float(row["roc_auc_high"])
        assert int(row["params"]) > 0 and int(row["flops"]) > 0 and float(row["fit_seconds"]) > 0
        assert row["test_split"] == "official test"
    assert rows["broken"]["status"] == "failed" and "the folder is empty" in rows["broken"]["detail"]
    markdown = (out / "results.md").read_text()
    assert "SYNTHETIC" in markdown and "| first |" in markdown and "| broken |" in markdown
    assert "a claim" in markdown and "| validation ROC AUC |" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "configs" / "second.toml").is_file() and (out / "logs" / "second.attempt-3.log").is_file()

    # 4. an edited setting is noticed: the finished run would be redone (its folder moved aside)
    _write(experiment, experiment.read_text().replace('optimizer = "adagrad"', 'optimizer = "sgd"'))
    dry = subprocess.run(
        [*_sweep_command(experiment, out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    first_state = lines[lines.index(next(line for line in lines if line.startswith("first"))) + 1]
    second_state = lines[lines.index(next(line for line in lines if line.startswith("second"))) + 1]
    assert "settings changed" in first_state and second_state.strip() == "-> complete"
    refreshed = subprocess.run(
        [*_sweep_command(experiment, out), "--results-only"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refreshed.returncode == 0, refreshed.stderr
    with open(out / "results.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert rows["first"]["status"] == "stale" and "optimizer" in rows["first"]["detail"]
    assert rows["first"]["settings"].startswith("adagrad"), "a stale row shows what actually ran"
    assert rows["second"]["status"] == "done"
    assert (first / "metrics.json").stat().st_mtime_ns == first_mtime

    # 4b. --blind shows validation only: the test rows stay in the files, off the screen
    blind = subprocess.run(
        [*_sweep_command(experiment, out), "--results-only", "--blind"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert blind.returncode == 0, blind.stderr
    shown = next(line for line in blind.stdout.splitlines() if line.startswith("second "))
    assert f"{float(rows['second']['val_roc_auc']):.4f}" in shown
    assert f"{float(rows['second']['accuracy']):.3f}" not in shown.split()
    assert "accuracy" not in blind.stdout and "test figures hidden" in blind.stdout
    from train.sweep_results import blinded_row

    full = json.loads((out / "results.json").read_text())["rows"][1]
    hidden = blinded_row(full)
    assert hidden["val_roc_auc"] == full["val_roc_auc"] and hidden["params"] == full["params"]
    assert not {"accuracy", "specificity_low", "roc_auc_high", "accuracy_at_0.5"} & set(hidden)

    # 5. reports/seeds.md tables are generated from the copied results; the prose around them is kept
    from train.report_seeds import main as report_main

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "seeds.md").write_text(
        "intro\n<!-- sweep-table: sweep,absent -->\nold\n<!-- end sweep-table -->\nmiddle\n"
        "<!-- sweep-table: sweep runs=broken -->\n<!-- end sweep-table -->\nend\n"
    )
    assert report_main(["--sweeps", str(tmp_path), "--reports", str(reports)]) == 0
    assert not (reports / "sweeps" / "sweep").exists(), "a sweep with a failed run is not copied unasked"
    assert report_main(["--sweeps", str(tmp_path), "--reports", str(reports), "--force"]) == 0
    assert (reports / "sweeps" / "sweep" / "results.png").is_file()
    seeds = (reports / "seeds.md").read_text()
    full, filtered = seeds.split("middle\n")
    assert (
        full.startswith("intro\n")
        and filtered.endswith("<!-- end sweep-table -->\nend\n")
        and "old" not in seeds
    )
    assert "| second | full SYNTHETIC |" in full and "*absent: no results yet*" in full
    assert "| first | full SYNTHETIC | adagrad" in full
    # a pending row says how to finish it: the sweep's own command line, as recorded in state.json
    assert f"PENDING (failed): finish with `pneumo train sweep {experiment} --out {out}`" in filtered
    assert "| second |" not in filtered and "| first |" not in filtered


def test_a_new_model_option_reruns_only_the_runs_that_set_it(tmp_path: Path) -> None:
    """A run folder saved before a model option existed stays complete; setting the option makes it stale."""
    from edge_runtime.fileio import atomic_write_json
    from train.sweep_results import settings_changed, settings_summary

    path = _write(
        tmp_path / "x.toml",
        '[defaults]\narch = "roskilde"\n[[run]]\nname = "plain"\n[[run]]\nname = "wide"\n'
        "last_conv_filters = 256\npool_dropout = 0.25\n",
    )
    plain, wide = plan_sweep(load_experiment(path), SweepConfig(experiments=path, data=tmp_path))
    for run in (plain, wide):
        assert run.config.out is not None
        saved = {
            k: v
            for k, v in run.config.to_dict().items()
            # an older config.json: before these fields existed (distill_weight's default is 0.5, not None;
            # threshold_on's is the architecture's, and runs before it chose on validation alone)
            if k
            not in (
                "activation",
                "last_conv_filters",
                "pool_dropout",
                "teacher",
                "distill_weight",
                "threshold_on",
                "split_seed",
            )
        }
        atomic_write_json(run.config.out / "config.json", saved)
    assert settings_changed(plain) == []
    assert settings_changed(wide) == ["last_conv_filters", "pool_dropout"]
    assert "last conv 256, pool dropout 0.25" in settings_summary(wide.config)
    assert "last conv" not in settings_summary(plain.config)


def test_a_random_run_from_before_the_pool_existed_reruns_and_a_patient_run_does_not(tmp_path: Path) -> None:
    """Before session 21 a random split pooled every folder; its config.json has no random_pool to say so."""
    from edge_runtime.fileio import atomic_write_json
    from train.sweep_results import settings_changed, settings_summary

    path = _write(
        tmp_path / "x.toml",
        '[defaults]\narch = "lhu"\n[[run]]\nname = "random"\nsplit = "random"\n[[run]]\nname = "patient"\n',
    )
    random_run, patient_run = plan_sweep(load_experiment(path), SweepConfig(experiments=path, data=tmp_path))
    for run in (random_run, patient_run):
        assert run.config.out is not None
        older = {k: v for k, v in run.config.to_dict().items() if k != "random_pool"}
        atomic_write_json(run.config.out / "config.json", older)
    assert settings_changed(random_run) == ["random_pool"], "it pooled val/ and test/: not seed 000's split"
    assert settings_changed(patient_run) == [], "a patient-wise split never read the pool"
    assert random_run.config.out is not None
    atomic_write_json(random_run.config.out / "config.json", random_run.config.to_dict())
    assert settings_changed(random_run) == []
    assert "random 70/20/10 split of the train folder" in settings_summary(random_run.config)


def test_the_test_split_column_says_which_folders_a_random_split_pooled() -> None:
    """Read from the folders the images came from: model cards from before random_pool existed say it too."""
    from train.sweep_results import _test_split

    def card(mode: str, **folders: dict[str, int]) -> dict:
        return {
            "data": {
                "split_mode": mode,
                "split": {"splits": {k: {"from_folder": v} for k, v in folders.items()}},
            }
        }

    seed000 = card("random", train={"train": 7}, val={"train": 2}, test={"train": 1})
    assert _test_split(seed000) == "random image split of train (leaks patients)"
    pooled = card("random", train={"train": 9, "test": 1}, val={"val": 1, "train": 2}, test={"test": 1})
    assert _test_split(pooled) == "random image split of all folders (leaks patients)"
    assert (
        _test_split(card("random", train={"flat": 7}, test={"flat": 1}))
        == "random image split (leaks patients)"
    )
    assert _test_split(card("patient", train={"train": 9}, test={"test": 4})) == "official test"


def test_results_only_for_a_sweep_never_run_says_so(tmp_path: Path) -> None:
    """--results-only on a folder no sweep wrote is a usage error that names it, not a lock-file errno."""
    path = _write(tmp_path / "x.toml", '[defaults]\narch = "lhu"\n[[run]]\nname = "one"\n')
    out = tmp_path / "never-run"
    done = subprocess.run(
        [*_sweep_command(path, out), "--results-only"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(out) in done.stderr and "holds no sweep yet" in done.stderr and "Errno" not in done.stderr
    assert not out.exists(), "reporting on a sweep creates no folder"


def test_results_without_data_do_not_call_every_row_stale(tmp_path: Path) -> None:
    """--results-only / --dry-run without --data name no folder, so the data folder has not changed."""
    from edge_runtime.fileio import atomic_write_json
    from train.sweep_results import settings_changed

    path = _write(tmp_path / "x.toml", '[defaults]\narch = "lhu"\n[[run]]\nname = "one"\n')
    out = tmp_path / "sweep"
    (finished,) = plan_sweep(load_experiment(path), SweepConfig(experiments=path, out=out, data=tmp_path))
    assert finished.config.out is not None
    atomic_write_json(finished.config.out / "config.json", finished.config.to_dict())
    (no_data,) = plan_sweep(load_experiment(path), SweepConfig(experiments=path, out=out, dry_run=True))
    assert no_data.config.data is None and settings_changed(no_data) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (moved,) = plan_sweep(load_experiment(path), SweepConfig(experiments=path, out=out, data=elsewhere))
    assert settings_changed(moved) == ["data"], "a named folder that differs still makes the row stale"


def test_a_run_trained_with_a_relative_data_path_is_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pneumo train --data ../shared/...` records the path as typed; the sweep plans it absolute."""
    from edge_runtime.fileio import atomic_write_json
    from train.sweep_results import settings_changed

    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = _write(tmp_path / "x.toml", '[defaults]\narch = "lhu"\n[[run]]\nname = "one"\n')
    (run,) = plan_sweep(
        load_experiment(path), SweepConfig(experiments=path, out=tmp_path / "sweep", data=data)
    )
    assert run.config.out is not None
    typed = run.config.to_dict() | {"data": "../shared/data"}
    atomic_write_json(run.config.out / "config.json", typed)
    assert settings_changed(run) == []
    atomic_write_json(run.config.out / "config.json", typed | {"data": "../shared"})
    assert settings_changed(run) == ["data"]


def test_the_same_weights_file_in_another_checkout_is_the_same_run(tmp_path: Path) -> None:
    """lite0's weights come from a package: another checkout's .venv has them at another path."""
    from edge_runtime.fileio import atomic_write_json
    from train.sweep_results import settings_changed

    here, there, other = (tmp_path / name for name in ("here.pth", "there.pth", "other.pth"))
    here.write_bytes(b"weights")
    there.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    path = _write(
        tmp_path / "x.toml", f'[defaults]\narch = "lite0"\nweights = "{here}"\n[[run]]\nname = "one"\n'
    )
    (run,) = plan_sweep(
        load_experiment(path), SweepConfig(experiments=path, out=tmp_path / "sweep", data=tmp_path)
    )
    assert run.config.out is not None
    atomic_write_json(run.config.out / "config.json", run.config.to_dict() | {"weights": str(there)})
    assert settings_changed(run) == []
    atomic_write_json(run.config.out / "config.json", run.config.to_dict() | {"weights": str(other)})
    assert settings_changed(run) == ["weights"]


def test_reduced_rows_say_reduced(tmp_path: Path) -> None:
    path = REPO / "experiments" / "seed001_go19_augmentation.toml"
    experiment = load_experiment(path)
    config = SweepConfig(experiments=path, out=tmp_path / "sweep", data=tmp_path, reduced=True, dry_run=True)
    plan = plan_sweep(experiment, config)
    from train.sweep_results import result_row

    rows = [result_row(run, {}, experiment.name) for run in plan]
    assert all(row["mode"] == "reduced" and row["status"] == "pending" for row in rows)
    assert all("height 200 -> 100" in row["reductions"] for row in rows)
    assert isinstance(plan[0].config, TrainConfig)


def test_one_sweep_per_folder_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    from train.sweep import LOCK_FILE, sweep_lock

    with sweep_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
        with pytest.raises(SweepError, match=f"another sweep \\(pid {os.getpid()}\\)"), sweep_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(str(dead.pid))  # a sweep that was SIGKILLed
    with sweep_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


LOOKER = """
import sys, time
from pathlib import Path
from train.sweep import lock_held
root, seconds = Path(sys.argv[1]), float(sys.argv[2])
looks, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    lock_held(root)
    looks += 1
    if looks == 1:
        print("looking", flush=True)
print(looks, flush=True)
"""


def test_report_seeds_looking_at_the_lock_never_stops_a_sweep_from_starting(tmp_path: Path) -> None:
    """lock_held takes a shared flock for a moment; a sweep starting in that moment must still start.

    A stale lock file (a SIGKILLed sweep's) is the case: lock_held opens and locks it only when it
    exists, and each finishing sweep_lock removes it, so the loop puts it back.
    """
    from train.sweep import LOCK_FILE, sweep_lock

    lock = tmp_path / LOCK_FILE
    lock.write_text("0")
    looker = subprocess.Popen(
        [sys.executable, "-c", LOOKER, str(tmp_path), "2"], stdout=subprocess.PIPE, text=True
    )
    assert looker.stdout is not None
    assert looker.stdout.readline().strip() == "looking"
    starts, refused = 0, []
    while looker.poll() is None:
        starts += 1
        try:
            with sweep_lock(tmp_path):
                pass
        except SweepError as error:
            refused.append(str(error))
        lock.write_text("0")
    looks = int(looker.stdout.read().split()[-1])
    assert looker.returncode == 0 and looks > 1000 and starts > 100, (looks, starts)
    assert not refused, f"{len(refused)} of {starts} starts refused while report-seeds looked: {refused[0]}"


def test_only_leaves_other_runs_as_they_are_and_a_failed_run_leaves_no_run_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    experiment = _write(
        tmp_path / "two.toml",
        f'[defaults]\narch = "lhu"\ndata = "{empty}"\n[[run]]\nname = "other"\n[[run]]\nname = "broken"\n',
    )
    out = tmp_path / "sweep"
    partial = out / "runs" / "other" / "partial.txt"
    partial.parent.mkdir(parents=True)
    partial.write_text("an interrupted attempt")
    # the broken run fails in its own process (empty data folder) before any TensorFlow import
    assert main([str(experiment), "--out", str(out), "--only", "broken"]) == 1
    assert partial.read_text() == "an interrupted attempt", "--only must not touch other runs"
    assert not (out / "runs" / "other.incomplete-1").exists()
    # a run folder is complete or absent: the failed run removed its half-built folder, its log stays
    assert not (out / "runs" / "broken").exists() and (out / "logs" / "broken.attempt-1.log").is_file()
    assert [p.name for p in (out / "runs").iterdir()] == ["other"]
    assert main([str(experiment), "--out", str(out), "--only", "broken"]) == 1
    assert (
        not (out / "runs" / "broken.incomplete-1").exists()
        and (out / "logs" / "broken.attempt-2.log").is_file()
    )
    state = json.loads((out / "state.json").read_text())
    assert state["broken"] == {**state["broken"], "attempts": 2, "status": "failed"}
    assert "other" not in state or state["other"]["attempts"] == 0
    with open(out / "results.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert rows["other"]["status"] == "pending" and rows["broken"]["status"] == "failed"
    assert "the folder is empty" in rows["broken"]["detail"]


def test_a_run_folder_without_its_model_is_not_complete(tmp_path: Path) -> None:
    """A folder a killed run was writing can hold metrics.json and model_card.json but no model."""
    from train.sweep_results import is_complete

    for name in (
        "metrics.json",
        "model_card.json",
        "contract.json",
        "model_info.json",
        "config.json",
        "split.json",
    ):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.h5").write_bytes(b"h5")
    assert is_complete(tmp_path)
    (tmp_path / "model.h5").unlink()
    assert not is_complete(tmp_path)


def test_the_console_table_says_synthetic_when_a_row_is(tmp_path: Path) -> None:
    from train.sweep_results import summary_table

    real = {"run": "real", "status": "done", "mode": "full", "accuracy": 0.9, "val_roc_auc": 0.95}
    fake = {**real, "run": "phantom", "mode": "reduced SYNTHETIC"}
    for blind in (False, True):
        assert "SYNTHETIC" not in summary_table([real], blind=blind)
        lines = summary_table([real, fake], blind=blind).splitlines()
        assert lines[0] == lines[-1] and lines[0].startswith("SYNTHETIC data (1 of 2 rows: phantom)")


def test_execute_moves_earlier_attempts_aside_and_records_each_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A complete run of other settings is superseded, a half folder and a killed build are moved aside
    (nothing deleted), every attempt gets its config, log and state entry; a `skip` row is not run."""
    from train.sweep import execute

    empty = tmp_path / "empty"
    empty.mkdir()
    experiment = _write(
        tmp_path / "x.toml",
        f'[defaults]\narch = "lhu"\ndata = "{empty}"\n[[run]]\nname = "changed"\n[[run]]\nname = "unfinished"\n'
        '[[run]]\nname = "later"\nskip = "waits for the GPU study"\n',
    )
    out = tmp_path / "sweep"
    config = SweepConfig(experiments=experiment, out=out)
    changed, unfinished, later = plan_sweep(load_experiment(experiment), config)
    assert changed.config.out is not None and unfinished.config.out is not None
    done = changed.config.out
    done.mkdir(parents=True)
    for name in (
        "model.h5",
        "contract.json",
        "model_info.json",
        "split.json",
        "metrics.json",
        "model_card.json",
    ):
        (done / name).write_text("{}")
    (done / "config.json").write_text(json.dumps({**changed.config.to_dict(), "optimizer": "another"}))
    unfinished.config.out.mkdir(parents=True)
    (unfinished.config.out / "partial.txt").write_text("half a run")
    killed_build = out / "runs" / ".unfinished.building-elsewhere-1-1"
    killed_build.mkdir()
    state: dict = {}

    with caplog.at_level("WARNING", logger="train.sweep"):
        outcomes = [execute(run, config, state) for run in (changed, unfinished, later)]

    runs = out / "runs"
    assert (runs / "changed.superseded-1" / "model_card.json").is_file() and not done.exists()
    assert (runs / "unfinished.incomplete-1" / "partial.txt").read_text() == "half a run"
    assert (runs / "unfinished.incomplete-2").is_dir() and not killed_build.exists()
    assert caplog.messages == [
        "changed: settings changed (optimizer); previous run moved to changed.superseded-1",
        "unfinished: incomplete attempt moved to unfinished.incomplete-1; starting again",
        "unfinished: interrupted attempt moved to unfinished.incomplete-2; starting again",
    ]
    for outcome, name in zip(outcomes[:2], ("changed", "unfinished")):
        log_path = out / "logs" / f"{name}.attempt-1.log"
        assert outcome.name == name and outcome.status == "failed"
        assert outcome.detail.startswith("exit 1: ") and outcome.detail.endswith(f"(log: {log_path})")
        assert "the folder is empty" in outcome.detail and outcome.wall_seconds is not None
        config_file = out / "configs" / f"{name}.toml"
        assert log_path.read_text().startswith(
            f"$ {sys.executable} -m edge_runtime.pneumo_cli train --config "
        )
        assert config_file.read_text().startswith(
            f"# run {name!r} of sweep sweep (); full settings\n# reproduce: pneumo train --config {config_file}\n"
            "[train]\n"
        )
        assert state[name] == {
            "attempts": 1,
            "status": "failed",
            "log": f"logs/{name}.attempt-1.log",
            "started": state[name]["started"],
            "wall_seconds": outcome.wall_seconds,
            "error": outcome.detail,
        }
    assert outcomes[2] == RunOutcome("later", "not-run", "waits for the GPU study")
    assert state["later"] == {"attempts": 0}
    assert json.loads((out / "state.json").read_text()) == {k: state[k] for k in ("changed", "unfinished")}


# --------------------------------------------------------------------------- --json and --blind


def _test_metrics(matrix: list[list[int]], offset: float) -> dict:
    """metrics.json of a finished run; every test figure an odd value found nowhere else in the row."""
    names = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
    test = {name: round(0.7013 + offset + 0.0117 * i, 4) for i, name in enumerate(names)}
    test["ci95"] = {name: [round(v - 0.0531, 4), round(v + 0.0419, 4)] for name, v in test.items()}
    test |= {
        "n_images": sum(map(sum, matrix)),
        "threshold": 0.37,
        "confusion_matrix": {"rows_true_cols_predicted": matrix},
    }
    half = {name: round(0.6109 + offset + 0.0123 * i, 4) for i, name in enumerate(names[:3])}
    return {
        "test": test,
        "test_at_0.5": half,
        "validation": {"roc_auc": 0.8871 + offset},
        "timing": {"fit_seconds": 12.5},
    }


def _test_values(metrics: dict) -> set[float]:
    """Every figure computed from the test outputs, read from metrics.json (the row derives them from it)."""
    test = metrics["test"]
    values = {v for v in test.values() if isinstance(v, float)} - {test["threshold"]}
    values |= {bound for ci in test["ci95"].values() for bound in ci}
    values |= set(metrics["test_at_0.5"].values())
    matrix = test["confusion_matrix"]["rows_true_cols_predicted"]
    if len(matrix) > 2:
        values.add(sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix)))
    return values


def _finished_sweep(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, dict]]:
    """An experiment of a 3-class and a binary run whose run folders are complete (no training)."""
    from edge_runtime.fileio import atomic_write_json

    data = tmp_path / "data"
    data.mkdir()
    path = _write(
        tmp_path / "x.toml",
        '[sweep]\nname = "x"\n[defaults]\narch = "lhu"\n'
        '[[run]]\nname = "three"\nlabel_mode = "kind"\n[[run]]\nname = "two"\n',
    )
    out = tmp_path / "sweep"
    plan = plan_sweep(load_experiment(path), SweepConfig(experiments=path, out=out, data=data))
    matrices = {"three": [[5, 1, 0], [1, 6, 1], [0, 2, 8]], "two": [[7, 2], [1, 9]]}
    metrics = {}
    for offset, run in enumerate(plan):
        folder = run.config.out
        assert folder is not None
        folder.mkdir(parents=True)
        for name in ("model.h5", "contract.json", "model_info.json", "split.json"):
            (folder / name).write_text("{}")
        atomic_write_json(folder / "config.json", run.config.to_dict())
        metrics[run.spec.name] = _test_metrics(matrices[run.spec.name], offset / 100)
        atomic_write_json(folder / "metrics.json", metrics[run.spec.name])
        atomic_write_json(folder / "model_card.json", {"architecture": {"params": 1234, "flops": 5678}})
    return path, out, data, metrics


def test_sweep_json_prints_json_alone_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: stdout parses as JSON in a sweep, with --results-only and with --dry-run; hints go to stderr."""
    path, out, data, metrics = _finished_sweep(tmp_path)
    argv = [str(path), "--out", str(out), "--data", str(data), "--json"]

    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = {row["run"]: row for row in json.loads(captured.out)}
    assert set(rows) == {"three", "two"} and all(row["status"] == "done" for row in rows.values())
    assert rows["two"]["accuracy"] == metrics["two"]["test"]["accuracy"]
    assert "next: pneumo export bundle" in captured.err

    assert main([*argv, "--results-only"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in again] == ["three", "two"]
    assert again[0]["class_accuracy"] == pytest.approx(19 / 24) and again[0]["n_classes"] == 3

    assert main([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sweep"] == "x" and plan["out"] == str(out) and plan["reduced"] is False
    assert [(r["run"], r["arch"], r["state"]) for r in plan["runs"]] == [
        ("three", "lhu", "complete"),
        ("two", "lhu", "complete"),
    ]
    assert (
        plan["runs"][0]["run_folder"] == str(out / "runs" / "three")
        and "labels kind" in plan["runs"][0]["settings"]
    )


def test_blind_json_rows_hold_no_test_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--blind --json: no value computed from the test split survives, the 3-class accuracy included."""
    from train.sweep_results import TEST_FIGURES

    path, out, data, metrics = _finished_sweep(tmp_path)
    argv = [str(path), "--out", str(out), "--data", str(data), "--json"]
    assert main(argv) == 0
    full = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    for blind_argv in ([*argv, "--blind"], [*argv, "--results-only", "--blind"]):
        assert main(blind_argv) == 0
        for row in json.loads(capsys.readouterr().out):
            test_values = _test_values(metrics[row["run"]])
            shown = {value for value in full[row["run"]].values() if isinstance(value, float)}
            assert test_values <= shown, "the full row holds every test figure (else this proves nothing)"
            leaked = {key: value for key, value in row.items() if value in test_values}
            assert leaked == {}, f"{row['run']}: test figures in a blinded row: {leaked}"
            assert not TEST_FIGURES & set(row)
            assert (
                row["val_roc_auc"] == metrics[row["run"]]["validation"]["roc_auc"] and row["status"] == "done"
            )
    assert full["three"]["class_accuracy"] == pytest.approx(19 / 24)
