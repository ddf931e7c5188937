"""``pneumo bench``: benchmark a bundle, compare two results, or time the watch daemon.

Exit codes: 0 the benchmark ran (targets missed are results, not failures),
1 a failure named on stderr, 2 a usage error (a setting out of range, checked
before anything runs, the watch part's included). SIGTERM stops a run as
Ctrl-C does: scratch folders are removed and ``pneumo`` exits 130.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.errors import BenchConfigError, BenchError
from benchmarks.interrupts import sigterm_as_interrupt
from edge_runtime.errors import EdgeError

if TYPE_CHECKING:
    from benchmarks.watch_bench import WatchBenchConfig

DEFAULT_OUTPUT = Path("benchmarks/results")

BENCH_DESCRIPTION = """Throughput, latency, cold start, memory and accuracy per backend, precision and batch size.

Two more benchmarks are subcommands, each with its own --help:
  pneumo bench watch BUNDLE --images DIR    the whole watch daemon, inbox to result file
  pneumo bench decode BUNDLE --images DIR   images per second by decode threads (edge predict --workers)
"""

BENCH_EXAMPLES = """examples:
  pneumo bench bundles/seed000 --keras runs/seed000            # everything this machine supports
  pneumo bench bundles/seed000 --keras runs/seed000 --data ../shared/data/chest_xray/test \\
      --backends ort-cpu,keras --batch 1,8 --duration 5
  pneumo bench --auto -o benchmarks/results                    # what 'make bench' runs
  pneumo bench --compare benchmarks/results/A/2025-01-01/bench.json benchmarks/results/B/2025-01-02/bench.json
  pneumo bench watch bundles/seed000 --images ../shared/data/chest_xray/test --count 1000
  pneumo bench decode bundles/seed000 --images ../shared/data/chest_xray/test --workers 0,1,2,4

Writes OUTPUT/<device>/<date>/bench.json, bench.md and PNG plots. What this
machine cannot run (e.g. trt without TensorRT) is listed with the reason.
"""

WATCH_EXAMPLES = """example:
  pneumo bench watch bundles/seed000 --images ../shared/data/chest_xray/test --count 1000

Starts 'pneumo edge watch' on a temporary inbox/outbox, drops COUNT copies of
real images and times them from inbox to results.jsonl, split by stage.
The source folder is only read.
"""

DECODE_EXAMPLES = """example:
  pneumo bench decode bundles/seed000 --images ../shared/data/chest_xray/test --workers 0,1,2,4

Images per second that 'pneumo edge predict --workers N' reaches for each N,
with and without the model, in one run (N = 0: decoded in the main thread).
Full-size X-rays decode far slower than the model runs on a Jetson: this
says how many decode threads keep it busy. The images are only read.
"""


def _csv(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list") from exc
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def _bench_parser(prog: str) -> argparse.ArgumentParser:
    from benchmarks.run import ALL_BACKENDS, ALL_PRECISIONS, DEFAULT_BATCHES

    parser = argparse.ArgumentParser(
        prog=prog,
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "bundle", nargs="?", type=Path, help="deployment bundle folder (from 'pneumo export bundle')"
    )
    parser.add_argument(
        "--backends",
        type=_csv(str),
        default=ALL_BACKENDS,
        help=f"comma list (default: {','.join(ALL_BACKENDS)})",
    )
    parser.add_argument(
        "--precisions",
        type=_csv(str),
        default=ALL_PRECISIONS,
        help=f"comma list (default: {','.join(ALL_PRECISIONS)})",
    )
    parser.add_argument(
        "--batch",
        type=_csv(int),
        default=DEFAULT_BATCHES,
        help=f"batch sizes (default: {','.join(map(str, DEFAULT_BATCHES))})",
    )
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument(
        "--iterations",
        type=int,
        help="timed calls per combination, at least 10 (p95/p99 need 100+; default: --duration)",
    )
    timing.add_argument(
        "--duration", type=float, default=3.0, help="seconds timed per combination (default: 3)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up seconds (default: 1)")
    parser.add_argument(
        "--data",
        type=Path,
        help="labelled test folder TESTDIR/<LABEL>/ (default: the run's split.json test entries)",
    )
    parser.add_argument("--keras", type=Path, help="training run folder or .h5: the Keras reference row")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of ONNX Runtime and TensorFlow (0: each runtime's default)",
    )
    parser.add_argument("--test-limit", type=int, help="score at most N test images (seeded, stratified)")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (default: 1000)"
    )
    parser.add_argument(
        "--cold-start-repeats", type=int, default=3, help="fresh processes per cold start (0: skip)"
    )
    parser.add_argument(
        "--no-e2e", action="store_true", help="skip the end-to-end (decode + preprocess) loop"
    )
    parser.add_argument("--no-trtexec", action="store_true", help="skip the trtexec --loadEngine rows")
    parser.add_argument(
        "--watch-images", type=Path, help="also benchmark the watch daemon on images from DIR"
    )
    parser.add_argument(
        "--watch-count", type=int, default=1000, help="images for the watch benchmark (default: 1000)"
    )
    _add_output(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace today's results for this device")
    parser.add_argument("--json", action="store_true", help="print bench.json on stdout")
    parser.add_argument(
        "--auto", action="store_true", help="find bundle, Keras run and test images here (make bench)"
    )
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="show two results side by side"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    return parser


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=results_root,
        default=DEFAULT_OUTPUT,
        help="results root folder; results go to ROOT/<device>/<date>/ (default: %(default)s)",
    )


def _watch_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Images per second of the whole watch daemon, inbox to result file, split by stage.",
        epilog=WATCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of real images (read only, recursive)"
    )
    parser.add_argument("--count", type=int, default=1000, help="images to drop (default: 1000)")
    parser.add_argument("--backend", default="auto", help="the daemon's --backend (default: auto)")
    parser.add_argument("--precision", default="fp32", help="the daemon's --precision (default: fp32)")
    from edge_runtime.watch_config import WatchConfig

    parser.add_argument(
        "--daemon-batch",
        type=int,
        help=f"the daemon's --batch (default: the daemon's own, {WatchConfig.batch})",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for all results (default: 600)"
    )
    _add_output(parser)
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _decode_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Images per second by decode threads: read + decode + preprocess, alone and with the model.",
        epilog=DECODE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of real images (read only, recursive)"
    )
    parser.add_argument(
        "--workers", type=_csv(int), default=(0, 1, 2, 4), help="decode thread counts (default: 0,1,2,4)"
    )
    parser.add_argument("--count", type=int, default=200, help="images per pass, files cycled (default: 200)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference call (default: 8)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds; medians reported (default: 3)"
    )
    parser.add_argument("--backend", default="auto", help="auto (default) or a backend name, e.g. ort-cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (0: its default)")
    parser.add_argument(
        "--full-size",
        type=_size,
        metavar="WxH",
        help="decode 16-bit PNG copies upscaled to WxH (e.g. 2500x2048, a detector's size) instead of "
        "the files themselves; the shared data set is downsampled",
    )
    _add_output(parser)
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 2500x2048") from exc
    return width, height


RESULT_SUFFIXES = (".json", ".md", ".csv", ".png")


def results_root(value: str) -> Path:
    """``-o``: a folder that gets ``<device>/<date>/`` under it; a file name there is a mistake, caught before the run."""
    path = Path(value)
    if path.suffix.lower() in RESULT_SUFFIXES or path.is_file():
        raise argparse.ArgumentTypeError(
            f"{value}: -o is the results root folder (results go to {value}/<device>/<date>/), "
            "not a file; give a folder such as benchmarks/results"
        )
    return path


def _error(prog: str, exc: Exception) -> int:
    """Print a library error; 2 for a setting out of range (usage), 1 for any other failure."""
    print(f"{prog}: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, BenchConfigError) else 1


def main(argv: list[str], prog: str = "pneumo bench") -> int:
    if argv and argv[0] == "watch":
        return watch_main(argv[1:], prog=f"{prog} watch")
    if argv and argv[0] == "decode":
        return decode_main(argv[1:], prog=f"{prog} decode")
    parser = _bench_parser(prog)
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(args, prog)
    if args.bundle is None and not args.auto:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: give a BUNDLE folder, --auto or --compare A.json B.json", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            return _bench(args, argv, prog)
    except (BenchError, EdgeError) as exc:
        return _error(prog, exc)


def _log(quiet: bool) -> Any:
    def log(message: str) -> None:
        if not quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    return log


def _bench(args: argparse.Namespace, argv: list[str], prog: str) -> int:
    from benchmarks.report import summary_lines, write_report
    from benchmarks.run import BenchConfig, run_benchmark

    log = _log(args.quiet)
    bundle, keras, data, watch_images = args.bundle, args.keras, args.data, args.watch_images
    if args.auto:
        from benchmarks.auto import plan_auto

        plan = plan_auto(Path("."), bundle)
        for note in plan.notes:
            log(note)
        bundle = plan.bundle
        keras = keras or plan.keras
        data = data or plan.data
        watch_images = watch_images or plan.watch_images
    try:
        config = BenchConfig(
            bundle=bundle,
            backends=args.backends,
            precisions=args.precisions,
            batches=args.batch,
            iterations=args.iterations,
            duration_s=args.duration,
            warmup_s=args.warmup,
            end_to_end=not args.no_e2e,
            data=data,
            keras=keras,
            threads=args.threads,
            test_limit=args.test_limit,
            bootstrap=args.bootstrap,
            cold_start_repeats=args.cold_start_repeats,
            trtexec=not args.no_trtexec,
            progress=not args.quiet,
            command=" ".join(shlex.quote(a) for a in ["pneumo", "bench", *argv]),
        )
        watch = _watch_config(config.bundle, watch_images, args.watch_count)
    except BenchConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    document = run_benchmark(config, log=log)
    if watch is not None:
        document["watch"] = _watch_section(watch, document, log, args.quiet)
    written = write_report(document, args.output, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    out = sys.stderr if args.json else sys.stdout
    print("\n".join(summary_lines(document)), file=out)
    print(f"\nwrote {written['json']}\n      {written['markdown']}", file=out)
    for name, path in written.items():
        if name not in ("json", "markdown"):
            print(f"      {path}", file=out)
    print(
        f"next: read {written['markdown']}; compare with another device: "
        f"pneumo bench --compare {written['json']} OTHER/bench.json",
        file=out,
    )
    return 0


def _watch_config(bundle: Path, images: Path | None, count: int) -> WatchBenchConfig | None:
    """The watch part checked before the benchmark, so a bad value costs no benchmark run first."""
    from benchmarks.watch_bench import WatchBenchConfig, source_images

    if images is None:
        return None
    config = WatchBenchConfig(bundle=bundle, images=images, count=count)
    source_images(config.images)  # a missing or empty folder: BenchInputError, exit 1
    return config


def _watch_section(
    watch: WatchBenchConfig, document: dict[str, Any], log: Any, quiet: bool
) -> dict[str, Any] | None:
    from benchmarks.watch_bench import run_watch_bench

    log(f"watch daemon: {watch.count} images from {watch.images}")
    try:
        return run_watch_bench(watch, progress=not quiet)
    except BenchError as exc:
        document["skipped"].append({"backend": "watch", "precision": None, "batch": None, "reason": str(exc)})
        return None


def _compare(args: argparse.Namespace, prog: str) -> int:
    from benchmarks.report import compare, load_bench, render_compare

    try:
        a, b = load_bench(args.compare[0]), load_bench(args.compare[1])
    except BenchError as exc:
        return _error(prog, exc)
    comparison = compare(a, b)
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print(render_compare(comparison), end="")
    return 0


def watch_main(argv: list[str], prog: str = "pneumo bench watch") -> int:
    from benchmarks.device_facts import collect_device_stamp
    from benchmarks.watch_bench import WatchBenchConfig, run_watch_bench, watch_markdown

    args = _watch_parser(prog).parse_args(argv)
    try:
        config = WatchBenchConfig(
            bundle=args.bundle,
            images=args.images,
            count=args.count,
            backend=args.backend,
            precision=args.precision,
            daemon_batch=args.daemon_batch,
            timeout_s=args.timeout,
        )
    except BenchConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            watch = run_watch_bench(config, progress=not args.quiet)
        facts = collect_device_stamp()
    except (BenchError, EdgeError) as exc:
        return _error(prog, exc)
    _publish("watch", argv, args, watch, watch_markdown(watch), facts)
    return 0 if not watch.get("missing") else 1


def decode_main(argv: list[str], prog: str = "pneumo bench decode") -> int:
    from benchmarks.decode_bench import DecodeBenchConfig, decode_markdown, run_decode_bench
    from benchmarks.device_facts import collect_device_stamp

    args = _decode_parser(prog).parse_args(argv)
    try:
        config = DecodeBenchConfig(
            bundle=args.bundle,
            images=args.images,
            workers=args.workers,
            count=args.count,
            batch=args.batch,
            repeats=args.repeats,
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            full_size=args.full_size,
        )
    except BenchConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            result = run_decode_bench(config, log=_log(args.quiet))
        facts = collect_device_stamp()
    except (BenchError, EdgeError) as exc:
        return _error(prog, exc)
    _publish("decode", argv, args, result, decode_markdown(result), facts)
    return 0


def _publish(
    kind: str, argv: list[str], args: argparse.Namespace, result: dict[str, Any], table: list[str], facts: Any
) -> None:
    """Write OUTPUT/<device>/<date>/KIND.json and KIND.md for ``pneumo bench KIND``; show the table."""
    import datetime as _dt

    from benchmarks.report import result_folder
    from edge_runtime.fileio import atomic_write_json, atomic_write_text

    now = _dt.datetime.now(_dt.timezone.utc)
    document = {
        "schema": f"pneumo-bench-{kind}/1",
        "created": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "command": " ".join(shlex.quote(a) for a in ["pneumo", "bench", kind, *argv]),
        "device": facts.to_dict(),
        kind: result,
    }
    folder = result_folder(args.output, document, marker=f"{kind}.json")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{kind}.json", document)
    body = [
        f"# pneumo bench {kind} on {facts.slug}",
        "",
        f"- Command: `{document['command']}`",
        "",
        *table,
        "",
    ]
    atomic_write_text(folder / f"{kind}.md", "\n".join(body))
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    out = sys.stderr if args.json else sys.stdout
    print("\n".join(table), file=out)
    print(f"\nwrote {folder / f'{kind}.json'} and {kind}.md", file=out)
