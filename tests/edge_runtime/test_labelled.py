"""The one reader of labelled image sets: class folders and a run's split.json, as every stage reads them."""

from __future__ import annotations

import json
import shutil
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


def _as_pneumo_data_split_wrote_it(folder: Path, typed_root: str, files: dict[str, Path]) -> Path:
    """A split.json as written before session 21: --data as typed (relative), image paths absolute."""
    return _split(
        folder / "split.json", Path(typed_root), [{"path": str(p), "label": k} for k, p in files.items()]
    )


def test_a_split_file_with_a_relative_root_follows_its_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pneumo data split data -o data/split.json`, the tree copied elsewhere and the original removed.

    Before session 21 the relative root could not be matched with the absolute paths: --data did not
    re-root them ("not found ... check --data NEW" although every file was there), and refs were absolute.
    """
    monkeypatch.chdir(tmp_path)
    files = _data(tmp_path / "data")
    _as_pneumo_data_split_wrote_it(tmp_path / "data", "data", files)
    moved = tmp_path / "elsewhere" / "xray"
    shutil.copytree(tmp_path / "data", moved)
    shutil.rmtree(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "elsewhere")
    images = read_split(moved / "split.json", "test", LABELS, data_root=moved)
    assert [im.path for im in images] == [moved / "test" / k / p.name for k, p in files.items()]
    assert [im.ref for im in images] == ["test/NORMAL/normal-1.png", "test/PNEUMONIA/pneumonia-1.png"]


def test_refs_are_relative_to_the_data_root_whatever_root_was_typed(tmp_path: Path) -> None:
    """Calibration and golden-set provenance records refs: they must not change with the folder it ran in."""
    files = _data(tmp_path / "work" / "shared" / "data")
    split = _as_pneumo_data_split_wrote_it(tmp_path, "../shared/data", files)
    images = read_split(split, "test", LABELS)
    assert [im.path for im in images] == list(files.values())
    assert [im.ref for im in images] == ["test/NORMAL/normal-1.png", "test/PNEUMONIA/pneumonia-1.png"]


def test_a_relative_root_is_relative_to_the_split_file_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _data(tmp_path / "data")
    (tmp_path / "data" / "lists").mkdir()
    split = _split(
        tmp_path / "data" / "lists" / "split.json",
        Path(".."),
        [{"path": p.relative_to(tmp_path / "data").as_posix(), "label": k} for k, p in files.items()],
    )
    monkeypatch.chdir(tmp_path)
    images = read_split(split, "test", LABELS)
    assert [im.path.resolve() for im in images] == list(files.values())
    assert [im.ref for im in images] == ["test/NORMAL/normal-1.png", "test/PNEUMONIA/pneumonia-1.png"]


def test_data_root_is_where_the_images_are_read_even_when_the_old_copy_remains(tmp_path: Path) -> None:
    """--data names the data set to use: a copy is read from there, not from the recorded folder."""
    files = _data(tmp_path / "old")
    split = _split(
        tmp_path / "split.json", tmp_path / "old", [{"path": str(p), "label": k} for k, p in files.items()]
    )
    shutil.copytree(tmp_path / "old", tmp_path / "copy")
    images = read_split(split, "test", LABELS, data_root=tmp_path / "copy")
    assert [im.path for im in images] == [tmp_path / "copy" / "test" / k / p.name for k, p in files.items()]


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
