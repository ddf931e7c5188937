"""--auto: picks the newest valid bundle and the run that made it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks.auto import find_bundles, plan_auto
from benchmarks.errors import BenchInputError


def test_newest_valid_bundle_and_its_run(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    base = tmp_path / "checkout"
    old = shutil.copytree(tiny_bundle, base / "bundles" / "old")
    new = shutil.copytree(tiny_bundle, base / "demo" / "bundle")
    os.utime(old / "manifest.json", (1_000_000, 1_000_000))
    run = base / "runs" / "tiny"
    run.mkdir(parents=True)
    shutil.copy(tiny_bundle / "model_info.json", run / "model_info.json")
    (run / "model.h5").write_bytes(b"not read by the planner")
    assert find_bundles(base) == [new, old]
    plan = plan_auto(base)
    assert plan.bundle == new
    assert plan.keras == run
    # A tampered newest bundle is passed over for the next valid one.
    (new / "model.onnx").write_bytes(b"tampered")
    assert plan_auto(base).bundle == old


def test_no_bundle_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(BenchInputError, match="make demo"):
        plan_auto(tmp_path)
