"""``pneumo edge predict``: files, folders, globs; table / JSON / CSV; failures named; inputs untouched."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.fileio import sha256_file
from tests.conftest import REPO, write_image


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    write_image(root / "dark.png", np.full((64, 80), 15, np.uint8))
    write_image(
        root / "ward 2" / "brigtht ü.jpeg", np.full((50, 50, 3), 240, np.uint8), ".png"
    )  # PNG under .jpeg
    write_image(root / "ward 2" / "mid.png", np.full((70, 70), 120, np.uint8))
    return root


def _hashes(root: Path) -> dict[str, tuple[str, float]]:
    return {str(p): (sha256_file(p), p.stat().st_mtime) for p in root.rglob("*") if p.is_file()}


def test_table_names_model_threshold_backend_and_disclaimer(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _hashes(inbox)
    assert main(["predict", str(tiny_bundle), str(inbox), "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("*** SYNTHETIC")
    assert "model tiny-test-1 (tiny), threshold 0.500 on P(PNEUMONIA), backend ort-cpu (fp32)" in out
    assert "Decision support for a trained clinician, not a diagnosis." in out
    assert "decision@0.500" in out and "latency_ms" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(str(inbox))}
    assert rows[str(inbox / "dark.png")][2:4] == ["NORMAL", "normal"]
    assert "3 images classified (1 abnormal, 2 normal), 0 failed" in err
    assert _hashes(inbox) == before, "inputs are only read"


def test_failures_are_named_and_exit_nonzero(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (inbox / "report.jpg").write_text("this is a text file")
    (inbox / "empty.png").write_bytes(b"")
    code = main(["predict", str(tiny_bundle), str(inbox), str(inbox / "absent.png")])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"FAILED {inbox / 'report.jpg'}: not an image" in err
    assert f"FAILED {inbox / 'empty.png'}: empty file (0 bytes)" in err
    assert f"FAILED {inbox / 'absent.png'}: no such file or folder" in err
    assert "3 images classified" in err and "3 failed" in err
    assert str(inbox / "dark.png") in out


def test_json_and_csv_outputs(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (inbox / "bad.png").write_text("x")
    assert main(["predict", str(tiny_bundle), str(inbox / "**" / "*.png"), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["model_version"] == "tiny-test-1" and document["backend"] == "ort-cpu"
    assert document["precision"] == "fp32" and document["threshold"] == 0.5 and document["synthetic"] is True
    assert document["warning"].startswith("SYNTHETIC") and "not a diagnosis" in document["note"]
    assert {r["source"] for r in document["results"]} == {
        str(inbox / "dark.png"),
        str(inbox / "ward 2" / "mid.png"),
    }
    first = document["results"][0]
    assert first["input_sha256"] == sha256_file(first["source"]) and len(first["model_sha256"]) == 64
    assert document["failures"] == [
        {
            "source": str(inbox / "bad.png"),
            "error": "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM",
        }
    ]

    out_file = tmp_path / "results.csv"
    assert main(["predict", str(tiny_bundle), str(inbox / "dark.png"), "--csv", "-o", str(out_file)]) == 0
    assert capsys.readouterr().out == ""
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert rows[0]["file"] == str(inbox / "dark.png") and rows[0]["decision"] == "normal"
    assert rows[0]["model_version"] == "tiny-test-1" and rows[0]["backend"] == "ort-cpu"


def test_output_may_not_overwrite_an_input(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = inbox / "dark.png"
    before = sha256_file(target)
    assert main(["predict", str(tiny_bundle), str(inbox), "-o", str(target)]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err and sha256_file(target) == before


def test_usage_errors_exit_2(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(tiny_bundle)]) == 2
    assert main(["predict", str(tiny_bundle), "x.png", "--backend", "gpu"]) == 2
    assert main(["predict", str(tiny_bundle), "x.png", "--json", "--csv"]) == 2
    assert main([]) == 2
    assert "the following arguments are required: paths" in capsys.readouterr().err


def test_tampered_bundle_is_refused(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny_bundle / "model_info.json").write_text(
        (tiny_bundle / "model_info.json").read_text().replace("0.5", "0.1")
    )
    assert main(["predict", str(tiny_bundle), str(inbox)]) == 1
    assert "model_info.json" in capsys.readouterr().err


def test_the_pneumo_console_entry_point(tiny_bundle: Path, inbox: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime.pneumo_cli",
            "edge",
            "predict",
            str(tiny_bundle),
            str(inbox / "dark.png"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["decision"] == "normal"
