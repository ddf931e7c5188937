"""``pneumo bench decode``: every worker count side by side, the images only read, settings checked first."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main
from edge_runtime.fileio import sha256_file
from tests.conftest import write_image


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    rng = np.random.default_rng(5)
    for i in range(5):
        write_image(folder / "NORMAL" / f"{i}.png", rng.integers(0, 255, (120, 100 + i), dtype=np.uint8))
    (folder / "NORMAL" / "broken.jpeg").write_text("not an image")
    return folder


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in folder.rglob("*") if p.is_file()}


def _scratch() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("pneumo-bench-decode-*"))


def test_each_worker_count_gets_a_row_against_the_first(
    tiny_bundle: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, scratch = _hashes(images), _scratch()
    argv = [str(tiny_bundle), "--images", str(images), "--count", "12", "--batch", "4", "--quiet"]
    assert (
        main(["decode", *argv, "--workers", "0,2", "--repeats", "2", "-o", str(tmp_path / "r"), "--json"])
        == 0
    )
    out, err = capsys.readouterr()
    document = json.loads(out)
    decode = document["decode"]
    assert document["schema"] == "pneumo-bench-decode/1" and decode["backend"] == "ort-cpu"
    assert [row["workers"] for row in decode["rows"]] == [0, 2]
    first, second = decode["rows"]
    assert first["feed_vs_first"] == 1.0 and first["predict_vs_first"] == 1.0
    assert all(
        len(row["rounds_s"]["feed"]) == 2 and row["predict_images_per_s"] > 0 for row in decode["rows"]
    )
    # 6 files, one not an image, cycled to 12: 10 results per pass
    assert decode["distinct_files"] == 6 and decode["classified_per_pass"] == 10
    assert "ratios are to 0 decode thread(s)" in err

    assert main(["decode", *argv, "--workers", "1", "--repeats", "1", "--full-size", "300x240", "-o", str(tmp_path / "s")]) == 0  # fmt: skip
    written = next((tmp_path / "s").glob("*/*/decode.md")).read_text()
    assert "upscaled to 300x240 and written as a 16-bit PNG" in written and "| 1 |" in written
    assert "model tiny-test-1 (tiny) [SYNTHETIC" in written and "Only its speed is measured" in written
    result = json.loads(next((tmp_path / "s").glob("*/*/decode.json")).read_text())["decode"]
    assert (
        result["distinct_files"] == 5 and result["classified_per_pass"] == 12
    )  # the broken file has no copy
    assert _hashes(images) == before, "the images are only read"
    assert _scratch() == scratch, "the full-size copies were left behind"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0,-1"], "every count must be within 0..64"),
        (["--full-size", "10x10"], "expected WIDTHxHEIGHT, each 64..8192"),
        (["--repeats", "0"], "--repeats 0"),
    ],
)
def test_settings_out_of_range_are_usage_errors(
    tiny_bundle: Path, images: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", str(tiny_bundle), "--images", str(images), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_size_that_is_not_w_x_h_is_refused_by_the_parser(tiny_bundle: Path, images: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["decode", str(tiny_bundle), "--images", str(images), "--full-size", "2500"])
    assert exit_info.value.code == 2
