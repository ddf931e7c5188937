"""Result records of the watch daemon and the files that carry them.

Three outputs per input, all in the outbox:

* a per-image JSON beside the moved input, ``done/NAME.json`` (or
  ``failed/NAME.error.json``), written atomically: temp file in the same
  folder, fsync, rename, fsync of the folder. A reader sees the whole file
  or none of it.
* one line in ``results.jsonl``: the same record, compact, one JSON object a
  line, UTF-8.
* one line in ``results.csv``: the main columns (:data:`CSV_COLUMNS`) for a
  spreadsheet, the SYNTHETIC warning among them; text fields have control
  characters (a newline in a file name) replaced by ``?`` so that one line is
  always one record, and a leading ``'`` when they start like a formula
  (``= + - @``), so a file name is never a live formula; results.jsonl keeps
  the exact text.

The two logs are append-only. Each batch is one ``write`` on an ``O_APPEND``
descriptor followed by ``fsync``. A crash can still leave the tail of a batch
missing, or (power cut, full disk) a torn last line; :meth:`AppendLog.repair_tail`
runs under the journal (``edge_runtime.journal``) before anything else is
appended: it looks only at the bytes after the offset the claim recorded,
cuts a torn or unparseable tail, re-appends complete lines that followed it,
and returns the result ids already present, so the batch appends exactly
the missing ones. Every line carries a unique ``id``; a reader that wants to
be defensive can de-duplicate by it, but the daemon never writes an id twice.
Readers should consume only lines that end with a newline.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.contract import INTENDED_USE, SYNTHETIC_WARNING
from edge_runtime.fileio import fsync_dir
from edge_runtime.predictor import Prediction

RESULT_SCHEMA = "pneumo-edge/watch-result/1"
RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
DONE_SUFFIX = ".json"
FAILED_SUFFIX = ".error.json"
FAILED_NOTE = "No result: the file could not be read as an image. Nothing was inferred from it."

CSV_COLUMNS = (
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
    # SYNTHETIC_WARNING on every row of a bundle trained on synthetic images, '' otherwise: a CSV
    # row is read alone, in a spreadsheet, so it says so itself. Last, so readers by position keep working.
    "warning",
)
# The header of results.csv files begun before the warning column: such a file keeps its own
# layout (see AppendLog.columns), so no reader meets rows wider than their header.
CSV_COLUMNS_BEFORE_WARNING = CSV_COLUMNS[:-1]
_ID = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: first characters that make a spreadsheet read a cell as a formula
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_TEMP_PREFIX = ".pneumo-result-"
#: errnos of a link(2) the filesystem does not support (exFAT and FAT: EPERM)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


@dataclass(frozen=True)
class ModelStamp:
    """What produced (or would have produced) a result: carried by failures too."""

    model_version: str
    model_sha256: str
    backend: str
    precision: str
    threshold: float
    synthetic: bool


def done_record(
    prediction: Prediction,
    *,
    result_id: str,
    original_name: str,
    moved_to: str | None,
    result_file: str,
    input_bytes: int,
) -> dict[str, Any]:
    """The record of one inferred image (``prediction.input_sha256`` must be set)."""
    record = prediction.to_dict()
    if prediction.synthetic:
        record["warning"] = SYNTHETIC_WARNING
    record.update(
        schema=RESULT_SCHEMA,
        id=result_id,
        status="done",
        original_name=original_name,
        moved_to=moved_to,
        result_file=result_file,
        input_bytes=input_bytes,
        intended_use=INTENDED_USE,
        reason=None,
        error_kind=None,
    )
    return record


def failed_record(
    stamp: ModelStamp,
    *,
    result_id: str,
    original_name: str,
    source: str,
    moved_to: str | None,
    result_file: str,
    error_kind: str,
    reason: str,
    timestamp: str,
    input_sha256: str = "",
    input_bytes: int | None = None,
) -> dict[str, Any]:
    """The record of an input that gave no result, and why."""
    record: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "id": result_id,
        "status": "failed",
        "original_name": original_name,
        "source": source,
        "moved_to": moved_to,
        "result_file": result_file,
        "input_sha256": input_sha256,
        "input_bytes": input_bytes,
        "error_kind": error_kind,
        "reason": reason,
        "probability": None,
        "label": None,
        "decision": None,
        "threshold": stamp.threshold,
        "model_version": stamp.model_version,
        "model_sha256": stamp.model_sha256,
        "backend": stamp.backend,
        "precision": stamp.precision,
        "latency_ms": None,
        "timestamp": timestamp,
        "synthetic": stamp.synthetic,
        "note": FAILED_NOTE,
    }
    if stamp.synthetic:
        record["warning"] = SYNTHETIC_WARNING
    return record


def result_file_name(target_name: str, status: str) -> str:
    """``x.jpg`` -> ``x.jpg.json`` in done/, ``x.jpg.error.json`` in failed/."""
    return target_name + (DONE_SUFFIX if status == "done" else FAILED_SUFFIX)


def _encode_json(record: dict[str, Any], indent: int | None) -> bytes:
    separators = (",", ": ") if indent else (",", ":")
    text = json.dumps(record, ensure_ascii=False, sort_keys=True, indent=indent, separators=separators)
    # A Linux file name may hold bytes that are not UTF-8 (os.fsdecode keeps them
    # as lone surrogates); backslashreplace turns each into the JSON escape \udcXX.
    return text.encode("utf-8", "backslashreplace")


def write_json_files(files: Sequence[tuple[Path, dict[str, Any]]], replace: bool = True) -> None:
    """Write several JSON files atomically: each to a temp file + fsync, then rename, then fsync the folders.

    Files are made 0644 (``mkstemp`` gives 0600): results and the heartbeat
    are read by other users, such as a hospital integration or a monitor.
    ``replace=False``: a path that exists already raises FileExistsError and is left as it is
    (:func:`place_new`); files placed before it stay.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, record in files:
            fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(_encode_json(record, indent=2) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in staged:
            if replace:
                os.replace(tmp, path)
            else:
                place_new(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    for folder in sorted({path.parent for path, _ in files}):
        fsync_dir(folder)


def place_new(tmp: str, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` exists: then FileExistsError, and ``path`` untouched.

    A hard link fails on an existing name atomically, where a rename replaces it (also the other
    spelling of the name on a case-insensitive disk). Without hard links (exFAT, FAT, some CIFS
    servers) the name is checked first, then renamed: only a foreign write in between can race.
    """
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno != errno.EEXIST and exc.errno not in _NO_HARD_LINKS:
            raise
        if exc.errno == errno.EEXIST or os.path.lexists(path):
            raise FileExistsError(
                errno.EEXIST, "another file has this name and is never replaced; move it away", str(path)
            ) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files this module left in ``folder`` when killed mid-write (never anything else)."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(".tmp"):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def _csv_header(columns: tuple[str, ...]) -> bytes:
    return (",".join(columns) + "\n").encode()


def spreadsheet_text(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: one starting with ``= + - @``, a tab or a
    carriage return gets a leading ``'`` (OWASP's advice on CSV injection), since a file named
    ``=HYPERLINK(...).png`` would otherwise be a live formula. For text fields only, never numbers."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return spreadsheet_text(_CONTROL.sub("?", value))
    return _CONTROL.sub("?", str(value))


class AppendLog:
    """``results.jsonl`` or ``results.csv``: append a batch, repair a torn tail."""

    def __init__(self, path: Path, fmt: str) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown log format {fmt!r}")
        self.path = Path(path)
        self.fmt = fmt

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def header(self) -> bytes:
        return _csv_header(CSV_COLUMNS) if self.fmt == "csv" else b""

    def columns(self) -> tuple[str, ...]:
        """The CSV columns rows are written with: :data:`CSV_COLUMNS`, unless the file was begun
        with the older header (no ``warning`` column), whose layout it then keeps until rotated."""
        try:
            with open(self.path, "rb") as handle:
                first = handle.readline()
        except FileNotFoundError:
            return CSV_COLUMNS
        return CSV_COLUMNS_BEFORE_WARNING if first == _csv_header(CSV_COLUMNS_BEFORE_WARNING) else CSV_COLUMNS

    def encode(self, records: Iterable[dict[str, Any]]) -> bytes:
        """Lines for ``records``; no line contains a newline of its own."""
        if self.fmt == "jsonl":
            return b"".join(_encode_json(r, indent=None) + b"\n" for r in records)
        columns = self.columns()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for record in records:
            writer.writerow([_csv_value(record.get(column)) for column in columns])
        return buffer.getvalue().encode("utf-8", "backslashreplace")

    def write_bytes(self, data: bytes) -> None:
        """One append (a header first when the file is new or empty), then fsync."""
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                data = self.header() + data
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if records:
            self.write_bytes(self.encode(records))

    def _line_id(self, line: bytes) -> str | None:
        """The result id of a complete line; '' for the CSV header; None when the line is garbage."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if self.fmt == "jsonl":
            try:
                value = json.loads(text)
            except ValueError:
                return None
            result_id = value.get("id") if isinstance(value, dict) else None
        else:
            if line + b"\n" in (self.header(), _csv_header(CSV_COLUMNS_BEFORE_WARNING)):
                return ""
            try:
                row = next(csv.reader([text]))
            except (csv.Error, StopIteration):
                return None
            # Either layout is a complete line: repair never cuts the rows of a file begun by an older version.
            result_id = row[0] if len(row) in (len(CSV_COLUMNS), len(CSV_COLUMNS_BEFORE_WARNING)) else None
        return result_id if isinstance(result_id, str) and _ID.match(result_id) else None

    def repair_tail(self, offset: int) -> set[str]:
        """Ids of complete lines after ``offset``; a torn or garbled tail is cut first.

        ``offset`` is the file size the journal recorded before the batch, so
        everything after it belongs to that one batch. If the file is now
        shorter (rotated or truncated by hand), the whole file is examined.
        The bytes before the first bad line are never touched; good lines
        after it are appended again in order, then the file is fsynced.
        """
        size = self.size()
        if size == 0:
            return set()
        start = offset if size >= offset else 0
        with open(self.path, "rb") as handle:
            handle.seek(start)
            tail = handle.read()
        pieces = tail.split(b"\n")
        complete, torn = pieces[:-1], pieces[-1]
        present: set[str] = set()
        keep_after_cut: list[bytes] = []
        cut: int | None = None
        position = start
        for line in complete:
            line_id = self._line_id(line)
            if line_id is None:
                if cut is None:
                    cut = position
            elif cut is not None:
                if line_id:
                    keep_after_cut.append(line + b"\n")
                    present.add(line_id)
            elif line_id:
                present.add(line_id)
            position += len(line) + 1
        if torn and cut is None:
            cut = position
        if cut is None:
            return present
        with open(self.path, "r+b") as handle:
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_after_cut:
            self.write_bytes(b"".join(keep_after_cut))
        return present
