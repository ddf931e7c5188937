"""``export_report.json``: what an export produced, how it was checked, and with which tools.

Written beside the artifacts (in the bundle, or beside ``model.onnx`` for
``pneumo export onnx``). Top-level keys: ``schema``, ``created``,
``pneumo_edge_version``, ``model_version``, ``synthetic`` (+ ``warning``),
``source``, ``versions``, ``config``, ``onnx``, ``calibration``, ``fp16``,
``int8``, ``accuracy``, ``golden``, ``steps``. The README's export section
lists the fields of each.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_runtime import __version__
from edge_runtime.contract import SYNTHETIC_WARNING, ModelInfo
from edge_runtime.fileio import atomic_write_json, read_json

REPORT_FILE = "export_report.json"
REPORT_SCHEMA = 1
_PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "onnxconverter-common",
    "numpy",
    "opencv-python-headless",
    "protobuf",
)


def toolchain_versions() -> dict[str, str]:
    """Installed versions of every package that shaped the exported graphs (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_report(info: ModelInfo, source: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pneumo_edge_version": __version__,
        "model_version": info.model_version,
        "synthetic": info.synthetic,
        "decision_threshold": info.threshold,
        "intended_use": info.intended_use,
        "source": source,
        "versions": toolchain_versions(),
        "config": config,
    }
    if info.synthetic:
        report["warning"] = SYNTHETIC_WARNING
    return report


def write_report(path: Path, report: dict[str, Any]) -> Path:
    atomic_write_json(path, report)
    return path


def is_onnx_report(path: Path) -> bool:
    """``path`` holds a report 'pneumo export onnx' wrote: the only file its --overwrite replaces as the report.

    A bundle's report also has an ``onnx`` section, and its ``steps``; any other file is not one.
    """
    try:
        report = read_json(path)
    except (OSError, ValueError):
        return False
    return (
        isinstance(report, dict)
        and report.get("schema") == REPORT_SCHEMA
        and {"pneumo_edge_version", "onnx"} <= report.keys()
        and "steps" not in report
    )
