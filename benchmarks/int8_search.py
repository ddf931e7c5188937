"""INT8 export time: each trial graph calibrated afresh vs activation ranges reused, side by side.

``python -m benchmarks.int8_search BUNDLE`` builds the bundle's INT8 Q/DQ graph
from ``BUNDLE/model.onnx`` and ``BUNDLE/calibration`` twice in one process,
with the export's default settings (``QuantConfig()``: auto calibration, the
float-layer search when the target is missed): once reusing the ranges (what
``pneumo export bundle`` does) and once calibrating every trial graph again
(the way it was done before). It prints both times, their ratio and whether
the two graphs are byte-identical; the bundle is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    # Only for the annotation: ``export`` is imported when the comparison runs, like every heavy import here.
    from export.config import QuantConfig


def compare(source: Path, images: np.ndarray, config: QuantConfig) -> dict[str, Any]:
    """Both ways of building the INT8 graph of ``source``, timed in this order: reused, then fresh."""
    from export.mixed_precision import int8_qdq_within_target

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pneumo-int8-bench-") as tmp:
        for label, reuse in (("reused", True), ("fresh", False)):
            start = time.perf_counter()
            settings = int8_qdq_within_target(
                source, Path(tmp) / f"{label}.onnx", images, config, reuse_ranges=reuse
            )
            mixed = settings.get("mixed_precision") or {}
            result[label] = {
                "seconds": round(time.perf_counter() - start, 2),
                "calibration_max_diff": settings.get("calibration_max_diff"),
                "calibrate_method": settings["calibrate_method"],
                "float_layers": list(mixed.get("float_layers", [])),
            }
        result["same_graph"] = (Path(tmp) / "reused.onnx").read_bytes() == (
            Path(tmp) / "fresh.onnx"
        ).read_bytes()
    result["fresh_over_reused"] = round(result["fresh"]["seconds"] / result["reused"]["seconds"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    from export.calibration import load_calibration
    from export.config import QuantConfig
    from export.errors import ExportError

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.int8_search",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("bundle", type=Path, help="a bundle folder with model.onnx and calibration/")
    args = parser.parse_args(argv)
    source = args.bundle / "model.onnx"
    if not source.is_file():
        print(f"{source}: missing; give a bundle made by 'pneumo export bundle'", file=sys.stderr)
        return 2
    try:
        calibration = load_calibration(args.bundle / "calibration")
        result = compare(source, calibration.images, QuantConfig())
    except ExportError as exc:
        print(f"{args.bundle}: {exc}", file=sys.stderr)
        return 1
    result["command"] = f"python -m benchmarks.int8_search {args.bundle}"
    result["calibration_images"] = calibration.n
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
