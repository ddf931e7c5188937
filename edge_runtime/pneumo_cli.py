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
import sys
from collections.abc import Sequence

from edge_runtime.extras import EXTRAS_OF_MODULE, install_hint

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
