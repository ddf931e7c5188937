"""``pneumo train sweep``: many training runs from one experiment file, resumable, in one results table.

An experiment file (``experiments/*.toml``) names a list of runs, each a set of
:class:`~train.config.TrainConfig` settings (the names of ``pneumo train``'s
flags, snake_case or kebab-case)::

    [sweep]
    name = "seed000_lhu_optimizers"
    study = "seed 000"                 # default study id of every run
    description = "..."

    [defaults]                         # settings shared by every run
    arch = "lhu"

    [reduced]                          # with --reduced, on top of REDUCTION below
    epochs = 4

    [[run]]
    name = "adagrad"                   # unique; letters, digits, - _ .
    optimizer = "adagrad"
    claim = "accuracy 98.04% (random split)"   # the study's own figure, shown beside ours
    note = "..."                       # shown in the table
    skip = "..."                       # the reason a row of the study cannot run yet; listed, not run
    reduced = { epochs = 6 }           # this run's own reduction, on top of [reduced]

Precedence, lowest first: the architecture's recipe < ``[defaults]`` < the run
< (``--reduced``: :data:`REDUCTION` < ``[reduced]`` < the run's ``reduced``)
< ``--set KEY=VALUE`` < ``--data``. Every run's resolved config is validated
before anything trains (``--dry-run`` stops there).

Each run trains in its own ``pneumo train --config`` subprocess, so one crash,
out-of-memory kill or Keras state leak cannot take the sweep down. The sweep
folder::

    OUT/
      experiments.toml      the experiment file as last run
      configs/NAME.toml     the exact settings of each run (``pneumo train --config`` reproduces it)
      logs/NAME.attempt-K.log
      runs/NAME/            a run folder, renamed into place only when complete (pneumo train builds it
                            in a hidden runs/.NAME.building-HOST-PID-K and removes that when the run fails)
      runs/NAME.incomplete-K/   an interrupted attempt (a killed run's hidden folder), moved aside, never deleted
      runs/NAME.superseded-K/   a complete run whose settings no longer match the file, moved aside
      state.json            attempts, status, wall time and the training pid per run
      .sweep.lock           the pid of the sweep; locked (flock) by the sweep and its training child
      results.csv results.md results.json results.png

Resuming is running the same command again: complete runs with unchanged
settings are skipped, anything else starts again in a fresh folder. A run
that was "running" when its sweep was killed is recorded as "interrupted".

The training child dies with the sweep, even when the sweep is killed with
SIGKILL (Linux: ``PR_SET_PDEATHSIG``), and runs in a session of its own so that
a terminal's Ctrl-C reaches the sweep alone, which then stops the child. The
child inherits the sweep's lock, so where it could outlive the sweep (no
``prctl``) a resumed sweep refuses to start while it still runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.fileio import atomic_write_json, atomic_write_text, atomic_write_via, read_json
from train.config import TrainConfig, check_distillation, check_split_options
from train.errors import ConfigError, TrainError
from train.sweep_results import (
    is_complete,
    settings_changed,
    settings_summary,
    utc_now,
    write_results,
)

log = logging.getLogger("pneumo.sweep")

# Applied by --reduced before the file's own [reduced] table. 400 images per class keeps the whole
# official test split (234 NORMAL, 390 PNEUMONIA) and nearly all of the patient-wise validation split,
# and caps train at 800 images (three classes: 1,200); 4 epochs keep a model of seed size to minutes
# on a 2-core CPU.
REDUCTION: dict[str, Any] = {"max_per_class": 400, "epochs": 4}

RUN_KEYS = ("name", "study", "claim", "note", "skip", "reduced")
SWEEP_OWNED = ("out", "overwrite")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
STATE_FILE = "state.json"
# state.json entry of the sweep itself (run names start with a letter or digit, so it cannot clash)
SWEEP_KEY = "_sweep"
LOCK_FILE = ".sweep.lock"
LOCK_RETRY_S = 0.1  # how long a start waits out a reader's momentary shared flock
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class SweepError(TrainError):
    """An experiment file, run name or sweep folder that cannot be used; the message says which and why."""


class SweepConfigError(SweepError, ConfigError):
    """A bad --only, --set or --data, or a run setting out of range: a usage error (exit 2)."""


class SweepInterrupted(TrainError):
    """Ctrl-C or SIGTERM while a run was training."""


# --------------------------------------------------------------------------- the experiment file


@dataclass(frozen=True)
class RunSpec:
    """One ``[[run]]`` of an experiment file."""

    name: str
    study: str
    settings: dict[str, Any]
    reduced: dict[str, Any]
    claim: str = ""
    note: str = ""
    skip: str = ""


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    study: str
    description: str
    defaults: dict[str, Any]
    reduced: dict[str, Any]
    runs: tuple[RunSpec, ...]

    def names(self) -> list[str]:
        return [run.name for run in self.runs]


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10 (JetPack 6)
        import tomli

        return tomli
    except ImportError as exc:  # pragma: no cover
        raise SweepError("reading TOML on Python 3.10 needs 'pip install tomli'") from exc


def read_toml(path: Path) -> dict[str, Any]:
    tomllib = _tomllib()
    try:
        with open(path, "rb") as handle:
            return dict(tomllib.load(handle))
    except FileNotFoundError:
        raise SweepError(f"{path}: experiment file not found") from None
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: not a readable TOML file ({exc})") from None


def normalise_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """snake_case keys; ``image_size`` expanded into ``height`` and ``width``; ``split`` -> ``split_mode``."""
    if not isinstance(values, dict):
        raise SweepError(f"{source}: expected a table of settings, got {type(values).__name__}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in SWEEP_OWNED:
            raise SweepError(
                f"{source}: {key!r} is set by the sweep (each run gets OUT/runs/NAME); remove it"
            )
        if name == "image_size":
            out["height"] = value
            out["width"] = value
        elif name == "split":
            out["split_mode"] = value
        else:
            out[name] = value
    return out


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file (names, keys); settings are validated by :func:`plan_sweep`."""
    source = Path(path).expanduser()
    data = read_toml(source)
    unknown = sorted(set(data) - {"sweep", "defaults", "reduced", "run"})
    if unknown:
        raise SweepError(
            f"{source}: unknown top-level keys {unknown}; expected [sweep], [defaults], [reduced], [[run]]"
        )
    head = data.get("sweep", {})
    if not isinstance(head, dict):
        raise SweepError(f"{source}: [sweep] must be a table")
    name = str(head.get("name", source.stem))
    study = str(head.get("study", ""))
    defaults = normalise_settings(data.get("defaults", {}), f"{source} [defaults]")
    reduced = normalise_settings(data.get("reduced", {}), f"{source} [reduced]")
    rows = data.get("run", [])
    if not isinstance(rows, list) or not rows:
        raise SweepError(f"{source}: no [[run]] entries; add at least one")
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise SweepError(f"{source}: run #{index} must be a table")
        run_name = row.get("name")
        where = f"{source} run #{index}"
        if not isinstance(run_name, str) or not NAME_PATTERN.match(run_name):
            raise SweepError(
                f"{where}: 'name' {run_name!r} must be 1-80 letters, digits, '-', '_' or '.', starting with a "
                "letter or digit (it names the run folder)"
            )
        if run_name in seen:
            raise SweepError(f"{where}: run name {run_name!r} is used twice; names must be unique")
        seen.add(run_name)
        where = f"{source} run {run_name!r}"
        settings = normalise_settings({k: v for k, v in row.items() if k not in RUN_KEYS}, where)
        runs.append(
            RunSpec(
                name=run_name,
                study=str(row.get("study", study)),
                settings=settings,
                reduced=normalise_settings(row.get("reduced", {}), f"{where} reduced"),
                claim=str(row.get("claim", "")),
                note=str(row.get("note", "")),
                skip=str(row.get("skip", "")),
            )
        )
    return Experiment(
        path=source,
        name=name,
        study=study,
        description=str(head.get("description", "")),
        defaults=defaults,
        reduced=reduced,
        runs=tuple(runs),
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SweepConfig:
    """One ``pneumo train sweep`` invocation."""

    experiments: Path
    out: Path | None = None
    data: Path | None = None
    reduced: bool = False
    only: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    python: str = sys.executable
    command: str = ""  # the command line, recorded in state.json and results.json to tell how to resume


@dataclass(frozen=True)
class PlannedRun:
    """A run of the sweep with its resolved config (``config.out`` is its run folder)."""

    spec: RunSpec
    config: TrainConfig
    reduced: bool
    reductions: tuple[str, ...]  # "epochs 20 -> 4", what --reduced changed
    selected: bool  # chosen by --only (or no --only)


def default_out(experiment: Experiment, reduced: bool) -> Path:
    return Path("runs") / "sweeps" / (experiment.name + ("-reduced" if reduced else ""))


def run_settings(
    experiment: Experiment, spec: RunSpec, reduced: bool, overrides: dict[str, Any]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    values.update(experiment.defaults)
    values.update(spec.settings)
    if reduced:
        values.update(REDUCTION)
        values.update(experiment.reduced)
        values.update(spec.reduced)
    values.update(overrides)
    return values


def _describe_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _reductions(full: TrainConfig, reduced: TrainConfig) -> tuple[str, ...]:
    changes = []
    for name, before in full.to_dict().items():
        after = reduced.to_dict()[name]
        if before != after:
            changes.append(f"{name} {_describe_value(before)} -> {_describe_value(after)}")
    return tuple(changes)


def _resolve(values: dict[str, Any], source: str) -> TrainConfig:
    try:
        check_distillation(values, source)
        check_split_options(values, source)
        return TrainConfig.from_dict(values, source=source).resolved()
    except TrainError as exc:
        message = str(exc)
        kind = SweepConfigError if isinstance(exc, ConfigError) else SweepError
        raise kind(message if message.startswith(source) else f"{source}: {message}") from None


def plan_sweep(experiment: Experiment, config: SweepConfig) -> list[PlannedRun]:
    """Resolve and validate every run's :class:`TrainConfig`; nothing is written."""
    names = experiment.names()
    unknown = [name for name in config.only if name not in names]
    if unknown:
        raise SweepConfigError(
            f"--only {','.join(unknown)}: no such run in {experiment.path}; runs: {', '.join(names)}"
        )
    out = (config.out or default_out(experiment, config.reduced)).expanduser().resolve()
    overrides = normalise_settings(dict(config.overrides), "--set")
    plan = []
    for spec in experiment.runs:
        source = f"{experiment.path} run {spec.name!r}"
        fixed: dict[str, Any] = {"out": str(out / "runs" / spec.name)}
        values = run_settings(experiment, spec, config.reduced, overrides)
        if config.data is not None:
            fixed["data"] = str(config.data.expanduser().resolve())
        elif values.get("data") is not None:
            fixed["data"] = str(Path(str(values["data"])).expanduser().resolve())
        elif not config.dry_run:
            raise SweepConfigError(f"{source}: no data folder; pass --data ROOT (or set data in [defaults])")
        resolved = _resolve({**values, **fixed}, source)
        reductions: tuple[str, ...] = ()
        if config.reduced:
            full = _resolve({**run_settings(experiment, spec, False, overrides), **fixed}, source)
            reductions = _reductions(full, resolved)
        selected = not config.only or spec.name in config.only
        plan.append(PlannedRun(spec, resolved, config.reduced, reductions, selected))
    if not config.dry_run:
        data_roots = {str(run.config.data) for run in plan if run.selected and not run.spec.skip}
        for root in sorted(data_roots):
            if not Path(root).is_dir():
                raise SweepError(
                    f"--data {root}: folder not found; pass the chest X-ray folder (ROOT/train, ROOT/test)"
                )
    return plan


# --------------------------------------------------------------------------- run folders and state


def sweep_root(run: PlannedRun) -> Path:
    assert run.config.out is not None
    return run.config.out.parent.parent


def move_aside(folder: Path, why: str, source: Path | None = None) -> Path:
    """Rename ``source`` (default ``folder``) to ``folder.WHY-K`` (first free K); nothing is deleted."""
    k = 1
    while (target := folder.with_name(f"{folder.name}.{why}-{k}")).exists():
        k += 1
    (source or folder).rename(target)
    return target


def settle_interrupted(state: dict[str, Any]) -> bool:
    """Record runs left "running" by a sweep that was killed as "interrupted"; True when any was.

    Call it holding the lock: no sweep and no training child is then left to finish them.
    """
    changed = False
    for name, entry in state.items():
        if name != SWEEP_KEY and isinstance(entry, dict) and entry.get("status") == "running":
            entry.update(status="interrupted", error="its sweep was killed while it trained")
            entry.pop("pid", None)
            changed = True
    return changed


def load_settled_state(root: Path) -> dict[str, Any]:
    """state.json with stale "running" entries settled (and written back); call it holding the lock."""
    state = load_state(root)
    if settle_interrupted(state):
        atomic_write_json(root / STATE_FILE, state)
    return state


def load_state(root: Path) -> dict[str, Any]:
    try:
        state = read_json(root / STATE_FILE)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SweepError(
            f"{root / STATE_FILE}: unreadable sweep state ({exc}); move it aside to start afresh"
        ) from None
    return state if isinstance(state, dict) else {}


def toml_value(value: Any) -> str:
    """A TOML literal of a config value (str, Path, bool, int, float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SweepError(f"setting value {value!r} cannot be written to TOML")
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    # JSON string escapes (\n, \", \\, \uXXXX) are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def config_toml(config: TrainConfig, header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("[train]")
    for key, value in sorted(config.to_dict().items()):
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- running


@dataclass
class RunOutcome:
    name: str
    status: str  # done, skipped-complete, failed, not-run (skip reason), pending, interrupted
    detail: str = ""
    wall_seconds: float | None = None


def _last_error(log_path: Path) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "error" in line.lower() or "Traceback" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def train_command(config: SweepConfig, config_file: Path) -> list[str]:
    return [config.python, "-m", "edge_runtime.pneumo_cli", "train", "--config", str(config_file), "--json"]


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` asking the kernel to SIGKILL the child when the sweep dies, SIGKILL included.

    Without it a killed sweep's child trains on as an orphan while the resumed sweep starts the
    same run again. None where ``prctl`` is missing (the inherited lock then blocks a resume).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        # Resolved before the fork, so the forked child calls one C function and takes no lock.
        # The signal follows the forking thread: launch is called from the sweep's main thread.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the sweep died before the request took effect
            os._exit(1)

    return preexec


def launch(
    command: list[str],
    log_path: Path,
    keep_fds: tuple[int, ...] = (),
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run one training subprocess, its stdout and stderr into ``log_path``; the exit code.

    The child gets the fds ``keep_fds`` (the sweep lock) and dies with the sweep; ``on_start``
    receives its pid. On Ctrl-C / SIGTERM the child is asked to stop (SIGTERM), then killed after 30 s.
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "ab") as handle:
        handle.write(f"$ {' '.join(command)}\n".encode())
        handle.flush()
        # A session of its own: a terminal's Ctrl-C goes to the sweep, which stops the child below.
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # one pre-resolved C call: safe after fork, see there
            pass_fds=keep_fds,
        )
        try:
            if on_start is not None:
                on_start(process.pid)
            return process.wait()
        except BaseException:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise


def execute(
    run: PlannedRun, config: SweepConfig, state: dict[str, Any], lock_fd: int | None = None
) -> RunOutcome:
    """Bring one planned run to a complete run folder (or record why not).

    ``lock_fd`` (the sweep lock) is handed to the training child, so that the lock stays
    held for as long as the child runs, even should it outlive the sweep.
    """
    name = run.spec.name
    folder = run.config.out
    assert folder is not None
    entry = state.setdefault(name, {"attempts": 0})
    if run.spec.skip:
        return RunOutcome(name, "not-run", run.spec.skip)
    complete = folder.is_dir() and is_complete(folder)
    changed = settings_changed(run) if complete else []
    if complete and not changed:
        return RunOutcome(name, "skipped-complete", "complete run folder with the same settings")
    if not run.selected:
        return RunOutcome(name, "pending", "not selected by --only; left as it is")
    _move_earlier_attempts(name, folder, complete, changed)
    root = sweep_root(run)
    config_file = _write_run_config(run, root)
    log_path = _begin_attempt(root, name, entry, state)
    keep = () if lock_fd is None else (lock_fd,)
    return _attempt(name, folder, train_command(config, config_file), log_path, keep, root, state)


def _move_earlier_attempts(name: str, folder: Path, complete: bool, changed: list[str]) -> None:
    """Move aside the run folder of other settings or of an unfinished attempt, and killed attempts' builds."""
    if complete:
        moved = move_aside(folder, "superseded")
        log.warning(
            "%s: settings changed (%s); previous run moved to %s", name, ", ".join(changed), moved.name
        )
    elif folder.exists():
        moved = move_aside(folder, "incomplete")
        log.warning("%s: incomplete attempt moved to %s; starting again", name, moved.name)
    from train.fit import staging_folders

    # a killed attempt's hidden build folder; the lock proves no process writes there any more
    for leftover in staging_folders(folder):
        moved = move_aside(folder, "incomplete", leftover)
        log.warning("%s: interrupted attempt moved to %s; starting again", name, moved.name)


def _write_run_config(run: PlannedRun, root: Path) -> Path:
    """Create the sweep's folders and write the run's config file, which says how to reproduce it."""
    name = run.spec.name
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    config_file = root / "configs" / f"{name}.toml"
    header = (
        f"run {name!r} of sweep {root.name} ({run.spec.study}); "
        + ("REDUCED: " + "; ".join(run.reductions) if run.reduced else "full settings")
        + f"\nreproduce: pneumo train --config {config_file}"
    )
    atomic_write_text(config_file, config_toml(run.config, header))
    return config_file


def _begin_attempt(root: Path, name: str, entry: dict[str, Any], state: dict[str, Any]) -> Path:
    """Record a new attempt of ``name`` as running in the sweep state; the attempt's log file."""
    entry["attempts"] = int(entry.get("attempts", 0)) + 1
    log_path = root / "logs" / f"{name}.attempt-{entry['attempts']}.log"
    entry.update(status="running", log=str(log_path.relative_to(root)), started=utc_now())
    atomic_write_json(root / STATE_FILE, state)
    return log_path


def _attempt(
    name: str,
    folder: Path,
    command: list[str],
    log_path: Path,
    keep: tuple[int, ...],
    root: Path,
    state: dict[str, Any],
) -> RunOutcome:
    """Run the training ``command`` of ``name`` and record how it ended in the sweep state."""
    entry = state[name]
    started = time.perf_counter()

    def record_pid(pid: int) -> None:
        # names the child should it ever outlive a killed sweep (see sweep_lock)
        entry["pid"] = pid
        atomic_write_json(root / STATE_FILE, state)

    try:
        code = launch(command, log_path, keep, record_pid)
    except (KeyboardInterrupt, SweepInterrupted):
        entry.pop("pid", None)
        entry.update(status="interrupted", wall_seconds=round(time.perf_counter() - started, 1))
        atomic_write_json(root / STATE_FILE, state)
        raise
    entry.pop("pid", None)
    wall = round(time.perf_counter() - started, 1)
    if code == 0 and is_complete(folder):
        entry.update(status="done", wall_seconds=wall, error="")
        atomic_write_json(root / STATE_FILE, state)
        return RunOutcome(name, "done", "", wall)
    detail = f"exit {code}: {_last_error(log_path)} (log: {log_path})"
    entry.update(status="failed", wall_seconds=wall, error=detail)
    atomic_write_json(root / STATE_FILE, state)
    return RunOutcome(name, "failed", detail, wall)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill PID``, a scheduler's stop) ends the sweep like Ctrl-C: child stopped, results written."""

    def handler(signum: int, frame: Any) -> None:
        raise SweepInterrupted(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _lock_held_message(root: Path) -> str:
    """Why the lock of ``root`` is held: another sweep, or the training child of a killed one."""
    from train.fit import pid_alive

    holder = _read_pid(root / LOCK_FILE)
    if holder and pid_alive(holder):
        return f"{root}: another sweep (pid {holder}) is running in this folder; wait for it or stop it"
    try:
        state = load_state(root)
    except SweepError:
        state = {}
    children = [
        f"{name} (pid {entry['pid']})"
        for name, entry in state.items()
        if isinstance(entry, dict) and entry.get("status") == "running" and entry.get("pid")
    ]
    which = ", ".join(children) or "see 'ps'"
    return (
        f"{root}: the sweep that used this folder (pid {holder or '?'}) is gone, but a training process it "
        f"started still runs and holds {LOCK_FILE}: {which}. Wait for it to end or stop it, then run the "
        "same command again"
    )


def _try_exclusive(fd: int) -> bool:
    """Take the exclusive flock of ``fd`` unless another process keeps it for longer than a moment.

    ``lock_held`` (report-seeds) takes a shared flock for a few microseconds to look; a start that
    lands in that moment must not read it as a running sweep. flock has no lock-free probe
    (F_GETLK does not see flock locks on Linux), so the start tries again for LOCK_RETRY_S.
    """
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


def _open_lock(lock: Path) -> int:
    """An fd of ``lock`` holding its flock; SweepError when another process holds it."""
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        if not _try_exclusive(fd):
            os.close(fd)
            raise SweepError(_lock_held_message(lock.parent))
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # a finishing sweep removed the file between our open and flock: take the new one


def lock_held(root: Path) -> bool:
    """True while a sweep, or a training child of a killed one, holds the lock of sweep folder ``root``.

    Only looks: the lock file is never created, and the shared flock tried here is dropped at once,
    so a reader (``pneumo train report-seeds``) does not stop a sweep from starting.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False  # a sweep removes its lock file when it ends
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared flock, if taken
    return False


@contextlib.contextmanager
def sweep_lock(root: Path) -> Iterator[int]:
    """One sweep at a time per folder: two would train the same run twice and race on state.json.

    The lock is an flock, held by the sweep and by each training child it starts (the fd is
    inherited), so a killed sweep's lock is free again exactly when none of its processes is
    left; the file holds the sweep's pid, for the messages. Yields the locked fd.
    """
    lock = root / LOCK_FILE
    fd = _open_lock(lock)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def run_sweep(experiment: Experiment, plan: list[PlannedRun], config: SweepConfig) -> list[RunOutcome]:
    """Run every selected, not yet complete run in order; write the results after each one."""
    root = sweep_root(plan[0])
    root.mkdir(parents=True, exist_ok=True)
    with sweep_lock(root) as lock_fd:
        return _run_locked(experiment, plan, config, root, lock_fd)


def _run_locked(
    experiment: Experiment, plan: list[PlannedRun], config: SweepConfig, root: Path, lock_fd: int
) -> list[RunOutcome]:
    from tqdm import tqdm

    atomic_write_via(root / "experiments.toml", lambda tmp: shutil.copyfile(experiment.path, tmp))
    state = load_settled_state(root)
    if config.command:
        state[SWEEP_KEY] = {"command": config.command, "updated": utc_now()}
    outcomes: dict[str, RunOutcome] = {}
    todo = [run for run in plan if run.selected and not run.spec.skip]
    bar = tqdm(
        total=len(todo),
        desc=f"sweep {experiment.name}",
        unit="run",
        file=sys.stderr,
        disable=not log.isEnabledFor(logging.INFO),  # --quiet
    )
    try:
        for run in plan:
            if run.selected and not run.spec.skip:
                bar.set_postfix_str(run.spec.name)
            outcome = execute(run, config, state, lock_fd)
            outcomes[run.spec.name] = outcome
            if run.selected and not run.spec.skip:
                bar.update(1)
                if outcome.status in ("done", "failed"):
                    log.info(
                        "%-28s %s in %.0f s %s",
                        run.spec.name,
                        outcome.status,
                        outcome.wall_seconds or 0,
                        outcome.detail,
                    )
                write_results(experiment, plan, root, state)
    except (KeyboardInterrupt, SweepInterrupted):
        write_results(experiment, plan, root, state)
        raise
    finally:
        bar.close()
    write_results(experiment, plan, root, state)
    return [outcomes[run.spec.name] for run in plan]


# --------------------------------------------------------------------------- results


# --------------------------------------------------------------------------- plans and overrides (the CLI's inputs and output)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as a TOML value when it parses, else as a string."""
    tomllib = _tomllib()
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SweepConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=2")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except ValueError:
            value = text.strip()
        values[key.strip()] = value
    return values


def plan_rows(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    """What a sweep would do with each run of ``plan``: the data of ``plan_table`` (``--dry-run --json``)."""
    from train.fit import staging_folders

    rows = []
    for run in plan:
        folder = run.config.out
        assert folder is not None
        if run.spec.skip:
            state = "not run: " + run.spec.skip
        elif folder.is_dir() and is_complete(folder):
            state = "complete" if not settings_changed(run) else "complete, settings changed: will rerun"
        elif folder.exists() or staging_folders(folder):
            state = "incomplete: will move aside and rerun"
        else:
            state = "to run" if run.selected else "not selected"
        rows.append(
            {
                "run": run.spec.name,
                "arch": run.config.arch,
                "settings": settings_summary(run.config),
                "state": state,
                "selected": run.selected,
                "reduced": run.reduced,
                "reductions": list(run.reductions),
                "run_folder": str(folder),
            }
        )
    return rows


def plan_table(plan: list[PlannedRun]) -> str:
    rows = plan_rows(plan)
    width = max(len(row["run"]) for row in rows)
    lines = []
    for row in rows:
        lines.append(f"{row['run'].ljust(width)}  {row['arch']:<15} {row['settings']}")
        lines.append(f"{''.ljust(width)}  -> {row['state']}")
        if row["reductions"]:
            lines.append(f"{''.ljust(width)}     reduced: {'; '.join(row['reductions'])}")
    return "\n".join(lines)
