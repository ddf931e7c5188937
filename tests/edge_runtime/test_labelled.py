"""The one reader of labelled image sets: class folders and a run's split.json, as every stage reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import LabelledSetError
from edge_runtime.labelled import case_hint, image_files, read_split
from tests.conftest import write_image

LABELS = ("NORMAL", "PNEUMONIA")


def _data(root: Path) -> dict[str, Path]:
    return {
        label: write_image(root / "test" / label / f"{label.lower()}-1.png", np.full((20, 20), 80, np.uint8))
        for label in LABELS
    }


def _split(path: Path, root: Path, entries: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps({"root": str(root), "labels": list(LABELS), "test": entries, "train": []}))
    return path


def test_image_files_are_sorted_recursive_and_skip_hidden_and_other_files(tmp_path: Path) -> None:
    write_image(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "sub" / "a.jpeg", np.zeros((8, 8), np.uint8))
    (tmp_path / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == ["b.png", "sub/a.jpeg"]


def test_case_hint_names_the_rename_only_for_a_case_only_mismatch() -> None:
    assert case_hint("normal", LABELS) == " (labels are case-sensitive: rename 'normal' to 'NORMAL')"
    assert case_hint("NORMAL", LABELS) == ""
    assert case_hint("COVID", LABELS) == ""


def test_relative_and_absolute_entries_resolve_with_refs_relative_to_the_root(tmp_path: Path) -> None:
    files = _data(tmp_path / "data")
    split = _split(
        tmp_path / "split.json",
        tmp_path / "data",
        [
            {"path": "test/NORMAL/normal-1.png", "label": "NORMAL"},
            {"path": str(files["PNEUMONIA"]), "label": "PNEUMONIA", "patient_id": "p1"},
        ],
    )
    images = read_split(split, "test", LABELS)
    assert [(im.path, im.label, im.split) for im in images] == [
        (files["NORMAL"], "NORMAL", "test"),
        (files["PNEUMONIA"], "PNEUMONIA", "test"),
    ]
    assert [im.ref for im in images] == ["test/NORMAL/normal-1.png", "test/PNEUMONIA/pneumonia-1.png"]
    assert read_split(split, "train", LABELS) == []


def test_a_moved_data_set_is_found_under_data_root_and_named_when_it_is_not(tmp_path: Path) -> None:
    files = _data(tmp_path / "old")
    split = _split(
        tmp_path / "split.json", tmp_path / "old", [{"path": str(p), "label": k} for k, p in files.items()]
    )
    (tmp_path / "old").rename(tmp_path / "new")
    with pytest.raises(LabelledSetError, match=r"not found \(2 of 2 missing\); pass --data ROOT"):
        read_split(split, "test", LABELS)
    images = read_split(split, "test", LABELS, data_root=tmp_path / "new")
    assert [im.path for im in images] == [tmp_path / "new" / "test" / k / p.name for k, p in files.items()]
    with pytest.raises(LabelledSetError, match=r"check --data .*elsewhere"):
        read_split(split, "test", LABELS, data_root=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read split JSON"),
        ('["a list"]', "no 'test' list"),
        ('{"test": [{"label": "NORMAL"}]}', "a test entry lacks 'path' or 'label'"),
        ('{"test": [{"path": "x.png", "label": "normal"}]}', "rename 'normal' to 'NORMAL'"),
    ],
)
def test_malformed_split_files_are_named_with_what_was_expected(
    tmp_path: Path, content: str, message: str
) -> None:
    split = tmp_path / "split.json"
    split.write_text(content)
    with pytest.raises(LabelledSetError, match=message) as caught:
        read_split(split, "test", LABELS)
    assert str(split) in str(caught.value)
    with pytest.raises(LabelledSetError, match="unknown split 'holdout'"):
        read_split(split, "holdout", LABELS)
