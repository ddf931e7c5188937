"""`pneumo data check` on real broken files: every problem reported, nothing changed."""

from __future__ import annotations

import csv
import hashlib
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import write_image
from train.checks import check_folder, format_report
from train.data_cli import main as data_main


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _palette_png(size: int = 80) -> bytes:
    """A valid 8-bit palette PNG (colour type 3), written by hand so no PIL is needed."""
    palette = bytes(v for i in range(256) for v in (i, i, i))
    rows = b"".join(b"\x00" + bytes((x * 3) % 256 for x in range(size)) for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 3, 0, 0, 0))
        + _png_chunk(b"PLTE", palette)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def messy(tmp_path: Path, gray_image: np.ndarray) -> Path:
    """A split-layout folder with one file of each kind of problem."""
    root = tmp_path / "messy"
    normal, pneu = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    for i in range(3):
        write_image(normal / f"IM-000{i}-0001.jpeg", np.roll(gray_image, i * 7 + 1, axis=1))
        write_image(pneu / f"person{i}_bacteria_{i}.jpeg", np.roll(gray_image, i * 5, axis=0))
    for label in ("NORMAL", "PNEUMONIA"):
        write_image(
            root / "test" / label / f"IM-09{len(label)}-0001.jpeg", np.roll(255 - gray_image, len(label))
        )
    (normal / "IM-0100-0001.jpeg").write_bytes(b"")
    (normal / "IM-0101-0001.jpg").write_text("this is a text file, not a picture\n" * 5)
    jpeg = cv2.imencode(".jpg", gray_image)[1].tobytes()
    (pneu / "person50_virus_60.jpeg").write_bytes(jpeg[: len(jpeg) // 2])
    write_image(pneu / "person51_virus_61.png", (gray_image.astype(np.uint16) * 257))
    rgba = cv2.cvtColor(gray_image, cv2.COLOR_GRAY2BGRA)
    write_image(pneu / "person52_virus_62.png", rgba)
    write_image(pneu / "person53_virus_63.jpeg", gray_image, ext=".png")
    (pneu / "person54_virus_64.png").write_bytes(_palette_png())
    write_image(pneu / "person55_virus_65.jpeg", gray_image[:40, :50])
    # a duplicate pair that crosses splits: a copy of a train image in test
    (root / "test" / "PNEUMONIA" / "person0_bacteria_99.jpeg").write_bytes(
        (pneu / "person0_bacteria_0.jpeg").read_bytes()
    )
    (normal / "readme.txt").write_text("notes")
    return root


def test_check_reports_every_problem_and_changes_nothing(messy: Path) -> None:
    before = _snapshot(messy)
    report = check_folder(messy, progress=False)
    assert _snapshot(messy) == before  # nothing modified, deleted or added

    issues = {f.path.split("/")[-1]: f.issues for f in report.files}
    assert issues["IM-0100-0001.jpeg"] == ["empty"]
    assert issues["IM-0101-0001.jpg"] == ["not-image"]
    assert issues["person50_virus_60.jpeg"] == ["truncated"]
    assert issues["person51_virus_61.png"] == ["16-bit"]
    assert issues["person52_virus_62.png"] == ["alpha"]
    assert issues["person53_virus_63.jpeg"] == ["wrong-extension"]
    assert issues["person54_virus_64.png"] == ["palette"]
    assert issues["person55_virus_65.jpeg"] == ["tiny"]
    assert issues["readme.txt"] == ["ignored-name"]
    assert issues["IM-0001-0001.jpeg"] == []
    assert (
        "duplicate" in issues["person0_bacteria_0.jpeg"] and "duplicate" in issues["person0_bacteria_99.jpeg"]
    )

    (group,) = report.duplicates
    assert group["crosses_splits"] and not group["crosses_labels"]
    assert group["splits"] == ["test", "train"]
    assert not report.usable
    assert {f.path.split("/")[-1] for f in report.unreadable} == {
        "IM-0100-0001.jpeg", "IM-0101-0001.jpg", "person50_virus_60.jpeg"
    }  # fmt: skip
    # counts come from readable images; patients from the names
    assert report.counts["train"]["NORMAL"] == {"images": 3, "patients": 3}
    assert report.counts["test"]["PNEUMONIA"]["images"] == 2
    assert report.patient_overlap["train-test"]["patients"] == 1  # person0 in both
    text = format_report(report)
    assert "NOT usable" in text and "truncated" in text and "Nothing was modified or deleted" in text


def test_check_cli_exit_codes_and_json(
    messy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(messy)
    out = tmp_path / "report.json"
    assert data_main(["check", str(messy), "-o", str(out), "--no-progress"], prog="pneumo data") == 1
    assert _snapshot(messy) == before
    assert "NOT usable" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["usable"] is False
    assert report["issue_counts"]["empty"] == 1 and report["issue_counts"]["duplicate"] == 2
    assert len(report["files"]) == len(before)
    assert data_main(["check", str(messy), "--json", "--no-progress"], prog="pneumo data") == 1
    printed = json.loads(capsys.readouterr().out)
    assert "files" not in printed and printed["issue_counts"] == report["issue_counts"]


def test_clean_folder_is_usable(
    tmp_path: Path, gray_image: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "clean"
    for label in ("NORMAL", "PNEUMONIA"):
        for i in range(2):
            write_image(root / label / f"{label}-{i}.jpeg", np.roll(gray_image, i + len(label), axis=1))
    assert data_main(["check", str(root), "--no-progress"], prog="pneumo data") == 0
    text = capsys.readouterr().out
    assert "verdict: usable" in text and "next: pneumo train" in text
    report = check_folder(root, progress=False)
    (row,) = report.geometry
    assert row["split"] == "flat" and row["images"] == 4 and row["width"]["median"] == gray_image.shape[1]


def test_broken_layout_still_gets_a_full_report(tmp_path: Path, gray_image: np.ndarray) -> None:
    root = tmp_path / "half"
    write_image(root / "train" / "NORMAL" / "a.jpeg", gray_image)
    write_image(root / "test" / "PNEUMONIA" / "b.jpeg", gray_image)
    report = check_folder(root, progress=False)
    assert "class folder missing" in report.layout_error and not report.usable
    assert len(report.files) == 2 and all(f.readable for f in report.files)
    loose = tmp_path / "loose"
    write_image(loose / "scan.png", gray_image)
    (loose / "notes.md").write_text("not data")
    report = check_folder(loose, progress=False)
    assert "no class folders" in report.layout_error
    assert [f.path for f in report.files] == ["scan.png"] and report.files[0].readable


def test_check_missing_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_main(["check", str(tmp_path / "nope")], prog="pneumo data") == 1
    assert "nope: not a folder" in capsys.readouterr().err


@pytest.mark.data
def test_real_data_check(real_data: Path) -> None:
    report = check_folder(real_data, progress=False)
    assert report.usable
    assert len(report.files) == 5856 and all(f.readable for f in report.files)
    # The data README: 30 groups of byte-identical files, none crossing splits.
    assert len(report.duplicates) == 30
    assert not any(group["crosses_splits"] for group in report.duplicates)
    # Expected figures from the data set's own MANIFEST.csv, read here without the toolkit.
    with (real_data / "MANIFEST.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected_test = {
        label: {
            "images": sum(1 for r in rows if r["split"] == "test" and r["label"] == label),
            "patients": len({r["patient_id"] for r in rows if r["split"] == "test" and r["label"] == label}),
        }
        for label in ("NORMAL", "PNEUMONIA")
    }
    assert report.counts["test"] == expected_test
    patients = {split: {r["patient_id"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert report.patient_overlap["train-test"]["patients"] == len(patients["train"] & patients["test"])
    geometry = {(row["split"], row["source"]): row for row in report.geometry}
    for source, count in Counter(r["source"] for r in rows if r["split"] == "train").items():
        assert geometry[("train", source)]["images"] == count, (source, geometry[("train", source)])
    copies = geometry[("train", "resized_copy_224x224")]
    assert copies["square"] == copies["images"] and copies["width"]["max"] == 224
    assert geometry[("train", "original")]["short_side"]["max"] == 256
    assert not report.issue_counts().keys() - {"duplicate"}


_CHECK_MEMORY = """
import json, resource, sys
from pathlib import Path
from train.checks import check_folder
check_folder(Path(sys.argv[1]), progress=False)  # warm: imports, thread pool, small decodes
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = check_folder(Path(sys.argv[2]), progress=False)
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
bomb = next(f for f in report.files if f.path.endswith("bomb.tiff"))
print(json.dumps({"growth_mb": growth, "issues": bomb.issues, "readable": bomb.readable, "error": bomb.error}))
"""


def test_a_compressed_tiff_bomb_is_reported_without_decoding_it(
    tmp_path: Path, gray_image: np.ndarray
) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    warm, bombs = tmp_path / "warm" / "NORMAL", tmp_path / "bombs" / "NORMAL"
    write_image(warm / "a.tiff", gray_image)
    bombs.mkdir(parents=True)
    # 144 megapixels of zeros: about 0.5 MB on disk, 144 MB and more inside libtiff if decoded.
    assert cv2.imwrite(
        str(bombs / "bomb.tiff"), np.zeros((12000, 12000), np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 8]
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    done = subprocess.run(
        [sys.executable, "-c", _CHECK_MEMORY, str(warm.parent), str(bombs.parent)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=True,
    )  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["readable"] is False and "huge" in measured["issues"]
    assert "declares 12000x12000 pixels" in measured["error"]
    assert measured["growth_mb"] < 40, measured
