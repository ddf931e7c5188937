"""``pneumo export``: onnx, calib, bundle, engine.

Flags -> a typed config (:mod:`export.config`) -> library functions, which
raise typed errors; only this module prints, and picks the exit code: 0 ok,
1 a failure (named on stderr with the fix), 2 a usage error (a malformed command
line, or a value out of range: :class:`export.errors.ExportConfigError`). Logs and step
lines go to stderr; ``--json`` puts the machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.contract import SYNTHETIC_WARNING, PreprocessContract
from edge_runtime.errors import EdgeError
from export.config import (
    DEFAULT_CALIBRATION_IMAGES,
    PRECISIONS,
    BundleConfig,
    CalibrationConfig,
    GoldenConfig,
    OnnxConfig,
    QuantConfig,
)
from export.errors import EngineUnavailableError, ExportConfigError, ExportError, OutputExistsError

if TYPE_CHECKING:
    from export.calibration import CalibrationSet

DESCRIPTION = """Convert a trained Keras model for the edge, and pack the bundle a Jetson builds its engine from.

examples:
  pneumo export bundle runs/demo -o bundles/demo                # everything: ONNX, FP16, INT8 Q/DQ, checks
  pneumo export bundle runs/demo -o bundles/demo --tar --precisions fp32,fp16
  pneumo export onnx runs/demo -o model.onnx --opset 17          # one ONNX file, parity-checked vs Keras
  pneumo export calib runs/demo -o calibration/ --calib-size 512 # INT8 calibration set (training split)
  pneumo export engine bundles/demo/model.onnx --precision fp16 -o model.engine   # where TensorRT is installed
"""


def main(argv: Sequence[str], prog: str = "pneumo export") -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _parser(prog)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return int(args.handler(args))
    except (ExportError, EdgeError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ExportConfigError) else 1


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{onnx,calib,bundle,engine}")
    _add_onnx_command(sub)
    _add_calib_command(sub)
    _add_bundle_command(sub)
    _add_engine_command(sub)
    return parser


def _add_onnx_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pneumo export onnx``: one ONNX file, parity-checked against Keras."""
    onnx = sub.add_parser(
        "onnx",
        help="Keras .h5 -> ONNX (uint8 in, scaling inside), parity-checked vs Keras",
        description="Convert a run's model.h5 to ONNX and check it against Keras on real test images.\n"
        "Writes the ONNX file and export_report.json beside it (--report to put the report elsewhere).\n\n"
        "example:\n  pneumo export onnx runs/demo -o model.onnx --opset 17",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    onnx.add_argument(
        "source", type=Path, metavar="RUN_OR_H5", help="run folder, or a .h5 with contract.json beside it"
    )
    onnx.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    _onnx_flags(onnx)
    onnx.add_argument(
        "--data", type=Path, help="data root (where split.json's images now are, or ROOT/test/CLASS/)"
    )
    onnx.add_argument(
        "--report", type=Path, help="export report path (default: export_report.json beside -o)"
    )
    onnx.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing -o, and a report this command wrote (never another file)",
    )
    onnx.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    onnx.set_defaults(handler=_cmd_onnx)


def _add_calib_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pneumo export calib``: the INT8 calibration set on its own."""
    calib = sub.add_parser(
        "calib",
        help="INT8 calibration set: class-balanced training images -> calib.npy + calib.json",
        description="Sample the INT8 calibration set from the run's training split (never test).\n\n"
        "example:\n  pneumo export calib runs/demo -o calibration/ --calib-size 512",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calib.add_argument("source", type=Path, metavar="RUN", help="run folder with split.json")
    calib.add_argument("-o", "--output", type=Path, required=True, help="folder for calib.npy and calib.json")
    _calib_flags(calib)
    calib.add_argument("--data", type=Path, help="data root, when the data set moved since training")
    calib.add_argument("--overwrite", action="store_true", help="replace an existing calibration set in -o")
    calib.add_argument("--json", action="store_true", help="print calib.json on stdout")
    calib.set_defaults(handler=_cmd_calib)


def _add_bundle_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pneumo export bundle``: the whole deployment bundle."""
    bundle = sub.add_parser(
        "bundle",
        help="the whole deployment bundle: ONNX, FP16, INT8 Q/DQ, calibration, golden set, manifest",
        description="Make the folder a technician copies onto a Jetson, with every check.\n\n"
        "example:\n  pneumo export bundle runs/demo -o bundles/demo --tar\n"
        "  then on the Jetson: pneumo edge build bundles/demo --precision fp16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle.add_argument("source", type=Path, metavar="RUN", help="run folder written by 'pneumo train'")
    bundle.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create")
    bundle.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma list of fp32,fp16,int8 (default: all three)"
    )
    _onnx_flags(bundle)
    _calib_flags(bundle)
    bundle.add_argument(
        "--golden", type=int, default=GoldenConfig.size, help="golden test images (default 32)"
    )
    bundle.add_argument("--data", type=Path, help="data root, when the data set moved since training")
    bundle.add_argument("--eval-limit", type=int, help="test images for the accuracy table (default: all)")
    bundle.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (default 1000)"
    )
    _int8_flags(bundle)
    bundle.add_argument("--tar", action="store_true", help="also write BUNDLE.tar.gz beside the folder")
    bundle.add_argument("--overwrite", action="store_true", help="replace an existing bundle at -o")
    bundle.add_argument("--json", action="store_true", help="print the export report as JSON on stdout")
    bundle.set_defaults(handler=_cmd_bundle)


def _add_engine_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pneumo export engine``: a TensorRT engine where TensorRT is installed."""
    engine = sub.add_parser(
        "engine",
        help="TensorRT engine from ONNX (needs TensorRT: on the Jetson prefer 'pneumo edge build')",
        description="Build a TensorRT engine where TensorRT is installed. Engines only run on the GPU and "
        "TensorRT version that built them; on a Jetson, 'pneumo edge build BUNDLE' does this for a bundle.\n\n"
        "examples:\n  pneumo export engine bundles/demo/model.onnx --precision int8 -o model.engine"
        "   # builds model_int8_qdq.onnx\n"
        "  pneumo export engine bundles/demo/model.onnx --precision int8 --int8-source calibrator "
        "--calib bundles/demo/calibration -o model.engine   # TensorRT 10 only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    engine.add_argument(
        "onnx", type=Path, metavar="MODEL_ONNX", help="model.onnx (FP16 / Q/DQ siblings are used)"
    )
    engine.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="engine file to write: outside any bundle, or under a bundle's engines/ folder",
    )
    engine.add_argument(
        "--precision",
        choices=(*PRECISIONS, "best"),
        default="fp16",
        help="engine precision: fp32, fp16 (default) or int8; best: int8 when model_int8_qdq.onnx is "
        "beside MODEL_ONNX or --calib / --calib-cache is given, else fp16",
    )
    source = engine.add_mutually_exclusive_group()
    source.add_argument("--calib", type=Path, help="calibration folder (calib.npy) for INT8")
    source.add_argument("--calib-cache", type=Path, help="TensorRT calibration cache to reuse for INT8")
    engine.add_argument(
        "--int8-source",
        choices=("auto", "calibrator", "qdq"),
        default="auto",
        help="where INT8 scales come from on TensorRT 10: auto (default) builds model_int8_qdq.onnx when it "
        "is beside MODEL_ONNX (the INT8 graph export measured), else runs the calibrator when --calib or a "
        "valid calibration cache (--calib-cache, or calib_int8.cache beside -o) is at hand; calibrator or "
        "qdq forces one (TensorRT 11 always builds the Q/DQ model)",
    )
    engine.add_argument(
        "--batch",
        default=None,
        help="batch sizes of the optimization profile (default 1,8,32; with --dla one size, default 1)",
    )
    engine.add_argument("--workspace", type=int, default=1024, help="builder workspace in MiB (default 1024)")
    engine.add_argument("--dla", type=int, help="DLA core, with GPU fallback (AGX Orin, Orin NX)")
    engine.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated")
    engine.add_argument(
        "--allow-unchecked-calib",
        action="store_true",
        help="use a --calib set whose calib.json does not record that the run's test split was kept out of it",
    )
    engine.add_argument(
        "--overwrite", action="store_true", help="replace an existing engine at -o and its sidecar -o.json"
    )
    engine.add_argument("--verbose", action="store_true", help="TensorRT builder log")
    engine.add_argument("--json", action="store_true", help="print the engine sidecar as JSON on stdout")
    engine.set_defaults(handler=_cmd_engine)


def _int8_flags(parser: argparse.ArgumentParser) -> None:
    """How the bundle's INT8 Q/DQ graph is calibrated, searched and gated."""
    parser.add_argument(
        "--max-int8-drop",
        type=float,
        default=QuantConfig.max_sensitivity_drop,
        help="fail when INT8 sensitivity is this many points below FP32 (default 2)",
    )
    parser.add_argument(
        "--calib-method",
        choices=("auto", "entropy", "minmax", "percentile"),
        default=QuantConfig.calibrate_method,
        help="INT8 activation range method (default auto: percentile, and minmax too when percentile "
        "misses --int8-target after the float-layer search; the graph closer to FP32 is kept)",
    )
    parser.add_argument(
        "--quantize-first-layer",
        action="store_true",
        help="INT8 for the first conv too (default: kept in float)",
    )
    parser.add_argument("--keep-head", action="store_true", help="keep the final classifier layer in float")
    parser.add_argument(
        "--int8-target",
        type=_target,
        default=QuantConfig.target_max_diff,
        metavar="DIFF|off",
        help="mixed precision: if INT8 outputs differ from FP32 by more than DIFF on the calibration images, "
        "keep the most sensitive layers in float until within it (default %(default)s; off: never)",
    )
    parser.add_argument(
        "--int8-max-float-layers",
        type=int,
        default=QuantConfig.max_float_layers,
        metavar="N",
        help="at most N layers kept in float by that search (default %(default)s)",
    )


def _onnx_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--opset", type=int, default=OnnxConfig.opset, help="ONNX opset (default 17)")
    parser.add_argument(
        "--parity-images", type=int, default=OnnxConfig.parity_images, help="test images for parity"
    )
    parser.add_argument(
        "--no-simplify", action="store_true", help="skip onnxslim even where it changes nothing"
    )


def _calib_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calib-size",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="calibration images (default 512, min 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--force", action="store_true", help="allow fewer than 100 calibration images (tests only)"
    )


def _onnx_config(args: argparse.Namespace) -> OnnxConfig:
    return OnnxConfig(opset=args.opset, parity_images=args.parity_images, simplify=not args.no_simplify)


def _calib_config(args: argparse.Namespace) -> CalibrationConfig:
    return CalibrationConfig(size=args.calib_size, force=args.force, seed=args.seed)


# --------------------------------------------------------------------------- onnx


def _cmd_onnx(args: argparse.Namespace) -> int:
    from edge_runtime.fileio import sha256_file
    from export.onnx_from_keras import export_onnx, require_modules
    from export.report import REPORT_FILE, new_report, write_report
    from export.run_folder import RunFolder, load_images, parity_images_for

    config = _onnx_config(args)
    output: Path = args.output
    if output.suffix != ".onnx":
        raise ExportConfigError(
            f"{output}: -o must name a new .onnx file (never the model.h5 it reads), e.g. -o model.onnx"
        )
    report_path: Path = args.report or output.with_name(REPORT_FILE)
    _check_onnx_outputs(output, report_path, args.overwrite)
    require_modules("ONNX conversion")
    run = RunFolder.resolve(args.source)
    output.parent.mkdir(parents=True, exist_ok=True)
    images, source = parity_images_for(run, config.parity_images, args.data)
    _log(f"parity images: {len(images)} from {source}")
    exported = export_onnx(
        run.h5_path, run.contract, run.info, output, load_images(images, run.contract), source, config
    )
    report = new_report(
        run.info,
        source={"h5": str(run.h5_path), "h5_sha256": sha256_file(run.h5_path)},
        config={"onnx": asdict(config), "data_root": str(args.data) if args.data else None},
    )
    report["onnx"] = exported.to_dict()
    write_report(report_path, report)
    _log(
        f"onnx: ok, saved {output} ({_mb(output)}), opset {exported.opset}, input "
        f"{exported.graph['input']['dtype']} {exported.graph['input']['shape']}; {exported.parity.describe()}"
    )
    _log(f"onnx: {exported.simplify_note}")
    _log(f"report: {report_path}")
    if run.info.synthetic:
        _log(SYNTHETIC_WARNING)
    _log(f"next: pneumo export bundle {args.source} -o bundles/{run.info.model_version}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0


def _check_onnx_outputs(output: Path, report: Path, overwrite: bool) -> None:
    """-o and the report are new files, or with --overwrite this command's own earlier ones.

    Never a file of a bundle (it would no longer verify), and never any other existing file as
    the report: ``--report runs/demo/split.json --overwrite`` would destroy the run's split.
    """
    from export.bundle import enclosing_bundle
    from export.report import is_onnx_report

    if report.resolve() == output.resolve():
        raise ExportConfigError(f"--report {report}: is the -o file; give the report a path of its own")
    for path, flag in ((output, "-o"), (report, "--report")):
        bundle = enclosing_bundle(path)
        if bundle is not None:
            raise ExportConfigError(
                f"{path}: inside the bundle {bundle}, whose files only 'pneumo export bundle' writes (the bundle "
                f"would no longer verify); choose a {flag} outside it"
            )
        _refuse_existing(path, flag, overwrite)
    if report.exists() and not is_onnx_report(report):
        raise OutputExistsError(
            f"{report}: exists and is not a report of 'pneumo export onnx' (it may be an input, such as a run's "
            "split.json); refusing to replace it even with --overwrite: choose another --report"
        )


# --------------------------------------------------------------------------- calib


def _cmd_calib(args: argparse.Namespace) -> int:
    from export.bundle import enclosing_bundle
    from export.calibration import META_FILE, build_calibration_set, save_calibration
    from export.run_folder import RunFolder

    config = _calib_config(args)
    output: Path = args.output
    bundle = enclosing_bundle(output)
    if bundle is not None:
        raise ExportConfigError(
            f"{output}: inside the bundle {bundle}, whose files only 'pneumo export bundle' writes (the bundle "
            "would no longer verify); choose an -o outside it, e.g. -o calibration/ and then --calib "
            f"calibration/, or re-export the bundle with 'pneumo export bundle RUN -o {bundle} --overwrite'"
        )
    run = RunFolder.resolve(args.source)
    if (output / META_FILE).exists() and not args.overwrite:
        raise OutputExistsError(
            f"{output / META_FILE}: exists; pass --overwrite to replace the calibration set"
        )
    calibration = build_calibration_set(
        run.split_images("train", args.data), run.contract, run.info, config, held_out=run.held_out(args.data)
    )
    images_path, meta_path = save_calibration(calibration, output)
    counts = ", ".join(f"{k} {v}" for k, v in calibration.meta["class_counts"].items())
    _log(
        f"calib: ok, {calibration.n} training images ({counts}) -> {images_path} ({_mb(images_path)}), {meta_path}"
    )
    if calibration.n < config.size:
        _log(f"calib: the training split had only {calibration.n} of the {config.size} images asked for")
    _log(f"calib: file list sha256 {calibration.file_list_sha256}")
    if args.json:
        print(json.dumps(calibration.meta, indent=2))
    return 0


# --------------------------------------------------------------------------- bundle


def _target(text: str) -> float | None:
    """``--int8-target``: a positive float, or 'off'."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.05 or 'off', got {text!r}") from None


def _cmd_bundle(args: argparse.Namespace) -> int:
    from export.bundle import StepResult, make_bundle, summary_rows

    config = BundleConfig(
        precisions=tuple(p.strip() for p in args.precisions.split(",") if p.strip()),
        onnx=_onnx_config(args),
        calibration=_calib_config(args),
        quant=QuantConfig(
            calibrate_method=args.calib_method,
            max_sensitivity_drop=args.max_int8_drop,
            keep_first_layer=not args.quantize_first_layer,
            keep_head=args.keep_head,
            target_max_diff=args.int8_target,
            max_float_layers=args.int8_max_float_layers,
        ),
        golden=GoldenConfig(size=args.golden, seed=args.seed),
        data_root=args.data,
        eval_limit=args.eval_limit,
        bootstrap=args.bootstrap,
        overwrite=args.overwrite,
        tar=args.tar,
    )

    def on_step(step: StepResult) -> None:
        # One line per step (the error itself follows on failure).
        files = ", ".join(step.files)
        size = f" ({step.bytes / 1e6:.2f} MB)" if step.bytes else ""
        parts = [f"{files}{size}" if files else "", step.detail if step.ok else ""]
        status = "ok" if step.ok else "FAILED"
        _log(f"  {step.name:<12} {status:<6} {step.seconds:6.1f}s  " + "  ".join(p for p in parts if p))

    _log(f"export bundle: {args.source} -> {args.output} ({', '.join(config.precisions)})")
    result = make_bundle(args.source, args.output, config, on_step=on_step)
    _print_summary(summary_rows(result.report, result.root))
    total = sum(step.seconds for step in result.steps)
    _log(f"bundle: {result.root} verified ({len(result.manifest['files'])} files hashed) in {total:.1f}s")
    if result.archive is not None:
        _log(f"archive: {result.archive} ({_mb(result.archive)})")
    if result.report.get("synthetic"):
        _log(SYNTHETIC_WARNING)
    _log("next:")
    _log(f"  on the Jetson:  pneumo edge build {result.root} --precision {edge_precision(config.precisions)}")
    _log(f"  anywhere:       pneumo edge predict {result.root} IMAGES")
    if args.json:
        print(json.dumps(result.report, indent=2, default=str))
    return 0


def edge_precision(precisions: Sequence[str]) -> str:
    """The precision to suggest building on the Jetson, among those the bundle carries.

    fp16 first (fast, no calibration); else int8, which passed the export's sensitivity gate
    to be in the bundle and is faster than fp32; else fp32.
    """
    return next(p for p in ("fp16", "int8", "fp32") if p in precisions)


def _print_summary(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'precision':<10}{'file':<22}{'MB':>7}  {'vs':<10}{'max|diff|':>10}{'agree':>8}"
        f"{'acc':>7}{'sens':>7}{'spec':>7}{'AUC':>7}"
    )
    _log("")
    _log(header)
    for row in rows:

        def fmt(value: float | None) -> str:
            return f"{value:7.3f}" if value is not None else f"{'n/a':>7}"

        _log(
            f"{row['precision']:<10}{row['file']:<22}{row['mb']:>7.2f}  {row['versus']:<10}"
            f"{row['max_abs_diff']:>10.2e}{100 * row['agreement']:>7.1f}%"
            f"{fmt(row['accuracy'])}{fmt(row['sensitivity'])}{fmt(row['specificity'])}{fmt(row['roc_auc'])}"
        )
    _log("(accuracy on the test split, ONNX Runtime CPU; decision support, not a diagnosis)")
    _log("")


# --------------------------------------------------------------------------- engine


def _cmd_engine(args: argparse.Namespace) -> int:
    if not args.onnx.is_file():
        raise ExportError(
            f"{args.onnx}: not found; pass a bundle's model.onnx (or another exported ONNX file)"
        )
    # Before TensorRT is looked for: a wrong -o or calibration set is the user's to fix anywhere.
    _check_engine_output(args.onnx, args.output, args.overwrite)
    checked = _engine_calibration(args) if args.calib is not None else None
    if importlib.util.find_spec("tensorrt") is None:
        raise EngineUnavailableError(
            "TensorRT is not installed on this machine; engines are specific to the GPU and TensorRT version that "
            "build them, so build the engine on the target: copy the bundle there and run "
            "'pneumo edge build bundle/ --precision fp16' (TensorRT comes with JetPack)"
        )
    from edge_runtime.engine_from_onnx import CalibrationData, EngineBuildConfig, OnnxSources, build_engine

    sources = OnnxSources.beside(args.onnx)
    precision = args.precision
    if precision == "best":
        has_int8 = sources.int8_qdq is not None or args.calib is not None or args.calib_cache is not None
        precision = "int8" if has_int8 else "fp16"
        _log(
            f"engine: --precision best -> {precision} ({'INT8 data given' if has_int8 else 'no INT8 calibration'})"
        )
    config = EngineBuildConfig(
        precision=precision,
        batch_sizes=args.batch if args.batch is not None else (),
        workspace_mib=args.workspace,
        dla_core=args.dla,
        int8_source=args.int8_source,
        timing_cache=args.timing_cache,
        calibration_cache=args.calib_cache,
        verbose=args.verbose,
    )
    calibration = None
    if checked is not None:
        # the sha256 TensorRT's calibration cache records is the same as calib.json's images_sha256
        calibration = CalibrationData(checked.images, str(checked.meta["images_sha256"]), str(args.calib))
    rebuild = " ".join(
        ["pneumo export engine", str(args.onnx), "--precision", precision, "-o", str(args.output)]
    )
    sidecar = build_engine(sources, args.output, config, calibration=calibration, rebuild_command=rebuild)
    _log(
        f"engine: ok, {args.output} ({_mb(args.output)}), {sidecar.precision} via {sidecar.build_path}, "
        f"TensorRT {sidecar.tensorrt_version} on {sidecar.gpu_name} in {sidecar.build_seconds:.1f}s"
    )
    _log(engine_next_step(args.onnx, precision))
    if args.json:
        print(json.dumps(sidecar.to_dict(), indent=2, default=str))
    return 0


def _check_engine_output(onnx: Path, output: Path, overwrite: bool) -> None:
    """-o and its sidecar (-o + ".json") never replace an input, nor land in a bundle outside engines/.

    Inside a bundle, ``engines/`` is where 'pneumo edge build' keeps engines and the one folder
    its manifest leaves out; a file anywhere else there makes the bundle fail verification.
    """
    from edge_runtime.bundle import ENGINES_DIR, MANIFEST_FILE
    from edge_runtime.engine_from_onnx import OnnxSources
    from edge_runtime.engine_sidecar import sidecar_path
    from export.bundle import bundle_manifest_files, enclosing_bundle

    sources = OnnxSources.beside(onnx)
    inputs = {p.resolve() for p in (sources.fp32, sources.fp16, sources.int8_qdq) if p is not None}
    listed = bundle_manifest_files(onnx.parent)
    if listed is not None:
        inputs |= {(onnx.parent / rel).resolve() for rel in (*listed, MANIFEST_FILE)}
    sidecar = sidecar_path(output)
    # the build writes the sidecar as well as -o, so either one could replace somebody's file
    for path in (output, sidecar):
        name = f"{path}" if path == output else f"{path} (the engine sidecar -o writes)"
        if path.resolve() in inputs:
            raise ExportConfigError(
                f"{name}: is {onnx} or a file of its bundle, an input of this build; choose another -o, "
                "e.g. -o model_fp16.engine"
            )
        bundle = enclosing_bundle(path)
        if bundle is not None and not path.resolve().is_relative_to(bundle / ENGINES_DIR):
            raise ExportConfigError(
                f"{name}: inside the bundle {bundle} but outside its {ENGINES_DIR}/ folder, so the bundle would "
                f"no longer verify; write engines under {bundle / ENGINES_DIR}/ (where 'pneumo edge build "
                f"{bundle}' keeps them) or outside the bundle"
            )
        _refuse_existing(path, "-o", overwrite, name)
    if sidecar.exists() and not _is_engine_sidecar(sidecar):
        raise OutputExistsError(
            f"{sidecar}: exists and is not an engine sidecar, yet building -o {output} would replace it with one; "
            "refusing even with --overwrite: choose another -o, e.g. -o model_fp16.engine"
        )


def _refuse_existing(path: Path, flag: str, overwrite: bool, name: str | None = None) -> None:
    """An existing output is replaced only when it is a file and --overwrite says so."""
    name = name or str(path)
    if path.exists() and not path.is_file():
        raise OutputExistsError(f"{name}: exists and is not a file; choose another {flag}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{name}: exists; pass --overwrite to replace it")


def _is_engine_sidecar(path: Path) -> bool:
    """``path`` holds an engine sidecar: the only file --overwrite replaces beside -o."""
    from edge_runtime.engine_sidecar import SIDECAR_SCHEMA
    from edge_runtime.fileio import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema") == SIDECAR_SCHEMA and "engine_sha256" in data


def _engine_calibration(args: argparse.Namespace) -> CalibrationSet:
    """``--calib``, checked against calib.json (hash, training split), the model's contract and the test split."""
    from export.calibration import load_calibration

    return load_calibration(
        args.calib, onnx_contract(args.onnx), require_test_split_checked=not args.allow_unchecked_calib
    )


def onnx_contract(onnx: Path) -> PreprocessContract:
    """The preprocessing contract ``onnx`` was exported with: contract.json beside it, else its metadata."""
    from edge_runtime.contract import CONTRACT_FILE
    from export.errors import CalibrationError
    from export.onnx_from_keras import CONTRACT_METADATA_KEY

    beside = onnx.parent / CONTRACT_FILE
    if beside.is_file():
        return PreprocessContract.load(beside)
    text = _onnx_metadata(onnx).get(CONTRACT_METADATA_KEY)
    if text is None:
        raise CalibrationError(
            f"{onnx}: no {CONTRACT_FILE} beside it and no {CONTRACT_METADATA_KEY} in its metadata, so the "
            "calibration set cannot be checked against the model's preprocessing; copy the run's "
            f"{CONTRACT_FILE} beside it"
        )
    try:
        return PreprocessContract.from_dict(json.loads(text), source=f"{onnx} ({CONTRACT_METADATA_KEY})")
    except (ValueError, TypeError) as exc:
        raise CalibrationError(f"{onnx}: unreadable {CONTRACT_METADATA_KEY} metadata ({exc})") from exc


def _onnx_metadata(onnx: Path) -> dict[str, str]:
    """The model's metadata_props, read with ONNX Runtime (installed everywhere; the onnx package is not)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
        raise ExportError(f"{onnx}: ONNX Runtime cannot read it ({exc})") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


def engine_next_step(onnx: Path, precision: str) -> str:
    """What to run after ``export engine``: only ever a bundle that verifies and carries ``precision``."""
    from edge_runtime.bundle import GOLDEN_DIR, Bundle
    from edge_runtime.edge_build import carried_precisions
    from edge_runtime.golden import GoldenSet

    bundle: Bundle | None = None
    try:
        bundle = Bundle.open(onnx.parent)
        golden = GoldenSet.load(bundle.root / GOLDEN_DIR, bundle.contract.input_shape, bundle.info.threshold)
        if precision not in carried_precisions(bundle, golden):
            bundle = None
    except EdgeError:
        bundle = None
    if bundle is None:
        return (
            "next: this engine runs only on this GPU and TensorRT version; 'pneumo edge' and 'pneumo bench' "
            "take a bundle, whose engines 'pneumo edge build BUNDLE' builds and self-tests"
        )
    return (
        f"next: pneumo edge build {bundle.root} --precision {precision}   (builds or reuses this device's engine "
        f"under {bundle.engines_dir}/ and runs the golden self-test the runtime requires); then pneumo bench "
        f"{bundle.root}"
    )


# --------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"
