"""``pneumo edge``: predict, camera, watch, build, doctor.

Each subcommand maps its flags onto a typed config and calls library code,
which raises typed errors; only this module prints and picks exit codes
(0 success, 1 failure named on stderr, 2 usage). Results go to stdout (or
``-o``), logs and progress to stderr. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.backends.base import BACKEND_CHOICES, BACKEND_NAMES, source_onnx_sha256
from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.errors import EdgeError, UsageError

if TYPE_CHECKING:
    from edge_runtime.device import DeviceFacts, PrecisionReadiness
    from edge_runtime.predictor import Prediction

DISCLAIMER = "Decision support for a trained clinician, not a diagnosis."
PRECISION_CHOICES = ("fp32", "fp16", "int8")

EPILOGS = {
    "predict": """examples:
  pneumo edge predict bundles/demo xray.png
  pneumo edge predict bundles/demo scans/ 'more/**/*.jpeg' --backend trt --precision fp16 --batch 16
  pneumo edge predict bundles/demo scans/ --csv -o results.csv
  pneumo edge predict bundles/demo scans/ --csv -o results.csv --overwrite   # replace an earlier results.csv

Folders are searched recursively for images by name (.png, .jpg, .dcm, ...) or, for other names
(IM000001, .jfif), by content; their other files are listed as SKIPPED with the reason (hidden ones,
like .DS_Store, are passed over). Inputs are only read, never changed: -o never replaces an input
nor writes into the bundle, and replaces an existing file only with --overwrite.
Exit status 1 when any input failed (each is named with its reason); a SKIPPED file is no failure.""",
    "camera": """examples:
  pneumo edge camera bundles/demo --source 0                       # USB camera, window with overlay
  pneumo edge camera bundles/demo --source csi://0 --width 1920 --height 1080 --fps 30 --flip 2
  pneumo edge camera bundles/demo --source clip.mp4 --headless --jsonl out/frames.jsonl --snapshot-every 5

Stops cleanly on Ctrl-C or SIGTERM and prints sustained FPS and per-stage latency.""",
    "build": """examples:
  pneumo edge build bundles/demo                                  # all precisions, engines for this device
  pneumo edge build bundles/demo --precision fp16 --batch 1,8 --workspace 1024
  pneumo edge build bundles/demo --precision int8 --dla 0         # AGX Orin / Orin NX DLA core 0
  pneumo edge build bundles/demo --precision all --backend ort-cpu  # no TensorRT: self-test the ONNX models

Engines go to BUNDLE/engines/<device-key>/ with a sidecar and are reused while they match.""",
    "doctor": """examples:
  pneumo edge doctor
  pneumo edge doctor --json > device.json

Only reads device state; changes nothing.""",
}


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a deployment bundle on this device. Results are decision support, not a diagnosis.",
        epilog="Run '%(prog)s <command> --help' for the options and an example of each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "predict",
        help="classify image files, folders and globs",
        description="Classify image files, folders and globs with a bundle: probability, label and decision "
        "per file.",
        epilog=EPILOGS["predict"],
        formatter_class=fmt,
    )
    p.add_argument("bundle", type=Path, help="bundle folder made by 'pneumo export bundle'")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    _backend_flags(p)
    p.add_argument("--batch", type=int, default=8, help="images per inference batch (default 8)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="threads reading and decoding images ahead of the model (default: the cores, at most "
        "4; 0 decodes in the main thread, without overlap)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON on stdout (or -o) instead of a table")
    out.add_argument(
        "--csv",
        action="store_true",
        help="CSV on stdout (or -o) instead of a table; a text cell starting with = + - or @ (a file name "
        "too) gets a leading ' so a spreadsheet shows it as text, never runs it: --json keeps the exact names",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the results to this new file instead of stdout (atomically: a failed write leaves no "
        "partial file); never an input nor a path inside the bundle",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing -o file (an input is refused even so)"
    )

    c = sub.add_parser(
        "camera",
        help="live inference on a camera or video stream",
        description="Live inference on a USB or CSI camera, a video file or an RTSP stream,\n"
        "shown in a window or written as JSON lines.",
        epilog=EPILOGS["camera"],
        formatter_class=fmt,
    )
    c.add_argument("bundle", type=Path, help="bundle folder made by 'pneumo export bundle'")
    c.add_argument(
        "--source",
        required=True,
        help="0 | /dev/video0 | v4l2:///dev/video0 | csi://0 | FILE.mp4 | rtsp://...",
    )
    c.add_argument(
        "--width",
        type=int,
        default=1280,
        help="capture width of a CSI or USB camera in pixels (default 1280; files and streams keep theirs)",
    )
    c.add_argument(
        "--height",
        type=int,
        default=720,
        help="capture height of a CSI or USB camera in pixels (default 720)",
    )
    c.add_argument(
        "--fps", type=int, default=30, help="capture frame rate of a CSI or USB camera (default 30)"
    )
    c.add_argument("--flip", type=int, default=0, help="CSI flip-method 0..7 (2 = rotate 180)")
    c.add_argument("--headless", action="store_true", help="no window: write per-frame JSONL (needs --jsonl)")
    c.add_argument("--jsonl", type=Path, help="append one JSON line per frame to this file")
    c.add_argument(
        "--snapshot-every", type=float, default=0.0, metavar="S", help="save a PNG every S seconds"
    )
    c.add_argument("--snapshot-dir", type=Path, help="where snapshots go (default: JSONL folder/snapshots)")
    c.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: run until stopped)")
    c.add_argument(
        "--realtime", action="store_true", help="play a video file at its own frame rate, like a camera"
    )
    c.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    _backend_flags(c)

    sub.add_parser(
        "watch", help="folder-watch daemon for a clinic inbox (see 'watch --help')", add_help=False
    )

    b = sub.add_parser(
        "build",
        help="verify a bundle, build/reuse engines for this device, golden self-test",
        description="Verify a bundle, build or reuse this device's TensorRT engines and run the golden "
        "self-test.\nThe default, --backend trt, needs TensorRT; without it, --backend ort-cpu builds "
        "nothing\nand runs the same self-test on the bundle's ONNX models.",
        epilog=EPILOGS["build"],
        formatter_class=fmt,
    )
    b.add_argument("bundle", type=Path, help="bundle folder copied onto this device")
    b.add_argument(
        "--precision",
        default="all",
        help="fp32 | fp16 | int8 | a comma list, or all: every precision the bundle has (default all)",
    )
    b.add_argument(
        "--batch",
        default=None,
        help="batch sizes of the optimization profile (default 1,8,32; with --dla one size, default 1)",
    )
    b.add_argument(
        "--workspace",
        type=int,
        default=1024,
        metavar="MiB",
        help="TensorRT workspace limit in MiB (default 1024; a 4 GB Nano needs <= 1024)",
    )
    b.add_argument(
        "--dla", type=int, default=None, metavar="N", help="build for DLA core N with GPU fallback"
    )
    b.add_argument(
        "--backend",
        default="trt",
        choices=BACKEND_NAMES,
        help="trt (default, needs TensorRT): build or reuse engines and self-test them; ort-trt, ort-cuda, "
        "ort-cpu: build nothing, self-test the ONNX models on that ONNX Runtime provider (ort-cpu needs no "
        "TensorRT and no GPU)",
    )
    b.add_argument(
        "--int8-source",
        default="auto",
        choices=("auto", "calibrator", "qdq"),
        help="INT8 on TensorRT 10: auto (default) builds the bundle's Q/DQ model (model_int8_qdq.onnx, the "
        "INT8 graph export measured) and calibrates model.onnx on calibration/calib.npy (or a valid "
        "calibration cache) only when the bundle has no Q/DQ model; calibrator forces TensorRT's entropy "
        "calibrator (scales export never measured; the golden self-test still gates the engine), qdq forces "
        "the Q/DQ model (TensorRT 11 always builds the Q/DQ model)",
    )
    b.add_argument("--rebuild", action="store_true", help="rebuild even when a matching engine exists")
    b.add_argument("--verbose", action="store_true", help="TensorRT builder log at VERBOSE")
    b.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    d = sub.add_parser(
        "doctor",
        help="what this device has and lacks for each precision",
        description="Show what this device has (GPU, TensorRT, ONNX Runtime providers, Jetson facts, cameras, "
        "disk)\nand what each precision lacks here.",
        epilog=EPILOGS["doctor"],
        formatter_class=fmt,
    )
    d.add_argument("--json", action="store_true", help="facts as JSON on stdout")
    d.add_argument(
        "--disk",
        type=Path,
        default=Path("."),
        help="folder whose free disk space to report (default: the current folder)",
    )
    return parser


def _backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        help="auto picks the fastest that loads here: trt > ort-trt > ort-cuda > ort-cpu",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help="which of the bundle's models to run (default fp32); with trt, the engine built for it",
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (0: its default)")
    parser.add_argument(
        "--dla",
        type=int,
        default=None,
        metavar="N",
        help="run the engine built for DLA core N ('pneumo edge build --dla N'; AGX Orin / Orin NX)",
    )


def _error(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None, prog: str = "pneumo edge") -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "watch":
        try:
            # Imported only for this subcommand (written as its own module, with its own deps).
            watch = importlib.import_module("edge_runtime.watch")
        except ImportError as exc:
            return _error(f"{prog} watch", f"the watch daemon is not available ({exc})")
        return int(watch.main(args_list[1:], prog=f"{prog} watch"))
    parser = _parser(prog)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"{prog} {args.command}: %(message)s", stream=sys.stderr)
    command_prog = f"{prog} {args.command}"
    handler = {"predict": _predict, "camera": _camera, "build": _build, "doctor": _doctor}[args.command]
    try:
        return int(handler(args, command_prog))
    except UsageError as exc:
        _error(command_prog, str(exc))
        return 2
    except EdgeError as exc:
        return _error(command_prog, str(exc))


# ----------------------------------------------------------------------------- predict


def _header_lines(info: Any, backend_name: str, precision: str, decimals: int = 3) -> list[str]:
    lines = [
        f"model {info.model_version} ({info.arch}), threshold {info.threshold:.{decimals}f} on "
        f"P({info.positive_label}), "
        f"backend {backend_name} ({precision})",
        DISCLAIMER,
    ]
    if info.synthetic:
        lines.insert(0, f"*** {SYNTHETIC_WARNING} ***")
    return lines


def _predict(args: argparse.Namespace, prog: str) -> int:
    from edge_runtime.backends.select import select_backend
    from edge_runtime.bundle import Bundle
    from edge_runtime.decode_pool import default_workers
    from edge_runtime.predictor import Predictor, predict_files
    from edge_runtime.sources import expand_inputs

    if args.batch < 1:
        print(f"{prog}: --batch must be 1 or more", file=sys.stderr)
        return 2
    if args.workers is not None and not 0 <= args.workers <= 64:
        print(f"{prog}: --workers {args.workers}: expected 0..64 decode threads", file=sys.stderr)
        return 2
    if args.output is not None:
        _require_output_file(args.output)
        _require_outside_bundle(args.output, args.bundle)
    inputs = expand_inputs(args.paths)
    if args.output is not None:
        _require_new_output(args.output, inputs.files, args.overwrite)
    bundle = Bundle.open(args.bundle)
    failures: list[tuple[str, str]] = list(inputs.failures)
    choice = select_backend(bundle, args.backend, args.precision, args.threads, args.dla)
    if args.backend != "auto":  # select_backend logs the auto choice itself
        logging.getLogger(__name__).info("backend %s (%s)", choice.name, choice.precision)
    with choice.backend as backend:
        predictor = Predictor(backend, bundle.info, source_onnx_sha256(bundle, backend))
        workers = default_workers() if args.workers is None else args.workers
        results = predict_files(predictor, inputs.files, bundle.contract, args.batch, workers, failures)
    shown = _Shown(choice.name, args.precision, _shown_decimals(bundle.info.threshold, results))
    text = _format_predictions(args, bundle.info, shown, results, failures, inputs.skipped)
    _write_predictions(text, args.output, prog, len(results), failures)
    return _predict_outcome(prog, bundle.info, shown, results, failures, inputs.skipped)


@dataclass(frozen=True)
class _Shown:
    """How a predict run's results are labelled: the backend, precision and decimals shown."""

    backend: str
    precision: str
    decimals: int


def _shown_decimals(threshold: float, results: Sequence[Prediction]) -> int:
    """Decimals of the threshold and probabilities in the table: 4, or more where 4 would mislead.

    Both are rounded alike, so p >= threshold still reads so; a p just below the threshold can
    round onto it (or the threshold round down past it), and then more decimals tell them apart.
    """
    for decimals in range(4, 17):
        threshold_shown = float(f"{threshold:.{decimals}f}")
        if all(
            (float(f"{r.probability:.{decimals}f}") >= threshold_shown) == (r.decision == "abnormal")
            for r in results
        ):
            return decimals
    return 17


def _probability_text(probability: float, threshold: float, abnormal: bool, decimals: int) -> str:
    """``probability`` with ``decimals`` or more, enough that it reads on its side of the exact threshold."""
    for more in range(decimals, 17):
        text = f"{probability:.{more}f}"
        if (float(text) >= threshold) == abnormal:
            return text
    return f"{probability:.17f}"


def _real(path: Path) -> Path:
    """``path`` with its symbolic links resolved; a link loop, which names no file, as it is."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError on a loop, 3.13 OSError
        return path.absolute()


def _is_one_of(output: Path, files: Sequence[Path]) -> bool:
    target = _real(output)
    return any(target == _real(f) for f in files)


def _require_outside_bundle(output: Path, bundle: Path) -> None:
    """-o may not land in the bundle: an added file makes every later verification of it fail."""
    root = _real(bundle)
    # The rename puts the file in -o's real folder; a link named -o is replaced, but refused too.
    written = (_real(output.parent) / output.name, _real(output))
    if any(path.is_relative_to(root) for path in written):
        raise UsageError(
            f"-o {output}: is inside the bundle {bundle}, which holds only the files its manifest lists (a file "
            f"added there makes every later 'pneumo edge predict' and 'pneumo edge build' of it fail); write the "
            f"results outside the bundle, e.g. -o {root.parent / output.name}"
        )


def _require_new_output(output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """-o is a new file, or with --overwrite an existing file that is not one of the inputs."""
    if _is_one_of(output, inputs):
        raise UsageError(
            f"-o {output}: is one of the inputs; refusing to overwrite an input, even with --overwrite: "
            f"choose another -o, e.g. -o {output.with_name('results.csv')}"
        )
    if os.path.lexists(output) and not output.is_file():
        raise UsageError(f"-o {output}: exists and is not a file; choose another -o")
    if os.path.lexists(output) and not overwrite:
        raise UsageError(f"-o {output}: exists; pass --overwrite to replace it")


def _write_predictions(
    text: str, output: Path | None, prog: str, count: int, failures: list[tuple[str, str]]
) -> None:
    """To ``-o`` atomically, or stdout; results that cannot be written go to stdout and count as failed."""
    if output is None:
        sys.stdout.write(text)
        return
    from edge_runtime.fileio import atomic_write_text

    try:
        atomic_write_text(output, text)
        print(f"{prog}: wrote {count} results to {output}", file=sys.stderr)
    except OSError as exc:
        # The images are classified; losing the results to a full disk helps nobody.
        print(
            f"{prog}: cannot write {output} ({exc.strerror or exc}); the results follow on stdout",
            file=sys.stderr,
        )
        sys.stdout.write(text)
        failures.append((str(output), f"results not written: {exc.strerror or exc}"))


def _predict_outcome(
    prog: str,
    info: Any,
    shown: _Shown,
    results: list[Prediction],
    failures: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
) -> int:
    """Name every failure, summarise on stderr and pick the exit status (a skipped file is no failure)."""
    for name, reason in failures:
        print(f"{prog}: FAILED {name}: {reason}", file=sys.stderr)
    abnormal = sum(1 for r in results if r.decision == "abnormal")
    # The summary may be all a terminal shows (results in -o or piped on): it says what decided them.
    warning = f" *** {SYNTHETIC_WARNING} ***" if info.synthetic else ""
    print(
        f"{prog}: {len(results)} images classified ({abnormal} abnormal, {len(results) - abnormal} normal), "
        f"{len(failures)} failed; model {info.model_version}, threshold {info.threshold:.{shown.decimals}f} "
        f"on P({info.positive_label}){warning}",
        file=sys.stderr,
    )
    if skipped:
        names = ", ".join(name for name, _ in skipped[:3]) + (
            f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        )
        print(
            f"{prog}: {len(skipped)} files not read: {names} (not images; SKIPPED in the results, each with "
            "its reason)",
            file=sys.stderr,
        )
    if failures:
        return 1
    if not results:
        print(f"{prog}: no images given", file=sys.stderr)
        return 1
    return 0


def _require_output_file(path: Path) -> None:
    """-o must name a file in an existing, writable folder: checked before any inference runs."""
    try:
        is_folder = path.is_dir()
    except OSError as exc:  # Path.is_dir lets ENAMETOOLONG and EACCES through
        raise UsageError(
            f"-o {path}: cannot be used as a file name ({exc.strerror}); choose a shorter or reachable path"
        ) from exc
    if is_folder:
        raise UsageError(f"-o {path}: is a folder; give a file name, e.g. {path / 'results.csv'}")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"-o {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"-o {path}: folder {folder} is not writable; choose another place")


# The CSV of ``predict``; the watch daemon's results.csv has its own (edge_runtime.results).
_PREDICTION_CSV_COLUMNS = (
    "file",
    "probability",
    "label",
    "decision",
    "threshold",
    "latency_ms",
    "model_version",
    "backend",
    "precision",
    "input_sha256",
    "synthetic",
    "error",
    "note",
)

# The decision of a file in a folder that was not read because it is not an image.
SKIPPED = "SKIPPED"


def _format_predictions(
    args: argparse.Namespace,
    info: Any,
    shown: _Shown,
    results: list[Prediction],
    failures: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
) -> str:
    if args.json:
        return _predictions_json(info, shown, results, failures, skipped)
    if args.csv:
        return _predictions_csv(info, shown, results, failures, skipped)
    return _predictions_table(info, shown, results, failures, skipped)


def _predictions_json(
    info: Any,
    shown: _Shown,
    results: list[Prediction],
    failures: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
) -> str:
    document = {
        "model_version": info.model_version,
        "threshold": info.threshold,
        "backend": shown.backend,
        "precision": shown.precision,
        "intended_use": info.intended_use,
        "note": DISCLAIMER,
        "synthetic": info.synthetic,
        **({"warning": SYNTHETIC_WARNING} if info.synthetic else {}),
        "results": [r.to_dict() for r in results],
        "failures": [{"source": name, "error": reason} for name, reason in failures],
        "skipped": [{"source": name, "reason": reason} for name, reason in skipped],
    }
    return json.dumps(document, indent=2) + "\n"


def _predictions_csv(
    info: Any,
    shown: _Shown,
    results: list[Prediction],
    failures: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
) -> str:
    from edge_runtime.results import spreadsheet_text

    # Every row carries the note (and the SYNTHETIC warning): a CSV row is read alone, in a spreadsheet.
    note = f"{SYNTHETIC_WARNING} {DISCLAIMER}" if info.synthetic else DISCLAIMER
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_PREDICTION_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    # file names, model versions and reasons are text a spreadsheet must not run as formulas
    for r in results:
        writer.writerow(
            {
                "file": spreadsheet_text(r.source),
                "probability": _probability_text(r.probability, r.threshold, r.decision == "abnormal", 6),
                "label": r.label,
                "decision": r.decision,
                "threshold": r.threshold,
                "latency_ms": r.latency_ms,
                "model_version": spreadsheet_text(r.model_version),
                "backend": r.backend,
                "precision": r.precision,
                "input_sha256": r.input_sha256,
                "synthetic": r.synthetic,
                "error": "",
                "note": note,
            }
        )
    for decision, name, reason in _unread(failures, skipped):
        writer.writerow(
            {
                "file": spreadsheet_text(name),
                "decision": decision,
                "threshold": info.threshold,
                "model_version": spreadsheet_text(info.model_version),
                "backend": shown.backend,
                "precision": shown.precision,
                "synthetic": info.synthetic,
                "error": spreadsheet_text(reason),
                "note": note,
            }
        )
    return buffer.getvalue()


def _unread(failures: list[tuple[str, str]], skipped: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(decision, file, reason) of each file without a result: the failed ones, then the skipped ones."""
    return [("FAILED", name, reason) for name, reason in failures] + [
        (SKIPPED, name, reason) for name, reason in skipped
    ]


def _predictions_table(
    info: Any,
    shown: _Shown,
    results: list[Prediction],
    failures: list[tuple[str, str]],
    skipped: list[tuple[str, str]],
) -> str:
    decimals = shown.decimals
    rows = [
        [r.source, f"{r.probability:.{decimals}f}", r.label, r.decision, f"{r.latency_ms:.2f}"]
        for r in results
    ]
    unread = _unread(failures, skipped)
    rows += [[name, "-", "-", decision, "-"] for decision, name, _ in unread]
    reasons = "".join(f"{decision} {name}: {reason}\n" for decision, name, reason in unread)
    return (
        "\n".join(_header_lines(info, shown.backend, shown.precision, decimals))
        + "\n\n"
        + _table(
            ["file", "probability", "label", f"decision@{info.threshold:.{decimals}f}", "latency_ms"], rows
        )
        + (f"\n{reasons}" if reasons else "")
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = (
        [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
        if rows
        else [len(h) for h in headers]
    )
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- camera


def _camera_config(args: argparse.Namespace) -> Any:
    from edge_runtime.camera import CameraConfig
    from edge_runtime.errors import CameraError

    try:
        return CameraConfig(
            source=args.source,
            width=args.width,
            height=args.height,
            fps=args.fps,
            flip=args.flip,
            headless=args.headless,
            jsonl=args.jsonl,
            snapshot_every_s=args.snapshot_every,
            snapshot_dir=args.snapshot_dir,
            max_frames=args.max_frames,
            realtime=args.realtime,
        )
    except CameraError as exc:  # the config's own range checks: a usage error
        raise UsageError(str(exc)) from exc


def _camera(args: argparse.Namespace, prog: str) -> int:
    from edge_runtime.backends.select import select_backend
    from edge_runtime.bundle import Bundle
    from edge_runtime.camera import Window, open_capture, run_camera
    from edge_runtime.predictor import Predictor
    from edge_runtime.sources import parse_camera_source

    config = _camera_config(args)
    source = parse_camera_source(args.source)
    window = None if args.headless else Window(config.window_title)
    bundle = Bundle.open(args.bundle)
    choice = select_backend(bundle, args.backend, args.precision, args.threads, args.dla)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        print(f"{prog}: {signal.Signals(signum).name} received, stopping after this frame", file=sys.stderr)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        capture = open_capture(source, config)
        print(
            f"{prog}: {source.describe()} -> {choice.name} ({args.precision}); Ctrl-C to stop",
            file=sys.stderr,
        )
        for line in _header_lines(bundle.info, choice.name, args.precision):
            print(f"{prog}: {line}", file=sys.stderr)
        with choice.backend as backend:
            predictor = Predictor(backend, bundle.info, source_onnx_sha256(bundle, backend))
            summary = run_camera(capture, predictor, bundle.contract, config, stop, source.describe(), window)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    rows = [
        [stage, f"{v['mean_ms']:.2f}", f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}"]
        for stage, v in summary.stages.items()
    ]
    print(
        f"{prog}: {summary.frames} frames in {summary.seconds:.1f} s = {summary.fps:.1f} FPS sustained "
        f"({summary.stop_reason})\n" + _table(["stage", "mean_ms", "p50_ms", "p95_ms"], rows).rstrip(),
        file=sys.stderr,
    )
    if summary.jsonl:
        print(
            f"{prog}: per-frame results in {summary.jsonl}"
            + (f", {len(summary.snapshots)} snapshots" if summary.snapshots else ""),
            file=sys.stderr,
        )
    return 0


# ----------------------------------------------------------------------------- build


def _build(args: argparse.Namespace, prog: str) -> int:
    from edge_runtime.errors import EngineBuildError

    try:
        config = _build_config(args)
    except EngineBuildError as exc:  # a flag out of range, found by the config's own checks
        raise UsageError(str(exc)) from exc
    return _run_build(args, prog, config)


def _build_config(args: argparse.Namespace) -> Any:
    from edge_runtime.edge_build import EdgeBuildConfig, parse_precisions

    return EdgeBuildConfig(
        precisions=parse_precisions(args.precision),
        only_in_bundle=args.precision.strip() == "all",
        batch_sizes=args.batch if args.batch is not None else (),
        workspace_mib=args.workspace,
        dla_core=args.dla,
        backend=args.backend,
        int8_source=args.int8_source,
        rebuild=args.rebuild,
        verbose=args.verbose,
    )


def _run_build(args: argparse.Namespace, prog: str, config: Any) -> int:
    from edge_runtime.edge_build import run_edge_build

    report = run_edge_build(
        args.bundle, config, progress=lambda message: print(f"{prog}: {message}", file=sys.stderr)
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    rows = []
    for r in report.results:
        rows.append(
            [
                r.precision,
                r.backend,
                r.engine_action,
                "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
                "-" if r.tolerance is None else f"{r.tolerance:.0e}",
                "-" if r.decision_agreement is None else f"{100 * r.decision_agreement:.1f}%",
                "-" if r.accuracy is None else f"{100 * r.accuracy:.1f}%",
                r.status.upper(),
            ]
        )
    banner = f"*** {SYNTHETIC_WARNING} ***\n" if report.synthetic else ""
    out = sys.stderr if args.json else sys.stdout
    print(
        f"{banner}golden self-test of {report.bundle} (model {report.model_version}"
        + (f", device {report.device_key}" if report.device_key else "")
        + ")\n"
        + _table(
            ["precision", "backend", "engine", "max|diff|", "tolerance", "agreement", "accuracy", "result"],
            rows,
        ),
        file=out,
        end="",
    )
    for r in report.results:
        if r.status != "pass":
            print(f"{prog}: {r.precision} {r.status.upper()}: {r.message}", file=sys.stderr)
    if report.passed:
        best = report.results[-1].precision
        backend = "trt" if args.backend == "trt" else args.backend
        dla = f" --dla {args.dla}" if args.dla is not None else ""
        print(
            f"next: pneumo edge predict {shlex.quote(str(args.bundle))} IMAGES... --backend {backend} "
            f"--precision {best}{dla}",
            file=sys.stderr,
        )
        return 0
    return 1


# ----------------------------------------------------------------------------- doctor


def _doctor(args: argparse.Namespace, prog: str) -> int:
    from edge_runtime.device import collect_device_facts, precision_readiness

    facts = collect_device_facts(disk_path=args.disk)
    readiness = precision_readiness(facts)
    if args.json:
        print(json.dumps(_doctor_document(facts, readiness), indent=2))
        return 0
    print(_table(["item", "this device"], _gpu_rows(facts) + _platform_rows(facts)), end="")
    print()
    _print_readiness(readiness)
    if facts.opencv_backends and not facts.opencv_backends.get("gstreamer"):
        print(
            "note: this OpenCV has no GStreamer, so CSI cameras (csi://N) will not open; USB cameras work via V4L2. "
            "On a Jetson use JetPack's OpenCV through a --system-site-packages venv (deploy/JETSON.md)."
        )
    print(
        f"next: pneumo edge build BUNDLE --precision {'all' if readiness[0].tensorrt_ready else 'all --backend ort-cpu'}",
        file=sys.stderr,
    )
    return 0


def _doctor_document(facts: DeviceFacts, readiness: list[PrecisionReadiness]) -> dict[str, Any]:
    """``doctor --json``: the device facts plus what each precision needs here."""
    document = facts.to_dict()
    document["precisions"] = [
        {
            "precision": r.precision,
            "tensorrt_ready": r.tensorrt_ready,
            "missing": list(r.missing),
            "onnxruntime_fallback": r.onnxruntime_fallback,
            "notes": list(r.notes),
            "fixes": list(r.fixes),
        }
        for r in readiness
    ]
    return document


def _shown(value: Any, missing: str = "not found") -> str:
    """A fact as text, or what its absence means on this device."""
    if value is None or value == [] or value == {}:
        return missing
    return str(value)


def _gpu_rows(facts: DeviceFacts) -> list[list[str]]:
    """Doctor rows for the GPU and the runtimes that use it."""
    rows = [
        [
            "GPU",
            _shown(
                facts.gpu_name
                and f"{facts.gpu_name} (compute {facts.compute_capability}, "
                f"{facts.gpu_memory_mib} MiB, via {facts.gpu_source})",
                facts.gpu_error or "none found",
            ),
        ],
        ["TensorRT", _shown(facts.tensorrt_version, facts.tensorrt_error or "not installed")],
        ["pycuda", _shown(facts.pycuda_version, facts.pycuda_error or "not installed")],
        [
            "CUDA",
            f"driver {_shown(facts.cuda_driver_version, '?')}, toolkit {_shown(facts.cuda_toolkit_version, '?')}",
        ],
        ["DLA cores", _shown(facts.dla_cores, "unknown (needs TensorRT and a GPU)")],
        [
            "ONNX Runtime",
            f"{_shown(facts.onnxruntime_version, 'not installed')}; loads: "
            f"{', '.join(facts.onnxruntime_providers) or 'nothing'}",
        ],
    ]
    return rows + [["  not loading", f"{name}: {why}"] for name, why in facts.onnxruntime_failed.items()]


def _platform_rows(facts: DeviceFacts) -> list[list[str]]:
    """Doctor rows for the board, its resources, cameras and OpenCV."""
    return [
        ["Jetson", _shown(facts.jetson_model, "not a Jetson (no /proc/device-tree/model)")],
        [
            "L4T / JetPack",
            f"{_shown(facts.l4t_release, 'no /etc/nv_tegra_release')}"
            + (f" ({facts.jetpack})" if facts.jetpack else ""),
        ],
        ["power mode", _shown(facts.power_mode, "nvpmodel not present")],
        ["disk free", f"{_shown(facts.disk_free_mib, '?')} MiB at {facts.disk_path}"],
        [
            "memory",
            f"{_shown(facts.memory_available_mib, '?')} MiB available of {_shown(facts.memory_total_mib, '?')} MiB",
        ],
        ["cameras", _shown(facts.cameras and ", ".join(facts.cameras), "none (/dev/video*)")],
        [
            "OpenCV",
            f"{_shown(facts.opencv_version, 'not installed')}; capture: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in facts.opencv_backends.items())
            + f"; GUI {'yes' if facts.opencv_gui else 'NO (headless build: use --headless)'}",
        ],
        ["engine key", _shown(facts.device_key, "needs TensorRT + pycuda + GPU")],
    ]


def _print_readiness(readiness: list[PrecisionReadiness]) -> None:
    """Per precision: whether a TensorRT engine can be built here, the fixes and notes."""
    rows = []
    for r in readiness:
        status = "ready" if r.tensorrt_ready else "missing: " + ", ".join(r.missing)
        rows.append([r.precision, status, r.onnxruntime_fallback])
    print(_table(["precision", "TensorRT engine", "ONNX Runtime fallback"], rows), end="")
    for fix in dict.fromkeys(f for r in readiness for f in r.fixes):
        print(f"to fix: {fix}")
    for r in readiness:
        for note in r.notes:
            print(f"note ({r.precision}): {note}")
