"""A sweep killed with SIGKILL: its training child dies with it, a resume is honest and never trains twice.

The fast tests run the real sweep in a subprocess with a stand-in trainer (no TensorFlow) that
starts a run the way ``pneumo train`` does (a hidden ``.NAME.building-PID-K`` folder) and then
waits to be killed; the slow test is the audit's reproduction with real training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from train.cli import sweep_main as main
from train.sweep import LOCK_FILE

# Stands in for `python -m edge_runtime.pneumo_cli train --config FILE --json`: blocks until killed,
# or (no FAKE_BLOCK file) exits 1 at once like a run that failed.
FAKE_TRAINER = """\
#!{python}
import os, re, signal, sys
from pathlib import Path

if not Path(os.environ["FAKE_BLOCK"]).exists():
    sys.exit(1)
config = Path(sys.argv[sys.argv.index("--config") + 1]).read_text()
out = Path(re.search(r'^out = "(.*)"$', config, re.M).group(1))
staging = out.parent / f".{{out.name}}.building-{{os.getpid()}}-1"
staging.mkdir(parents=True)
(staging / "history.csv").write_text("epoch,loss\\n")
Path(os.environ["FAKE_STARTED"] + ".tmp").write_text(str(os.getpid()))
os.replace(os.environ["FAKE_STARTED"] + ".tmp", os.environ["FAKE_STARTED"])
signal.pause()
"""

# The sweep in a process of its own, with FAKE as its Python; "off" runs it as where prctl is missing.
DRIVER = """\
import sys
from pathlib import Path

import train.sweep as sweep

experiment, out, data, fake, death_signal = sys.argv[1:6]
if death_signal == "off":
    sweep._die_with_parent = lambda: None
loaded = sweep.load_experiment(experiment)
config = sweep.SweepConfig(experiments=Path(experiment), out=Path(out), data=Path(data), python=fake)
sweep.run_sweep(loaded, sweep.plan_sweep(loaded, config), config)
"""


class Sweep:
    """One sweep folder driven by DRIVER with the fake trainer."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.experiment = tmp_path / "exp.toml"
        self.experiment.write_text('[defaults]\narch = "lhu"\n[[run]]\nname = "a"\n')
        self.out = tmp_path / "sweep"
        self.fake = tmp_path / "fake-python"
        self.fake.write_text(FAKE_TRAINER.format(python=sys.executable))
        self.fake.chmod(0o755)
        self.block = tmp_path / "block"
        self.started = tmp_path / "started"
        self.env = dict(os.environ, FAKE_BLOCK=str(self.block), FAKE_STARTED=str(self.started))
        self.processes: list[psutil.Process] = []

    def start(self, death_signal: str = "on") -> tuple[subprocess.Popen[bytes], psutil.Process]:
        """The sweep, once its training child has started its run; (sweep, child)."""
        self.block.touch()
        self.started.unlink(missing_ok=True)
        log = self.tmp / f"sweep-{len(self.processes)}.log"
        with open(log, "w") as handle:
            sweep = subprocess.Popen(
                self._command(death_signal), env=self.env, start_new_session=True,
                stdout=handle, stderr=subprocess.STDOUT,
            )  # fmt: skip
        while not self.started.exists() and sweep.poll() is None:
            time.sleep(0.02)  # polling for an event, not a timing: the child writes it once started
        assert self.started.exists(), log.read_text()
        child = psutil.Process(int(self.started.read_text()))
        self.processes.append(child)
        assert child.ppid() == sweep.pid
        return sweep, child

    def resume(self) -> subprocess.CompletedProcess[str]:
        """The same sweep again; its child now fails at once, so the sweep finishes."""
        self.block.unlink(missing_ok=True)
        return subprocess.run(
            self._command("on"), env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    def state(self) -> dict:
        return dict(json.loads((self.out / "state.json").read_text())["a"])

    def _command(self, death_signal: str) -> list[str]:
        return [sys.executable, "-c", DRIVER, str(self.experiment), str(self.out), str(self.data),
                str(self.fake), death_signal]  # fmt: skip


@pytest.fixture
def sweep(tmp_path: Path) -> Iterator[Sweep]:
    made = Sweep(tmp_path)
    yield made
    for process in made.processes:  # a test that failed must not leave its orphan behind
        if process.is_running():
            process.kill()


def test_a_killed_sweeps_child_dies_with_it_and_the_resume_says_interrupted(
    sweep: Sweep, capsys: pytest.CaptureFixture[str]
) -> None:
    process, child = sweep.start()
    own_session = os.getsid(child.pid) == child.pid  # so a terminal's Ctrl-C goes to the sweep alone
    os.kill(process.pid, signal.SIGKILL)  # the sweep alone, as `kill -9 PID` does
    process.wait()
    gone, alive = psutil.wait_procs([child], timeout=60)
    assert not alive, "the training child outlived the killed sweep"
    assert own_session
    assert sweep.state()["status"] == "running" and sweep.state()["pid"] == child.pid
    runs = sweep.out / "runs"
    assert not (runs / "a").exists(), "a run folder appears only when the run is complete"

    # reading the results settles the dead run: "interrupted", not "running" for ever
    rewritten = [str(sweep.experiment), "--out", str(sweep.out), "--data", str(sweep.data)]
    assert main([*rewritten, "--results-only"]) == 0
    capsys.readouterr()
    assert sweep.state()["status"] == "interrupted" and "pid" not in sweep.state()

    # the resume moves the killed attempt's hidden folder aside, kept, and starts again
    result = sweep.resume()
    assert result.returncode == 0, result.stderr
    assert (runs / "a.incomplete-1" / "history.csv").is_file()
    assert not list(runs.glob(".a.building-*")) and not (runs / "a").exists()
    assert sweep.state()["attempts"] == 2 and sweep.state()["status"] == "failed"
    assert not (sweep.out / LOCK_FILE).exists()


def test_a_resume_refuses_while_a_killed_sweeps_child_still_runs(sweep: Sweep) -> None:
    """Where the child cannot be tied to the sweep (no prctl), it holds the sweep's lock until it ends."""
    process, child = sweep.start(death_signal="off")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert child.is_running(), "premise: without the death signal the child is orphaned"

    refused = sweep.resume()
    assert refused.returncode != 0
    assert f"a (pid {child.pid})" in refused.stderr and "still runs" in refused.stderr
    assert sweep.state()["status"] == "running" and sweep.state()["attempts"] == 1
    assert len(list((sweep.out / "runs").glob(".a.building-*"))) == 1, "nothing moved while it writes"

    child.kill()
    child.wait(timeout=60)
    result = sweep.resume()
    assert result.returncode == 0, result.stderr
    assert (sweep.out / "runs" / "a.incomplete-1" / "history.csv").is_file()
    assert sweep.state()["attempts"] == 2


# --------------------------------------------------------------------------- the audit's reproduction

KILL_EXPERIMENT = """
[defaults]
arch = "lhu"
image_size = 32
batch_size = 8
bootstrap = 20
tensorboard = false
cache_dir = "{cache}"

[[run]]
name = "a"
"""


@pytest.mark.tf
@pytest.mark.slow
def test_real_sweep_killed_mid_run_resumes_into_a_complete_run(tmp_path: Path) -> None:
    from train.synth import SynthConfig, generate

    data = generate(tmp_path / "synth", SynthConfig(per_class=16, size=64, seed=3)).root
    experiment = tmp_path / "exp.toml"
    experiment.write_text(textwrap.dedent(KILL_EXPERIMENT.format(cache=tmp_path / "cache")))
    out = tmp_path / "sw"
    runs = out / "runs"
    command = [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "sweep", str(experiment),
               "--data", str(data), "-o", str(out)]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # epochs enough to train for many minutes: only a kill ends this attempt
    process = subprocess.Popen(
        [*command, "--set", "epochs=2000"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        while process.poll() is None and not ((runs / "a").exists() or list(runs.glob(".a.building-*"))):
            time.sleep(0.05)  # polling for the run to start, not a timing
        assert process.poll() is None, "the sweep ended before its run started"
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "no training child"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        gone, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, "the training child outlived the killed sweep"
    finally:
        for child in children:
            if child.is_running():
                child.kill()

    result = subprocess.run(
        [*command, "--set", "epochs=1"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (runs / "a" / "model.h5").is_file() and (runs / "a" / "metrics.json").is_file()
    assert (runs / "a.incomplete-1").is_dir() and not list(runs.glob(".a.building-*"))
    state = json.loads((out / "state.json").read_text())["a"]
    assert state["attempts"] == 2 and state["status"] == "done" and "pid" not in state
    # the console table says what the rows are, as results.md does
    banners = [line for line in result.stdout.splitlines() if line.startswith("SYNTHETIC data")]
    assert len(banners) == 2 and result.stdout.startswith("SYNTHETIC data")
