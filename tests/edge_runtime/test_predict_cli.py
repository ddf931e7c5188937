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
    assert "model tiny-test-1 (tiny), threshold 0.5000 on P(PNEUMONIA), backend ort-cpu (fp32)" in out
    assert "Decision support for a trained clinician, not a diagnosis." in out
    assert "decision@0.5000" in out and "latency_ms" in out
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


def test_csv_rows_carry_the_note_and_failed_rows_the_threshold(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (inbox / "bad.png").write_text("x")
    assert main(["predict", str(tiny_bundle), str(inbox), "--csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4
    for row in rows:  # a CSV row is read alone, in a spreadsheet: each says what it is
        assert row["note"].startswith("SYNTHETIC") and row["note"].endswith("not a diagnosis.")
        assert row["threshold"] == "0.5" and row["model_version"] == "tiny-test-1"
    failed = [r for r in rows if r["error"]]
    assert [(r["file"], r["decision"]) for r in failed] == [(str(inbox / "bad.png"), "FAILED")]


def test_the_table_written_with_o_keeps_the_failure_reasons(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (inbox / "bad.png").write_text("x")
    target = tmp_path / "results.txt"
    assert main(["predict", str(tiny_bundle), str(inbox), "-o", str(target)]) == 1
    assert f"FAILED {inbox / 'bad.png'}: not an image" in target.read_text()


def test_an_unusable_output_is_refused_before_any_inference(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(tiny_bundle), str(inbox), "--csv", "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path}: is a folder; give a file name" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder" / "results.csv"
    assert main(["predict", str(tiny_bundle), str(inbox), "--csv", "-o", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"folder {missing.parent} does not exist" in err and "images classified" not in err
    too_long = tmp_path / ("r" * 300 + ".csv")  # is_dir() itself fails: ENAMETOOLONG
    assert main(["predict", str(tiny_bundle), str(inbox), "--csv", "-o", str(too_long)]) == 2
    err = capsys.readouterr().err
    assert "cannot be used as a file name (File name too long)" in err and "Traceback" not in err


def test_swapped_arguments_get_a_hint(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(inbox), str(tiny_bundle)]) == 1
    assert f"{inbox} holds images: the bundle comes first" in capsys.readouterr().err


def test_a_contract_that_does_not_fit_the_model_fails_cleanly(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.bundle import write_manifest

    contract = json.loads((tiny_bundle / "contract.json").read_text())
    contract.update(height=48, width=48)
    (tiny_bundle / "contract.json").write_text(json.dumps(contract))
    write_manifest(tiny_bundle)
    assert main(["predict", str(tiny_bundle), str(inbox)]) == 1
    captured = capsys.readouterr()
    assert "the model takes 32x32x1" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_camera_flag_values_out_of_range_are_usage_errors(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["camera", str(tiny_bundle), "--source", "clip.mp4", "--headless"]) == 2
    assert "--headless needs --jsonl" in capsys.readouterr().err
    assert main(["camera", str(tiny_bundle), "--source", "0", "--fps", "0"]) == 2
    assert "--fps 0 is outside" in capsys.readouterr().err


def test_runtime_errors_reach_the_user_as_one_line(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    from edge_runtime.bundle import write_manifest

    model = onnx.load(str(tiny_bundle / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # a batch-1-only export
    onnx.save(model, str(tiny_bundle / "model.onnx"))
    write_manifest(tiny_bundle)
    assert main(["predict", str(tiny_bundle), str(inbox), "--batch", "2"]) == 1
    err = capsys.readouterr().err
    assert "ort-cpu fp32 failed on a batch of shape (2, 32, 32, 1)" in err and "Traceback" not in err

    (tiny_bundle / "model.onnx").write_bytes(b"not an onnx file")
    write_manifest(tiny_bundle)
    assert main(["predict", str(tiny_bundle), str(inbox), "--backend", "ort-cpu"]) == 1
    assert "ONNX Runtime cannot load this model" in capsys.readouterr().err


def test_a_non_finite_output_fails_that_image_and_keeps_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo, PreprocessContract
    from tests.edge_runtime.bundle_kit import nan_for_dark_onnx

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    nan_for_dark_onnx(bundle / "model.onnx")  # NaN for dark images
    PreprocessContract(height=8, width=8).save(bundle)
    ModelInfo(model_version="nan-1", arch="tiny", threshold=0.5, synthetic=True).save(bundle)
    (bundle / "model_card.json").write_text("{}\n")
    write_manifest(bundle)
    scans = tmp_path / "scans"
    write_image(scans / "a-bright.png", np.full((40, 40), 230, np.uint8))
    write_image(scans / "b-dark.png", np.full((40, 40), 20, np.uint8))
    write_image(scans / "c-bright.png", np.full((40, 40), 240, np.uint8))
    assert main(["predict", str(bundle), str(scans), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in document["results"]] == [
        str(scans / "a-bright.png"),
        str(scans / "c-bright.png"),
    ]
    assert all(r["input_sha256"] == sha256_file(r["source"]) for r in document["results"])
    [failure] = document["failures"]
    assert failure["source"] == str(scans / "b-dark.png") and "not a finite number" in failure["error"]


def test_a_batch_below_one_is_a_usage_error(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(tiny_bundle), str(inbox), "--batch", "0"]) == 2
    assert "--batch must be 1 or more" in capsys.readouterr().err


def test_an_empty_folder_classifies_nothing_and_fails(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_bundle), str(tmp_path / "empty")]) == 1
    assert "0 images classified (0 abnormal, 0 normal)" in capsys.readouterr().err


def test_results_that_cannot_be_written_go_to_stdout(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 250 characters pass the -o check, but the temporary file beside it gets a name over 255: the write fails.
    target = tmp_path / ("r" * 246 + ".csv")
    assert main(["predict", str(tiny_bundle), str(inbox / "dark.png"), "--csv", "-o", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("file,probability,label,decision") and str(inbox / "dark.png") in out
    assert f"cannot write {target}" in err and "the results follow on stdout" in err
    assert f"FAILED {target}: results not written" in err and "1 images classified" in err


def test_decoding_on_threads_gives_the_serial_results(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(9):
        write_image(inbox / "more" / f"{i}.png", np.full((90, 60 + i), 20 * i, np.uint8))
    (inbox / "more" / "4 bad.png").write_text("not an image")
    documents = []
    for workers in ("0", "3"):
        assert (
            main(["predict", str(tiny_bundle), str(inbox), "--batch", "4", "--workers", workers, "--json"])
            == 1
        )
        documents.append(json.loads(capsys.readouterr().out))
    serial, threaded = documents
    assert len(serial["results"]) == 12 and serial["failures"] == threaded["failures"]
    keys = ("source", "probability", "label", "input_sha256")
    assert [[r[k] for k in keys] for r in threaded["results"]] == [
        [r[k] for k in keys] for r in serial["results"]
    ]


def test_a_negative_worker_count_is_a_usage_error(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(tiny_bundle), str(inbox), "--workers", "-1"]) == 2
    assert "--workers -1: expected 0..64" in capsys.readouterr().err


def test_csv_never_turns_a_file_name_into_a_live_formula(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files named like formulas, given as relative paths: text cells start with ' (OWASP), numbers do not."""
    os.rename(inbox / "dark.png", inbox / "=HYPERLINK(A1).png")
    (inbox / "@SUM(1+1).png").write_text("not an image")
    monkeypatch.chdir(inbox)
    assert main(["predict", str(tiny_bundle), "=HYPERLINK(A1).png", "@SUM(1+1).png", "--csv"]) == 1
    rows = {row["file"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert set(rows) == {"'=HYPERLINK(A1).png", "'@SUM(1+1).png"}
    done, failed = rows["'=HYPERLINK(A1).png"], rows["'@SUM(1+1).png"]
    assert done["decision"] == "normal" and float(done["probability"]) < 0.5
    assert not done["probability"].startswith("'") and not done["latency_ms"].startswith("'")
    assert failed["decision"] == "FAILED" and failed["error"].startswith("not an image")


def test_the_csv_help_says_formula_like_names_get_a_quote(capsys: pytest.CaptureFixture[str]) -> None:
    """The ' that --csv adds to a name like =HYPERLINK(...).png is not in the file's name: the help says so."""
    assert main(["predict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a text cell starting with = + - or @ (a file name too) gets a leading '" in text
    assert "--json keeps the exact names" in text


def test_an_output_inside_the_bundle_is_refused_so_the_bundle_stays_usable(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A results file added to the bundle made every later predict and build of it fail verification."""
    (tmp_path / "link").symlink_to(tiny_bundle)
    for target in (
        tiny_bundle / "results.csv",
        tmp_path / "link" / "results.csv",
        tiny_bundle / "engines" / "results.csv",
    ):
        target.parent.mkdir(exist_ok=True)
        assert main(["predict", str(tiny_bundle), str(inbox), "--csv", "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"-o {target}: is inside the bundle {tiny_bundle}" in err
        assert f"write the results outside the bundle, e.g. -o {tmp_path / 'results.csv'}" in err
        assert "images classified" not in err and not target.exists()
    assert main(["predict", str(tiny_bundle), str(inbox), "--csv", "-o", str(tmp_path / "results.csv")]) == 0
    capsys.readouterr()
    main(
        ["build", str(tiny_bundle), "--backend", "ort-cpu"]
    )  # fails later: the tiny bundle has no golden set
    assert "manifest verified: 4 files match their sha256" in capsys.readouterr().err


def test_an_existing_output_is_replaced_only_with_overwrite(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = write_image(tmp_path / "other_scan.png", np.full((40, 40), 99, np.uint8))
    before = sha256_file(target)
    assert main(["predict", str(tiny_bundle), str(inbox / "dark.png"), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"-o {target}: exists; pass --overwrite to replace it" in err and "images classified" not in err
    assert sha256_file(target) == before
    assert main(["predict", str(tiny_bundle), str(inbox / "dark.png"), "-o", str(target), "--overwrite"]) == 0
    assert str(inbox / "dark.png") in target.read_text() and "decision@" in target.read_text()


def test_an_input_is_never_overwritten_even_with_overwrite(
    tiny_bundle: Path, inbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = inbox / "ward 2" / "mid.png"
    before = sha256_file(target)
    assert main(["predict", str(tiny_bundle), str(inbox), "-o", str(target), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"-o {target}: is one of the inputs; refusing to overwrite an input, even with --overwrite" in err
    assert sha256_file(target) == before


def test_an_output_that_is_not_a_file_is_refused(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for overwrite in ([], ["--overwrite"]):
        assert main(["predict", str(tiny_bundle), str(inbox), "-o", str(pipe), *overwrite]) == 2
        assert f"-o {pipe}: exists and is not a file; choose another -o" in capsys.readouterr().err
        assert pipe.is_fifo()


def test_a_failed_overwrite_keeps_the_earlier_results_whole(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 250 characters pass the -o check, but the temporary file beside it gets a name over 255: the write fails.
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / ("r" * 246 + ".csv")
    target.write_text("earlier results\n")
    command = [
        "predict",
        str(tiny_bundle),
        str(inbox / "dark.png"),
        "--csv",
        "-o",
        str(target),
        "--overwrite",
    ]
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert target.read_text() == "earlier results\n", "never a truncated or half-written file"
    assert out.startswith("file,probability") and f"cannot write {target}" in err
    assert list((tmp_path / "out").iterdir()) == [target], "no temporary file left behind"


def test_a_folder_lists_every_file_it_does_not_classify(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """IM000001 (a PNG without extension, as PACS exports write) and .jfif are classified; .webp fails
    with the decoder's reason; a text file is SKIPPED, listed everywhere a result is, and no failure."""
    import cv2

    scans = tmp_path / "export"
    write_image(scans / "a.png", np.full((40, 40), 30, np.uint8))
    write_image(scans / "IM000001", np.full((40, 40), 230, np.uint8), ".png")
    write_image(scans / "c.jfif", np.full((40, 40), 40, np.uint8), ".jpg")
    (scans / "b.webp").write_bytes(cv2.imencode(".webp", np.full((40, 40), 50, np.uint8))[1].tobytes())
    (scans / "README.TXT").write_text("burned by the PACS")
    (scans / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    (scans / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    readme, webp = str(scans / "README.TXT"), str(scans / "b.webp")
    not_an_image = "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM"

    assert main(["predict", str(tiny_bundle), str(scans)]) == 1  # b.webp failed
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(str(scans))}
    assert rows[str(scans / "IM000001")][1:3] == ["PNEUMONIA", "abnormal"]
    assert rows[str(scans / "c.jfif")][1:3] == ["NORMAL", "normal"]
    assert rows[webp] == ["-", "-", "FAILED", "-"] and rows[readme] == ["-", "-", "SKIPPED", "-"]
    assert f"FAILED {webp}: WebP file: this format is not supported" in out
    assert f"SKIPPED {readme}: {not_an_image}" in out
    assert "._a.png" not in out + err and ".DS_Store" not in out + err
    assert "3 images classified (1 abnormal, 2 normal), 1 failed" in err
    assert f"1 files not read: {readme} (not images; SKIPPED in the results, each with its reason)" in err

    assert main(["predict", str(tiny_bundle), str(scans), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in document["results"]] == [
        str(scans / n) for n in ("IM000001", "a.png", "c.jfif")
    ]
    assert [f["source"] for f in document["failures"]] == [webp]
    assert document["skipped"] == [{"source": readme, "reason": not_an_image}]

    assert main(["predict", str(tiny_bundle), str(scans), "--csv"]) == 1
    csv_rows = {r["file"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert (csv_rows[readme]["decision"], csv_rows[readme]["error"]) == ("SKIPPED", not_an_image)
    assert csv_rows[readme]["model_version"] == "tiny-test-1" and csv_rows[readme]["threshold"] == "0.5"

    (scans / "b.webp").unlink()  # what remains is classified: a skipped file is no failure
    assert main(["predict", str(tiny_bundle), str(scans), "--csv", "-o", str(tmp_path / "r.csv")]) == 0
    assert "1 files not read" in capsys.readouterr().err


def test_the_summary_says_model_threshold_and_synthetic_when_results_go_to_a_file(
    tiny_bundle: Path, inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fmt in ("--csv", "--json", "--batch"):
        target = tmp_path / f"results{fmt}"
        extra = ["3"] if fmt == "--batch" else []
        assert main(["predict", str(tiny_bundle), str(inbox), fmt, *extra, "-o", str(target)]) == 0
        out, err = capsys.readouterr()
        assert out == ""
        [summary] = [line for line in err.splitlines() if "images classified" in line]
        assert summary.endswith(
            "3 images classified (1 abnormal, 2 normal), 0 failed; model tiny-test-1, threshold 0.5000 on "
            "P(PNEUMONIA) *** SYNTHETIC: trained on procedural phantom images, not X-rays. Demo only. ***"
        )


def test_the_table_never_shows_a_probability_on_the_wrong_side_of_its_threshold(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in the review: threshold 0.66687 and p 0.66690 printed as '0.6669 abnormal' under 'decision@0.667'."""
    import re

    from edge_runtime.bundle import write_manifest
    from edge_runtime.contract import ModelInfo

    scans = tmp_path / "grays"
    for value in range(120, 200):
        write_image(scans / f"{value}.png", np.full((32, 32), value, np.uint8))
    assert main(["predict", str(tiny_bundle), str(scans), "--json"]) == 0
    probabilities = [r["probability"] for r in json.loads(capsys.readouterr().out)["results"]]
    # a p whose 4-decimal rounding is below its 3-decimal one: a threshold just under it rounds above it
    p = next(p for p in probabilities if 0.00055 <= p % 0.001 < 0.00094)
    for threshold in (p - 0.00003, p + 1e-7):  # abnormal by a hair; normal by a hair
        ModelInfo(model_version="tiny-test-1", arch="tiny", threshold=threshold, synthetic=True).save(
            tiny_bundle
        )
        write_manifest(tiny_bundle)
        assert main(["predict", str(tiny_bundle), str(scans)]) == 0
        out, err = capsys.readouterr()
        [shown] = re.findall(r"decision@(\d\.\d+)", out)
        rows = [line.split() for line in out.splitlines() if line.startswith(str(scans))]
        assert len(rows) == len(probabilities)
        for _, probability, _, decision, _ in rows:
            assert len(probability.split(".")[1]) <= len(shown.split(".")[1])
            assert (float(probability) >= float(shown)) == (decision == "abnormal"), (
                probability,
                decision,
                shown,
            )
        assert f"threshold {shown} on P(PNEUMONIA)" in out and f"threshold {shown} on P(PNEUMONIA)" in err
        assert main(["predict", str(tiny_bundle), str(scans), "--csv"]) == 0
        for row in csv.DictReader(io.StringIO(capsys.readouterr().out)):
            assert (float(row["probability"]) >= float(row["threshold"])) == (
                row["decision"] == "abnormal"
            ), row
