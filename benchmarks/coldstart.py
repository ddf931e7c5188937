"""Cold start and peak memory, each measured in a fresh Python process.

The parent (:func:`measure_cold_start`) starts ``python -m benchmarks.coldstart``
and times it from just before the spawn until the child reports its first
inference on stdout: interpreter start + imports + model load + first
inference, the wait a clinician has after a reboot. The child prints READY
right after that first inference, then reads its peak resident memory and
its GPU memory with the model still loaded, checks that the model still
answers (``memory_read_while_loaded``), and only then closes it: teardown
(``teardown_s``, reported apart) is not counted, and the memory figures are
those of a process ready to serve.

Two kinds of child, doing the same work with different stacks:

* ``edge``: edge_runtime only (numpy, OpenCV, ONNX Runtime or TensorRT), the
  bundle opened and verified as ``pneumo edge`` does;
* ``keras``: TensorFlow, ``load_model`` of the .h5 and ``model(x, training=False)``.

Both decode and preprocess the same image through edge_runtime.preprocess
(or use a zero image when none is given). This module imports only the
standard library at the top so the child's import time is its stack's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_MODULE_START = time.perf_counter()
_READY_LINE = "COLDSTART-READY"
_RESULT_PREFIX = "COLDSTART "


@dataclass(frozen=True)
class ColdStartSpec:
    """What one cold-start child loads: an edge backend from a bundle, or the Keras .h5."""

    kind: str  # "edge" or "keras"
    backend: str
    precision: str
    bundle: Path
    h5: Path | None = None
    image: Path | None = None
    threads: int = 0

    def argv(self) -> list[str]:
        """The child's command line, every path absolute: the child runs in the checkout, not the caller's cwd."""
        args = [
            sys.executable,
            "-m",
            "benchmarks.coldstart",
            self.kind,
            "--bundle",
            str(Path(self.bundle).resolve()),
            "--backend",
            self.backend,
            "--precision",
            self.precision,
            "--threads",
            str(self.threads),
        ]
        if self.h5 is not None:
            args += ["--h5", str(Path(self.h5).resolve())]
        if self.image is not None:
            args += ["--image", str(Path(self.image).resolve())]
        return args


def measure_cold_start(spec: ColdStartSpec, repeats: int = 3, timeout_s: float = 300.0) -> dict[str, Any]:
    """Median cold start and peak memory over ``repeats`` fresh processes (or an ``error``)."""
    runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        run = _one_child(spec, timeout_s)
        if "error" in run:
            return {
                "backend": spec.backend,
                "precision": spec.precision,
                "kind": spec.kind,
                "error": run["error"],
            }
        runs.append(run)
    peaks = [r["peak_rss_mb"] for r in runs]
    gpu = [r["gpu_memory_mb"] for r in runs if r.get("gpu_memory_mb") is not None]
    return {
        "backend": spec.backend,
        "precision": spec.precision,
        "kind": spec.kind,
        "repeats": len(runs),
        "cold_start_s": round(statistics.median(r["cold_start_s"] for r in runs), 4),
        "cold_start_runs_s": [round(r["cold_start_s"], 4) for r in runs],
        "import_s": round(statistics.median(r["import_s"] for r in runs), 4),
        "load_s": round(statistics.median(r["load_s"] for r in runs), 4),
        "first_inference_s": round(statistics.median(r["first_inference_s"] for r in runs), 4),
        "peak_rss_mb": round(statistics.median(peaks), 1),
        "gpu_memory_mb": round(statistics.median(gpu), 1) if gpu else None,
        "gpu_memory_note": runs[0].get("gpu_memory_note", ""),
        "memory_read_while_loaded": all(r["memory_read_while_loaded"] for r in runs),
        "teardown_s": round(statistics.median(r["teardown_s"] for r in runs), 4),
        "peak_rss_source": runs[0].get("peak_rss_source", ""),
        "versions": runs[0].get("versions", {}),
    }


def cold_start_warnings(cold: list[dict[str, Any]]) -> list[str]:
    """One warning per failed cold start: a missing figure must be as visible as a measured one."""
    return [
        f"cold start of {c['backend']} {c['precision']} failed ({c['error']}): no cold-start or peak-memory "
        "figure for it, so the targets that need it are not measured; fix the cause and re-run"
        for c in cold
        if "error" in c
    ]


def _one_child(spec: ColdStartSpec, timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The child must import this checkout's packages even when pneumo-edge is not installed. Its cwd is
    # the checkout too, because ``-m`` puts the cwd first on sys.path and a caller's folder holding
    # another ``benchmarks`` or ``edge_runtime`` would shadow ours; so argv() passes absolute paths.
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    # stderr goes to a nameless file, not a pipe: nobody reads it until the end, and a child writing
    # more than a pipe holds (TensorRT / TensorFlow warnings) would block before its result line. A
    # TemporaryFile has no name on disk, so nothing is left behind whatever interrupts us.
    with tempfile.TemporaryFile() as stderr_file:
        deadline = time.monotonic() + timeout_s
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                spec.argv(), stdout=subprocess.PIPE, stderr=stderr_file, env=env, cwd=repo
            )
        except OSError as exc:
            return {"error": f"could not start a fresh Python process: {exc}"}
        try:
            lines = _stdout_lines(proc, deadline)
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(proc)
            tail = _stderr_tail(stderr_file)
            return {
                "error": f"fresh process did not finish within {timeout_s:.0f} s and was killed: "
                f"{tail or 'no output on stderr'}"
            }
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM of the benchmark: the child must not outlive it.
            _kill(proc)
            raise
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
        report, ready, ready_monotonic = _parse_child_output(lines, started)
        if report is None or proc.returncode != 0 or ready == started:
            tail = _stderr_tail(stderr_file)
            return {"error": f"fresh process failed (exit {proc.returncode}): {tail or 'no output'}"}
    report["cold_start_s"] = ready - started
    report["ready_seen_monotonic"] = ready_monotonic
    return report


def _stdout_lines(proc: subprocess.Popen[bytes], deadline: float) -> list[tuple[str, float, float]]:
    """The child's stdout lines until it closes it, each stamped (perf_counter, monotonic) as it arrives.

    Reads raw chunks as soon as the pipe has any, so READY is stamped when the parent could first see
    it, as a blocking line reader would; raises ``subprocess.TimeoutExpired`` once ``deadline`` (a
    ``time.monotonic`` value) passes, so a child hung before its result cannot hang the benchmark.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[tuple[str, float, float]] = []
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(timeout=remaining):
                raise subprocess.TimeoutExpired(proc.args, timeout=0.0)
            chunk = os.read(fd, 65536)
            seen, seen_monotonic = time.perf_counter(), time.monotonic()
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            lines += [(raw.decode("utf-8", "replace"), seen, seen_monotonic) for raw in complete]
    if pending:
        lines.append((pending.decode("utf-8", "replace"), time.perf_counter(), time.monotonic()))
    return lines


def _parse_child_output(
    lines: list[tuple[str, float, float]], started: float
) -> tuple[dict[str, Any] | None, float, float]:
    """(result report or None, perf_counter when READY arrived, its monotonic twin); ``started`` if no READY."""
    ready, ready_monotonic = started, 0.0
    for line, seen, seen_monotonic in lines:
        if line.strip() == _READY_LINE:
            ready, ready_monotonic = seen, seen_monotonic
        elif line.startswith(_RESULT_PREFIX):
            report: dict[str, Any] = json.loads(line[len(_RESULT_PREFIX) :])
            return report, ready, ready_monotonic
    return None, ready, ready_monotonic


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child and reap it, so no process or zombie outlives the measurement."""
    proc.kill()
    proc.wait()


def _stderr_tail(stderr_file: IO[bytes], lines: int = 3) -> str:
    """The child's last stderr lines, joined on one line for an error record."""
    # Only the end: a child may have written megabytes of warnings before the lines that matter.
    size = stderr_file.seek(0, os.SEEK_END)
    stderr_file.seek(max(0, size - 65536))
    tail = stderr_file.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
    return " | ".join(tail)


# --------------------------------------------------------------------------- child side


@dataclass(frozen=True)
class _Loaded:
    """A child's stack right after its first inference, still loaded.

    Memory is read while it is loaded (the GPU memory of a closed TensorRT or CUDA context is gone),
    and ``close`` comes last, after the parent has stopped its clock: teardown is not cold start.
    """

    timings: dict[str, float]
    #: one more inference: True when the model still answers (it is loaded), False when it does not
    answers: Callable[[], bool]
    close: Callable[[], None]


def _child_edge(args: argparse.Namespace) -> _Loaded:
    import numpy as np

    from edge_runtime.backends.select import create_backend
    from edge_runtime.bundle import Bundle
    from edge_runtime.preprocess import preprocess_file

    imported = time.perf_counter()
    bundle = Bundle.open(args.bundle)
    backend = create_backend(bundle, args.backend, args.precision, args.threads)
    backend.open()
    loaded = time.perf_counter()
    if args.image:
        batch = preprocess_file(args.image, bundle.contract)[np.newaxis]
    else:
        batch = np.zeros((1, *bundle.contract.input_shape), dtype=np.uint8)
    backend.infer(batch)
    done = time.perf_counter()

    def answers() -> bool:
        try:
            backend.infer(batch)
        except Exception:  # noqa: BLE001 - a closed backend raises whatever its library raises: that is the answer
            return False
        return True

    timings = {
        "import_s": imported - _MODULE_START,
        "load_s": loaded - imported,
        "first_inference_s": done - loaded,
    }
    return _Loaded(timings=timings, answers=answers, close=backend.close)


def _child_keras(args: argparse.Namespace) -> _Loaded:
    import numpy as np
    import tensorflow as tf

    from edge_runtime.contract import PreprocessContract
    from edge_runtime.preprocess import preprocess_file

    imported = time.perf_counter()
    if args.threads:
        # As in the timed Keras row, so both stacks start with the same CPU thread setting.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    contract = PreprocessContract.load(args.bundle)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    models = [tf.keras.models.load_model(str(args.h5), compile=False)]
    loaded = time.perf_counter()
    if args.image:
        batch = preprocess_file(args.image, contract)[np.newaxis].astype(np.float32)
    else:
        batch = np.zeros((1, *contract.input_shape), dtype=np.float32)
    models[0](batch, training=False).numpy()
    done = time.perf_counter()

    def answers() -> bool:
        if not models:
            return False
        try:
            models[0](batch, training=False).numpy()
        except Exception:  # noqa: BLE001 - as the edge child: a model that cannot answer is not loaded
            return False
        return True

    def close() -> None:
        # What a Keras process does when it is done with a model: drop it and its graph state.
        models.clear()
        tf.keras.backend.clear_session()

    timings = {
        "import_s": imported - _MODULE_START,
        "load_s": loaded - imported,
        "first_inference_s": done - loaded,
    }
    return _Loaded(timings=timings, answers=answers, close=close)


def _peak_rss_mb() -> tuple[float, str]:
    """Peak resident memory of this process since exec.

    Linux's ``ru_maxrss`` also counts the parent's RSS at fork time (exec folds
    the old address space's high-water mark into it), so a benchmark parent
    holding TensorFlow would inflate every child. ``VmHWM`` in
    /proc/self/status belongs to the new address space only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0, "VmHWM (/proc/self/status)"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return (peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0), "ru_maxrss"


def _gpu_memory_mb(backend: str) -> tuple[float | None, str]:
    if backend in ("ort-cpu",):
        return None, "CPU backend"
    if shutil.which("nvidia-smi") is None:
        return None, "no per-process GPU memory reading here (Jetson memory is shared; see peak RSS)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, "nvidia-smi failed"
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            try:
                return float(parts[1]), "nvidia-smi used_memory of this process"
            except ValueError:
                break
    return None, "this process is not listed by nvidia-smi (ran on CPU?)"


def _stack_versions(kind: str) -> dict[str, str | None]:
    import importlib.metadata

    names = (
        ("tensorflow", "tensorflow-cpu", "keras")
        if kind == "keras"
        else ("onnxruntime", "onnxruntime-gpu", "tensorrt")
    )
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart")
    parser.add_argument("kind", choices=("edge", "keras"))
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--h5", type=Path)
    parser.add_argument("--image", type=Path)
    args = parser.parse_args(argv)
    stack = _child_edge(args) if args.kind == "edge" else _child_keras(args)
    report: dict[str, Any] = dict(stack.timings)
    # The parent stops its clock on this line, right after the first inference; what follows is not cold start.
    sys.stdout.write(_READY_LINE + "\n")
    sys.stdout.flush()
    report["ready_written_monotonic"] = time.monotonic()
    # Memory while the model is loaded and its device context alive: what the process holds to serve.
    report["peak_rss_mb"], report["peak_rss_source"] = _peak_rss_mb()
    report["gpu_memory_mb"], report["gpu_memory_note"] = _gpu_memory_mb(args.backend)
    # Checked after the readings, before close: the model still answering proves they were taken loaded.
    report["memory_read_while_loaded"] = stack.answers()
    report["versions"] = _stack_versions(args.kind)
    # Recorded by the child itself, so the order READY -> memory -> close is checked without racing the
    # parent (whose clock stops when it reads READY, whenever the scheduler lets it).
    report["close_started_monotonic"] = time.monotonic()
    stack.close()
    report["teardown_s"] = time.monotonic() - report["close_started_monotonic"]
    sys.stdout.write(_RESULT_PREFIX + json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main())
