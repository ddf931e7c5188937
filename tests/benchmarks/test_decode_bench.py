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
    # 6 files, one not an image: the 5 images cycled to 12, every one classified
    assert decode["distinct_files"] == 5 and decode["classified_per_pass"] == 12 == decode["images"]
    (warning,) = decode["warnings"]
    assert warning.startswith("1 of 6 files could not be decoded") and "broken.jpeg" in warning
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


def test_a_folder_where_no_file_decodes_is_refused(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.png").write_bytes(b"not a png at all")
    argv = ["decode", str(tiny_bundle), "--images", str(garbage), "--count", "4", "--workers", "0"]
    assert main([*argv, "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"{garbage}: none of the 1 image file(s) could be decoded" in err and "a.png" in err
    assert not (tmp_path / "r").exists(), "no throughput of files that give no result"


def test_undecodable_files_are_left_out_of_the_timed_set_with_a_warning(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    rng = np.random.default_rng(7)
    for i in range(8):
        write_image(folder / f"{i}.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    for name in ("bad-1.png", "bad-2.jpeg"):
        (folder / name).write_bytes(b"garbage")
    argv = [str(tiny_bundle), "--images", str(folder), "--count", "20", "--workers", "0,1", "--repeats", "1"]
    assert main(["decode", *argv, "-o", str(tmp_path / "r"), "--json"]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert (decode["images"], decode["distinct_files"], decode["classified_per_pass"]) == (20, 8, 20)
    (warning,) = decode["warnings"]
    assert warning.startswith("2 of 10 files could not be decoded and are left out of the timed set")
    assert str(folder / "bad-1.png") in warning and str(folder / "bad-2.jpeg") in warning
    written = next((tmp_path / "r").glob("*/*/decode.md")).read_text()
    assert "**warning:** 2 of 10 files could not be decoded" in written
    assert "20 classified per pass" in written


def _nan_for_dark_bundle(root: Path) -> Path:
    """A real bundle whose model gives NaN for dark images: they decode, but get no result."""
    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo, PreprocessContract
    from tests.edge_runtime.bundle_kit import nan_for_dark_onnx

    nan_for_dark_onnx(root / "model.onnx")
    PreprocessContract(height=8, width=8).save(root)
    ModelInfo(model_version="nan-1", arch="tiny", threshold=0.5, synthetic=True).save(root)
    (root / "model_card.json").write_text("{}\n")
    write_manifest(root)
    return root


def test_rates_count_only_images_that_got_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _nan_for_dark_bundle(tmp_path / "bundle")
    scans = tmp_path / "scans"
    for name, level in (("a-bright", 230), ("b-dark", 20), ("c-bright", 240), ("d-dark", 10)):
        write_image(scans / f"{name}.png", np.full((40, 40), level, np.uint8))
    argv = [str(bundle), "--images", str(scans), "--count", "200", "--workers", "0,1", "--repeats", "3"]
    assert main(["decode", *argv, "-o", str(tmp_path / "r"), "--json"]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert (decode["images"], decode["classified_per_pass"]) == (200, 100)
    for row in decode["rows"]:
        # half the images per pass got a result: the rate is 100 / median seconds, not 200 / median seconds
        median_s = sorted(row["rounds_s"]["predict"])[1]
        assert row["predict_images_per_s"] * median_s == pytest.approx(100, rel=0.2)
    (warning,) = decode["warnings"]
    assert warning.startswith("only 100 of 200 images per pass got a result") and "b-dark.png" in warning

    dark = tmp_path / "dark"
    write_image(dark / "dark.png", np.full((40, 40), 20, np.uint8))
    argv = [str(bundle), "--images", str(dark), "--count", "8", "--workers", "0", "--repeats", "1"]
    assert main(["decode", *argv, "-o", str(tmp_path / "d")]) == 1
    assert "gave no result" in capsys.readouterr().err and not (tmp_path / "d").exists()


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
