"""``pneumo data``: check a data folder, show how it would be split, or make SYNTHETIC phantoms.

Exit codes: 0 success (``check``: the data is usable, warnings only), 1 a
failure or unusable data (the message or report on stdout/stderr says which
file and what to do), 2 a usage error; :func:`train.command.run_command` maps
errors to them as for every train subcommand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.fileio import atomic_write_json
from train.command import run_command
from train.config import LABEL_MODES, RANDOM_POOLS, SOURCES, SPLIT_MODES

if TYPE_CHECKING:
    from train.data import DataConfig

EPILOG = """examples:
  pneumo data check ../shared/data/chest_xray -o data_check.json
  pneumo data check my_xrays/ --json > report.json
  pneumo data split ../shared/data/chest_xray                 # patient-wise split summary
  pneumo data split ../shared/data/chest_xray --split-mode random   # seed 000's leaky split of train/
  pneumo data split ../shared/data/chest_xray --split-mode random --random-pool all
  pneumo data synth demo/synthetic --per-class 160 --seed 0

Nothing is ever modified or deleted in a data folder."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a chest X-ray folder, show its patient-wise split, or make SYNTHETIC phantoms.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{check,split,synth}")

    check = sub.add_parser(
        "check",
        help="decode every file and report problems, duplicates, counts and image sizes",
        description=(
            "Decode every file with the runtime's decoder and report unreadable, truncated, non-image, "
            "wrong-extension, 16-bit, alpha, palette, tiny and huge files, exact duplicates (and whether a "
            "group crosses splits), counts and patients per split and class, and the size / aspect "
            "distribution per split and MANIFEST source. Exit 0 when the data is usable (warnings only), "
            "1 when files are unreadable or the layout is broken. Never modifies or deletes anything."
        ),
        epilog="example:\n  pneumo data check ../shared/data/chest_xray -o data_check.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("root", type=Path, help="data folder: ROOT/{train,val,test}/{CLASS}/ or ROOT/{CLASS}/")
    check.add_argument("-o", "--output", type=Path, help="write the full JSON report (every file) here")
    check.add_argument(
        "--json", action="store_true", help="print the JSON report (without the per-file list) on stdout"
    )
    check.add_argument("--workers", type=_positive_int, default=2, help="decoding threads (default 2)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    check.set_defaults(func=_check)

    split = sub.add_parser(
        "split",
        help="show the train/val/test split training would use (counts, patients, overlap)",
        description="Discover ROOT and split it like `pneumo train` does; print the summary and notes.",
        epilog="examples:\n  pneumo data split ../shared/data/chest_xray -o split.json\n"
        "  pneumo data split ../shared/data/chest_xray --split-mode random",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    split.add_argument("root", type=Path, help="data folder")
    split.add_argument(
        "--label-mode",
        choices=LABEL_MODES,
        default="binary",
        help="binary: the class folders (default); kind: NORMAL / BACTERIA / VIRUS from the file names",
    )
    split.add_argument(
        "--split-mode",
        choices=SPLIT_MODES,
        default="patient",
        help="patient (default): validation carved from the train pool by patient; random: seed 000's "
        "leaky image-by-image 70/20/10 split ('pneumo train --split')",
    )
    split.add_argument(
        "--random-pool",
        choices=RANDOM_POOLS,
        default=None,
        help="random mode: shuffle the official train folder alone ('train', default, as seed 000 did) or "
        "the train, val and test folders together ('all')",
    )
    split.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of the train pool carved out for validation, patient mode only (default 0.1)",
    )
    split.add_argument(
        "--sources",
        choices=SOURCES,
        default="all",
        help="all (default), or original: train and validate only on the checksum-verified originals",
    )
    split.add_argument(
        "--undersample", action="store_true", help="undersample the majority class(es) in train"
    )
    split.add_argument(
        "--exclude-test-patients", action="store_true", help="drop train images of patients that are in test"
    )
    split.add_argument(
        "--max-per-class",
        type=_positive_int,
        default=None,
        help="cap images per class per split, a seeded choice (default: no cap)",
    )
    split.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split (default 0); 'pneumo train' calls it --split-seed (without one, train "
        "splits with its --seed)",
    )
    split.add_argument("-o", "--output", type=Path, help="write split.json (every sample) here")
    split.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    split.set_defaults(func=_split)

    synth = sub.add_parser(
        "synth",
        help="write SYNTHETIC phantom images (not X-rays) in the data set's layout",
        description=(
            "Write procedural phantom 'chest' images with a learnable pneumonia-like signal as JPEGs in "
            "OUT/{train,val,test}/{NORMAL,PNEUMONIA}/ (or OUT/{CLASS}/ with --layout flat), with "
            "Kermany-like patient file names, a README.txt and a SYNTHETIC.json marker. Deterministic for "
            "a seed. " + SYNTHETIC_WARNING
        ),
        epilog="example:\n  pneumo data synth demo/synthetic --per-class 160 --seed 0\n"
        "  pneumo train --data demo/synthetic --out runs/synthetic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("out", type=Path, help="new or empty output folder")
    synth.add_argument(
        "--per-class", type=_positive_int, default=160, help="images per class, all splits (default 160)"
    )
    synth.add_argument("--size", type=_positive_int, default=256, help="image height in pixels (default 256)")
    synth.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed (default 0): the same seed and settings, the same bytes",
    )
    synth.add_argument(
        "--layout",
        choices=("split", "flat"),
        default="split",
        help="split: OUT/{train,val,test}/{CLASS}/ (default); flat: OUT/{CLASS}/",
    )
    synth.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    synth.set_defaults(func=_synth)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str], prog: str = "pneumo data") -> int:
    """``pneumo data {check,split,synth} ...``; the exit code (train.command.run_command maps errors)."""
    parser = build_parser(prog)

    def command(args: argparse.Namespace) -> int:
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args))

    return run_command(prog, parser, argv, command)


def _check(args: argparse.Namespace) -> int:
    from train.checks import check_folder, format_report

    report = check_folder(args.root, workers=args.workers, progress=not args.no_progress)
    full = report.to_dict()
    if args.output:
        atomic_write_json(args.output, full)
    if args.json:
        print(json.dumps({k: v for k, v in full.items() if k != "files"}, indent=2, sort_keys=True))
    else:
        print(format_report(report))
        if args.output:
            print(f"full report: {args.output}")
    return 0 if report.usable else 1


def _split(args: argparse.Namespace) -> int:
    from train.config import check_split_options
    from train.data import DataConfig, make_splits

    given = {"val_fraction": args.val_fraction, "random_pool": args.random_pool}
    check_split_options(
        {"split_mode": args.split_mode, **given}, "flags", set(given), split_flag="--split-mode"
    )
    config = DataConfig(
        root=args.root,
        label_mode=args.label_mode,
        split_mode=args.split_mode,
        **{name: value for name, value in given.items() if value is not None},
        sources=args.sources,
        undersample=args.undersample,
        exclude_test_patients=args.exclude_test_patients,
        max_per_class=args.max_per_class,
        seed=args.seed,
    )
    splits = make_splits(config)
    if args.output:
        splits.save(args.output)
    summary = splits.summary()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(_format_split(summary))
    if args.output:
        print(f"split written: {args.output}")
    print(f"next: {_train_command(config, summary['root'])}")
    return 0


def _train_command(config: DataConfig, root: str) -> str:
    """The ``pneumo train`` line that splits ROOT as shown: the split mode and seed always, other options when set."""
    from train.data import DataConfig

    default = DataConfig(root=config.root)
    words = ["pneumo", "train", "--data", root, "--out", "runs/NAME"]
    words += ["--split", config.split_mode, "--split-seed", str(config.seed)]
    if config.label_mode != default.label_mode:
        words += ["--label-mode", config.label_mode]
    if config.split_mode == "random" and config.random_pool != default.random_pool:
        words += ["--random-pool", config.random_pool]
    if config.val_fraction != default.val_fraction:
        words += ["--val-fraction", f"{config.val_fraction:g}"]
    if config.sources != default.sources:
        words += ["--sources", config.sources]
    if config.undersample:
        words.append("--undersample")
    if config.exclude_test_patients:
        words.append("--exclude-test-patients")
    if config.max_per_class is not None:
        words += ["--max-per-class", str(config.max_per_class)]
    return " ".join(shlex.quote(word) for word in words)


def _format_split(summary: dict[str, Any]) -> str:
    labels = summary["labels"]
    head = (
        f"{'split':<6} "
        + " ".join(f"{label:>10}" for label in labels)
        + f" {'images':>7} {'patients':>9}  sources"
    )
    lines = [f"{summary['split_mode']} split of {summary['root']} ({summary['label_mode']} labels)", "", head]
    for name, part in summary["splits"].items():
        per_class = " ".join(f"{part['per_class'][label]:>10}" for label in labels)
        sources = ", ".join(f"{k} {v}" for k, v in part["sources"].items())
        lines.append(f"{name:<6} {per_class} {part['images']:>7} {part['patients']:>9}  {sources}")
    lines.append("")
    lines.append(
        "patients shared: "
        + "; ".join(f"{pair} {v['patients']}" for pair, v in summary["patient_overlap"].items())
    )
    lines += ["", "notes:"] + [f"  - {note}" for note in summary["notes"]]
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from train.synth import SynthConfig, generate

    config = SynthConfig(per_class=args.per_class, size=args.size, seed=args.seed, layout=args.layout)
    result = generate(args.out, config)
    if args.json:
        payload = {
            "root": str(result.root),
            "synthetic": True,
            "warning": SYNTHETIC_WARNING,
            "files": result.files,
            "reused": result.reused,
            "counts": result.counts,
            "params": asdict(config),
        }
        print(json.dumps(payload, indent=2, sort_keys=True))
        return 0
    verb = "already holds" if result.reused else "wrote"
    print(f"{verb} {result.files} SYNTHETIC phantom images (not X-rays) in {result.root}")
    for split, per_class in result.counts.items():
        counts = ", ".join(f"{label} {n}" for label, n in per_class.items())
        print(f"  {split or '(flat)'}: {counts}")
    print(SYNTHETIC_WARNING)
    print(f"next: pneumo train --data {result.root} --out runs/synthetic")
    return 0
