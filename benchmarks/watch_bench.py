"""The whole watch daemon, timed from inbox to result file on real images.

``pneumo bench watch BUNDLE --images DIR --count 1000`` starts
``pneumo edge watch`` as a real subprocess on a fresh inbox/outbox in a
temporary folder, waits until it is up (its heartbeat or resolved config
appears), drops one warm-up image, then drops ``count`` copies of real
images as fast as it can (each copied to a staging folder on the same
filesystem and renamed into the inbox, as a careful uploader does) and polls
``results.jsonl`` until every image has a line.

Per image it knows: when it was dropped (``t_drop``), when the daemon
finished inference (the record's ``timestamp``), the per-image share of the
batch inference (``latency_ms``), and when the line was seen in
``results.jsonl`` (``t_seen``, within one poll interval). So the time splits
into *to inference done* (discovery, waiting for a batch, read, decode,
preprocess and inference), *inference* (share) and *result written* (moving
the input, the per-image JSON, the jsonl/csv append and fsyncs). Any other
``*_ms`` fields the daemon logs in its records are summarized too.

The source images are only read; copies go into the temporary inbox, which
is deleted afterwards with everything the daemon wrote.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.errors import BenchConfigError, BenchInputError
from benchmarks.stats import MIN_CALLS_FOR_TAIL, summarize, throughput
from edge_runtime.preprocess import is_image_name

RESULTS_JSONL = "results.jsonl"
_READY_FILES = ("heartbeat.json", "watch_config.json")


@dataclass(frozen=True)
class WatchBenchConfig:
    """One run of the daemon benchmark."""

    bundle: Path
    images: Path
    count: int = 1000
    backend: str = "auto"
    precision: str = "fp32"
    #: the daemon's --batch; None: its default
    daemon_batch: int | None = None
    warmup_images: int = 1
    startup_timeout_s: float = 180.0
    #: give up waiting for results after this long (counted from the last drop)
    timeout_s: float = 600.0
    poll_s: float = 0.02
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "images", Path(self.images))
        if not (1 <= self.count <= 1_000_000):
            raise BenchConfigError(
                f"image count {self.count} (--count, or --watch-count of 'pneumo bench'): must be within 1..1000000"
            )
        if self.daemon_batch is not None and self.daemon_batch < 1:
            raise BenchConfigError(f"--daemon-batch {self.daemon_batch}: must be at least 1")
        if self.warmup_images < 0 or self.timeout_s <= 0 or self.startup_timeout_s <= 0 or self.poll_s <= 0:
            raise BenchConfigError("warm-up images must be >= 0 and timeouts and poll interval > 0")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bundle"], data["images"] = str(self.bundle), str(self.images)
        data["extra_args"] = list(self.extra_args)
        return data


def source_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted; hidden files left out)."""
    if not folder.is_dir():
        raise BenchInputError(f"{folder}: image folder not found (--images)")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name) and not p.name.startswith(".")
    )
    if not files:
        raise BenchInputError(f"{folder}: no image files (.jpeg, .png, ...) found")
    return files


def daemon_command(config: WatchBenchConfig, inbox: Path, outbox: Path) -> list[str]:
    """The daemon's command line with absolute paths: it runs in the checkout (see run_watch_bench), not here."""
    argv = [
        sys.executable,
        "-m",
        "edge_runtime.pneumo_cli",
        "edge",
        "watch",
        str(config.bundle.resolve()),
        "--inbox",
        str(inbox.resolve()),
        "--outbox",
        str(outbox.resolve()),
        "--backend",
        config.backend,
        "--precision",
        config.precision,
    ]
    if config.daemon_batch is not None:
        argv += ["--batch", str(config.daemon_batch)]
    return argv + list(config.extra_args)


class _ResultTail:
    """Reads complete new lines of results.jsonl as they appear, stamping when each was seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}

    def poll(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        now = time.time()
        self.offset += len(data)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        new = 0
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            name = str(record.get("original_name") or Path(str(record.get("source", ""))).name)
            if name not in self.seen:
                self.seen[name] = (now, record)
                new += 1
        return new


def _wait_ready(proc: subprocess.Popen[bytes], outbox: Path, timeout_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise BenchInputError(
                f"the watch daemon exited with status {proc.returncode} before it was ready"
            )
        if _looks_ready(outbox):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise BenchInputError(
        f"the watch daemon was not ready after {timeout_s:.0f} s (no heartbeat in {outbox})"
    )


def _looks_ready(outbox: Path) -> bool:
    """A heartbeat or config file, unless the heartbeat says the daemon failed at start.

    A daemon whose model will not open writes a last heartbeat with state "failed" and exits:
    without this check that file raced its exit and the bench waited for a warm-up result instead.
    """
    if not any((outbox / name).exists() for name in _READY_FILES):
        return False
    try:
        beat = json.loads((outbox / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return True  # no heartbeat yet, or one being replaced: the config file stands
    return not (isinstance(beat, dict) and beat.get("state") == "failed")


def _drop(source: Path, staging: Path, inbox: Path, name: str) -> float:
    staged = staging / name
    shutil.copyfile(source, staged)
    os.replace(staged, inbox / name)
    return time.time()


def _wait_for(
    tail: _ResultTail, names: list[str], timeout_s: float, poll_s: float, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.perf_counter() + timeout_s
    wanted = set(names)
    while time.perf_counter() < deadline:
        tail.poll()
        if wanted.issubset(tail.seen):
            return
        if proc.poll() is not None:
            return
        time.sleep(poll_s)


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _parse_timestamp(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


def analyse(
    drops: dict[str, float], seen: dict[str, tuple[float, dict[str, Any]]], first_drop: float
) -> dict[str, Any]:
    """Throughput, inbox-to-result latency and the time split by stage from drop and result times."""
    matched = [(name, drops[name], *seen[name]) for name in drops if name in seen]
    done = [m for m in matched if m[3].get("status", "done") == "done"]
    result: dict[str, Any] = {
        "dropped": len(drops),
        "results": len(matched),
        "done": len(done),
        "failed": len(matched) - len(done),
        "missing": len(drops) - len(matched),
    }
    if not matched:
        return result
    last_seen = max(m[2] for m in matched)
    result["wall_s"] = round(last_seen - first_drop, 4)
    result["throughput_ips"] = (
        round(throughput(len(matched), last_seen - first_drop), 3) if last_seen > first_drop else None
    )
    result["inbox_to_result_ms"] = summarize([(m[2] - m[1]) * 1000.0 for m in matched]).to_dict()
    to_inference, inference, written = [], [], []
    extra: dict[str, list[float]] = {}
    for _, dropped, seen_at, record in done:
        inferred = _parse_timestamp(record.get("timestamp"))
        if inferred is not None:
            to_inference.append(max(0.0, inferred - dropped) * 1000.0)
            written.append(max(0.0, seen_at - inferred) * 1000.0)
        if isinstance(record.get("latency_ms"), (int, float)):
            inference.append(float(record["latency_ms"]))
        for key, value in record.items():
            if key.endswith("_ms") and key != "latency_ms" and isinstance(value, (int, float)):
                extra.setdefault(key, []).append(float(value))
    stages: dict[str, Any] = {}
    if to_inference:
        stages["drop_to_inference_done_ms"] = summarize(to_inference).to_dict()
        stages["result_written_ms"] = summarize(written).to_dict()
    if inference:
        stages["inference_share_ms"] = summarize(inference).to_dict()
    for key, values in sorted(extra.items()):
        stages[f"daemon_{key}"] = summarize(values).to_dict()
    result["stages"] = stages
    return result


def run_watch_bench(config: WatchBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run the daemon on ``count`` real images and return the ``watch`` section of a bench document."""
    if importlib.util.find_spec("edge_runtime.watch") is None:
        raise BenchInputError("the watch daemon (edge_runtime.watch) is not part of this installation")
    files = source_images(config.images)
    with tempfile.TemporaryDirectory(prefix="pneumo-watch-bench-") as tmp:
        root = Path(tmp)
        inbox, outbox, staging = root / "inbox", root / "outbox", root / "staging"
        for folder in (inbox, outbox, staging):
            folder.mkdir()
        argv = daemon_command(config, inbox, outbox)
        log_path = root / "daemon.log"
        with open(log_path, "wb") as daemon_log:
            proc = _start_daemon(argv, daemon_log)
            try:
                startup_s = _wait_ready_or_explain(proc, outbox, config.startup_timeout_s, log_path)
                tail = _ResultTail(outbox / RESULTS_JSONL)
                _warm_up(files, staging, inbox, tail, config, proc, log_path)
                drops, first_drop, drop_s = _drop_burst(files, staging, inbox, tail, config.count, progress)
                _wait_for(tail, list(drops), config.timeout_s, config.poll_s, proc)
            finally:
                exit_code = _stop(proc)
        log_tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
    result = analyse(drops, tail.seen, first_drop)
    sample = next((rec for _, rec in tail.seen.values() if rec.get("status") == "done"), {})
    result.update(
        {
            "config": config.to_dict(),
            "images_source": str(config.images),
            "unique_files": len(files),
            "repeated_files": config.count > len(files),
            "daemon_command": " ".join(argv),
            "daemon_startup_s": round(startup_s, 3),
            "daemon_exit_code": exit_code,
            "drop_s": round(drop_s, 4),
            "backend": sample.get("backend"),
            "precision": sample.get("precision"),
            "model_version": sample.get("model_version"),
            "synthetic": sample.get("synthetic"),
            "note": (
                "burst: all images dropped as fast as possible, so inbox-to-result latency includes queueing; "
                "throughput is images with a result line / (last line seen - first drop)"
            ),
        }
    )
    if result["missing"]:
        result["daemon_log_tail"] = log_tail
    return result


def _start_daemon(argv: list[str], daemon_log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # cwd is the checkout so that ``-m`` (cwd first on sys.path) cannot pick up another package of
    # the same name from the caller's folder; PYTHONPATH finds ours even when not installed.
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(argv, stdout=daemon_log, stderr=subprocess.STDOUT, env=env, cwd=repo)


def _log_lines(log_path: Path) -> str:
    """The daemon log's last three lines on one line, for an error message."""
    return " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])


def _wait_ready_or_explain(
    proc: subprocess.Popen[bytes], outbox: Path, timeout_s: float, log_path: Path
) -> float:
    """Seconds until the daemon was ready; a daemon that never was is an error quoting its log."""
    try:
        return _wait_ready(proc, outbox, timeout_s)
    except BenchInputError as exc:
        raise BenchInputError(f"{exc}; daemon log: {_log_lines(log_path) or '(empty)'}") from exc


def _warm_up(
    files: list[Path],
    staging: Path,
    inbox: Path,
    tail: _ResultTail,
    config: WatchBenchConfig,
    proc: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    """Drop the warm-up images and wait for their results, so the burst times a daemon at speed."""
    warm = [f"warmup{i:03d}_{files[i % len(files)].name}" for i in range(config.warmup_images)]
    for i, name in enumerate(warm):
        _drop(files[i % len(files)], staging, inbox, name)
    _wait_for(tail, warm, config.startup_timeout_s, config.poll_s, proc)
    if set(warm).issubset(tail.seen):
        return
    tail_text = _log_lines(log_path)
    state = f"exited with status {proc.returncode}" if proc.poll() is not None else "is still silent"
    raise BenchInputError(
        f"the watch daemon {state} without a result for the warm-up image; daemon log: {tail_text or '(empty)'}"
    )


def _drop_burst(
    files: list[Path], staging: Path, inbox: Path, tail: _ResultTail, count: int, progress: bool
) -> tuple[dict[str, float], float, float]:
    """Drop ``count`` images as fast as possible: drop time per name, first drop time, seconds dropping."""
    from tqdm import tqdm

    drops: dict[str, float] = {}
    first_drop = time.time()
    for i in tqdm(range(count), desc="drop", unit="img", disable=not progress, leave=False):
        source = files[i % len(files)]
        name = f"wb{i:06d}_{source.name}"
        drops[name] = _drop(source, staging, inbox, name)
        if i % 64 == 0:
            tail.poll()
    return drops, first_drop, time.time() - first_drop


def watch_markdown(watch: dict[str, Any]) -> list[str]:
    """Lines for bench.md / watch.md."""
    lines = [
        f"- {watch.get('results', 0)} of {watch.get('dropped', 0)} images got a result "
        f"({watch.get('done', 0)} done, {watch.get('failed', 0)} failed, {watch.get('missing', 0)} missing) "
        f"from {watch.get('unique_files')} distinct files in `{watch.get('images_source')}`"
        + (" (repeated to reach the count)" if watch.get("repeated_files") else ""),
        f"- backend {watch.get('backend')} {watch.get('precision')}; daemon start-up {watch.get('daemon_startup_s')} s; "
        f"all images dropped in {watch.get('drop_s')} s",
        f"- **{watch.get('throughput_ips') or 0:.1f} images/s** inbox to results.jsonl over {watch.get('wall_s')} s",
        f"- {watch.get('note', '')}",
        "",
        "| stage | mean ms | median ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    stages = {"inbox to result line": watch.get("inbox_to_result_ms"), **watch.get("stages", {})}
    for name, stats in stages.items():
        if stats:
            # As in bench.md: a p99 of fewer than MIN_CALLS_FOR_TAIL images would be the maximum in disguise.
            p99 = f"{stats['p99']:.2f}" if stats.get("count", 0) >= MIN_CALLS_FOR_TAIL else "-"
            lines.append(
                f"| {name.removesuffix('_ms').replace('_', ' ')} | {stats['mean']:.2f} | {stats['median']:.2f} | {stats['p90']:.2f} | {p99} |"
            )
    return lines
