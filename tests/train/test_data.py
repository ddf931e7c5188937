"""Discovery, patient-wise and random splits, split.json, and the `pneumo data split` command."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_image
from train.data import (
    DataConfig,
    Splits,
    discover,
    make_splits,
    parse_kind,
    parse_patient_id,
)
from train.data_cli import main as data_main
from train.errors import DataError

PNEUMONIA_NAMES = [
    "person1_bacteria_1.jpeg",
    "person1_bacteria_2.jpeg",
    "person2_virus_3.jpeg",
    "person3_bacteria_4.jpeg",
    "person4_virus_5.jpeg",
    "person4_virus_6.jpeg",
    "person5_bacteria_7.jpeg",
    "person6_virus_8.jpeg",
]
NORMAL_NAMES = [
    "IM-0001-0001.jpeg",
    "IM-0002-0001.jpeg",
    "IM-0002-0002.jpeg",
    "NORMAL2-IM-0003-0001.jpeg",
    "IM-0004-0001.jpeg",
    "IM-0005-0001.jpeg",
    "NORMAL2-IM-0006-0001.jpeg",
    "IM-0007-0001.jpeg",
]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 48), dtype=np.uint8)


def make_folder(root: Path, layout: str = "split", extra_class: str | None = None) -> Path:
    """A small Kermany-named data folder with real JPEG files."""
    seed = 0
    names = {"NORMAL": NORMAL_NAMES, "PNEUMONIA": PNEUMONIA_NAMES}
    if extra_class:
        names[extra_class] = [f"{extra_class.lower()}{i}_x_{i}.jpeg" for i in range(6)]
    for label, files in names.items():
        for i, name in enumerate(files):
            if layout == "flat":
                folder = root / label
            else:
                folder = root / ("test" if i >= len(files) - 2 else "val" if i == 0 else "train") / label
            seed += 1
            write_image(folder / name, _image(seed))
    return root


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("synth-person12_bacteria_1.jpeg", "synth-person12"),
        ("SYNTH-IM-0012-0001.jpeg", "SYNTH-IM-0012"),
        ("scan_from_clinic.png", "scan_from_clinic"),
    ],
)
def test_parse_patient_id(name: str, patient: str) -> None:
    assert parse_patient_id(name) == patient


def test_parse_kind() -> None:
    assert parse_kind("person1_bacteria_1.jpeg") == "BACTERIA"
    assert parse_kind("person447_virus_921_1.jpeg") == "VIRUS"
    assert parse_kind("IM-0115-0001.jpeg") is None


def test_discover_split_layout(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"macOS resource fork")
    samples = discover(root)
    assert len(samples) == 16
    assert {s.label for s in samples} == {"NORMAL", "PNEUMONIA"}
    assert {s.split for s in samples} == {"train", "val", "test"}
    by_name = {s.path.name: s for s in samples}
    assert by_name["NORMAL2-IM-0003-0001.jpeg"].patient_id == "NORMAL2-IM-0003"
    assert by_name["person4_virus_6.jpeg"].patient_id == "person4"
    assert (
        by_name["person4_virus_6.jpeg"].source == "unknown" and by_name["person4_virus_6.jpeg"].sha256 == ""
    )
    assert all(s.path.is_absolute() and s.path.is_file() for s in samples)


def test_discover_flat_layout_any_number_of_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "flat", layout="flat", extra_class="COVID")
    samples = discover(root)
    assert {s.split for s in samples} == {""}
    assert sorted({s.label for s in samples}) == ["COVID", "NORMAL", "PNEUMONIA"]
    splits = make_splits(DataConfig(root, flat_test_fraction=0.3, val_fraction=0.2))
    assert splits.labels == ("COVID", "NORMAL", "PNEUMONIA")
    patients = {name: {s.patient_id for s in splits.split(name)} for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(splits.split(n)) for n in ("train", "val", "test")) == len(samples)
    assert any("flat layout" in note for note in splits.notes)


def test_kind_mode_three_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    samples = discover(root, label_mode="kind")
    assert sorted({s.label for s in samples}) == ["BACTERIA", "NORMAL", "VIRUS"]
    assert {s.label for s in samples if "virus" in s.path.name} == {"VIRUS"}
    splits = make_splits(DataConfig(root, label_mode="kind", val_fraction=0.3))
    assert splits.labels == ("BACTERIA", "NORMAL", "VIRUS")


def test_kind_mode_needs_kermany_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    odd = write_image(root / "train" / "PNEUMONIA" / "scan7.jpeg", _image(99))
    with pytest.raises(DataError, match=str(odd)):
        discover(root, label_mode="kind")


def test_error_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere.*not found"):
        discover(tmp_path / "nothere")


def test_error_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*is empty"):
        discover(tmp_path / "empty")


def test_error_no_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "loose"
    write_image(root / "a.jpeg", _image(1))
    with pytest.raises(DataError, match="no class folders"):
        discover(root)


def test_error_split_missing_a_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    for path in (root / "test" / "PNEUMONIA").iterdir():
        path.unlink()
    (root / "test" / "PNEUMONIA").rmdir()
    with pytest.raises(DataError, match=r"test/PNEUMONIA: class folder missing in split 'test'"):
        discover(root)


def test_error_empty_class_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "train" / "COVID").mkdir()
    for split in ("val", "test"):
        write_image(root / split / "COVID" / f"c-{split}.jpeg", _image(5))
    with pytest.raises(DataError, match=r"train/COVID: no image files"):
        discover(root)


def test_patient_mode_folds_official_val_and_is_patient_disjoint(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    splits = make_splits(DataConfig(root, val_fraction=0.3))
    assert {s.split for s in splits.test} == {"test"} and len(splits.test) == 4
    pooled = splits.train + splits.val
    assert sum(s.split == "val" for s in pooled) == 2  # the official val images are in the pool
    assert not {s.patient_id for s in splits.train} & {s.patient_id for s in splits.val}
    assert any("official val (2 images) merged" in note for note in splits.notes)
    # person1 has two images: they stay together
    person1 = [s for s in pooled if s.patient_id == "person1"]
    assert len(person1) == 2 and len({s in splits.val for s in person1}) == 1


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    first = make_splits(DataConfig(root, val_fraction=0.3, seed=1))
    again = make_splits(DataConfig(root, val_fraction=0.3, seed=1))
    assert first.to_json() == again.to_json()
    vals = {
        tuple(s.patient_id for s in make_splits(DataConfig(root, val_fraction=0.3, seed=k)).val)
        for k in range(6)
    }
    assert len(vals) > 1


def test_undersample_balances_train_only(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", layout="flat")
    for i in range(10):  # make PNEUMONIA the clear majority
        write_image(root / "PNEUMONIA" / f"person{100 + i}_bacteria_{200 + i}.jpeg", _image(300 + i))
    plain = make_splits(DataConfig(root, flat_test_fraction=0.2, val_fraction=0.2))
    balanced = make_splits(DataConfig(root, flat_test_fraction=0.2, val_fraction=0.2, undersample=True))
    counts = balanced.summary()["splits"]["train"]["per_class"]
    assert counts["NORMAL"] == counts["PNEUMONIA"]
    plain_counts = plain.summary()["splits"]["train"]["per_class"]
    assert plain_counts["PNEUMONIA"] > plain_counts["NORMAL"] == counts["NORMAL"]
    assert [s.path for s in balanced.test] == [s.path for s in plain.test]
    assert any("undersampled" in note for note in balanced.notes)


def test_max_per_class_caps_every_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", layout="flat")
    splits = make_splits(DataConfig(root, flat_test_fraction=0.3, val_fraction=0.3, max_per_class=1))
    for name in ("train", "val", "test"):
        per_class = splits.summary()["splits"][name]["per_class"]
        assert max(per_class.values()) == 1
    again = make_splits(DataConfig(root, flat_test_fraction=0.3, val_fraction=0.3, max_per_class=1))
    assert splits.to_json() == again.to_json()


def test_manifest_columns_are_used(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    with open(root / "MANIFEST.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "label", "patient_id", "pneumonia_kind", "sha256", "source"])
        writer.writerow(
            ["train/NORMAL/IM-0002-0001.jpeg", "train", "NORMAL", "child-7", "none", "ab" * 32, "original"]
        )
    by_name = {s.path.name: s for s in discover(root)}
    assert by_name["IM-0002-0001.jpeg"].patient_id == "child-7"
    assert by_name["IM-0002-0001.jpeg"].source == "original"
    assert by_name["IM-0002-0001.jpeg"].sha256 == "ab" * 32
    assert by_name["IM-0002-0002.jpeg"].patient_id == "IM-0002"  # not in the manifest: parsed


def test_sources_original_needs_a_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    with pytest.raises(DataError, match="MANIFEST.csv"):
        make_splits(DataConfig(root, sources="original"))


def test_config_validation() -> None:
    with pytest.raises(DataError, match="random_fractions"):
        DataConfig(Path("x"), random_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="val_fraction"):
        DataConfig(Path("x"), val_fraction=0.0)
    with pytest.raises(DataError, match="split_mode"):
        DataConfig(Path("x"), split_mode="stratified")  # type: ignore[arg-type]


def test_split_json_roundtrip(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    splits = make_splits(DataConfig(root, val_fraction=0.3, seed=3))
    path = splits.save(tmp_path / "run" / "split.json")
    loaded = Splits.load(path)
    assert loaded.labels == splits.labels
    assert loaded.config == splits.config
    assert loaded.train == splits.train and loaded.val == splits.val and loaded.test == splits.test
    data = splits.to_json()
    assert set(data["train"][0]) >= {"path", "label", "patient_id", "source", "split"}
    assert data["root"] == str(root.resolve())


def test_split_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data")
    out = tmp_path / "split.json"
    assert data_main(["split", str(root), "--val-fraction", "0.3", "-o", str(out)], prog="pneumo data") == 0
    text = capsys.readouterr().out
    assert "patients shared" in text and "next: pneumo train" in text
    assert Splits.load(out).labels == ("NORMAL", "PNEUMONIA")
    assert data_main(["split", str(tmp_path / "missing")], prog="pneumo data") == 1
    assert "not found" in capsys.readouterr().err
    assert data_main(["split", str(root), "--split-mode", "bogus"], prog="pneumo data") == 2
    assert data_main([], prog="pneumo data") == 2


def _folders(samples: list) -> set[str]:
    return {s.split for s in samples}


def test_random_mode_splits_the_official_train_folder_alone_like_seed_000(tmp_path: Path) -> None:
    """Seed 000 loaded data/chest_xray/train and split it 70/20/10; the val and test folders were never read."""
    root = make_folder(tmp_path / "data")  # train/ 10 images, val/ 2, test/ 4
    splits = make_splits(DataConfig(root, split_mode="random"))
    everything = splits.train + splits.val + splits.test
    assert _folders(everything) == {"train"} and len(everything) == 10
    assert [len(splits.train), len(splits.val), len(splits.test)] == [7, 2, 1]
    assert any(
        "the official train folder's 10 images (random_pool 'train', as seed 000 split it; val/ 2 and test/ 4 "
        "images unused)" in note
        for note in splits.notes
    )
    # the provenance says which pool: the summary (model card) and split.json's config
    assert splits.summary()["random_pool"] == "train"
    assert splits.to_json()["config"]["random_pool"] == "train"
    assert "random_pool" not in make_splits(DataConfig(root)).summary(), "patient mode pools nothing"


def test_random_pool_all_pools_the_val_and_test_folders_too(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    splits = make_splits(DataConfig(root, split_mode="random", random_pool="all"))
    everything = splits.train + splits.val + splits.test
    assert _folders(everything) == {"train", "val", "test"} and len(everything) == 16
    assert any(
        "all 16 images of the train, val, test folders pooled (random_pool 'all'" in n for n in splits.notes
    )
    assert splits.summary()["random_pool"] == "all"
    assert Splits.load(splits.save(tmp_path / "split.json")).config.random_pool == "all"


def test_random_mode_without_a_train_folder_names_the_choice(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    shutil.rmtree(root / "train")
    with pytest.raises(
        DataError, match=r"train: random mode splits the official train folder.*--random-pool all"
    ):
        make_splits(DataConfig(root, split_mode="random"))
    with pytest.raises(DataError, match="random_pool 'banana'"):
        DataConfig(root, split_mode="random", random_pool="banana")  # type: ignore[arg-type]


def test_split_files_of_earlier_random_runs_say_they_pooled_every_folder() -> None:
    """Before session 21 a random split pooled all folders; its split.json has no random_pool to say so."""
    assert DataConfig.from_dict({"root": "x", "split_mode": "random"}).random_pool == "all"
    assert DataConfig.from_dict({"root": "x", "split_mode": "patient"}).random_pool == "train"
    assert (
        DataConfig.from_dict({"root": "x", "split_mode": "random", "random_pool": "train"}).random_pool
        == "train"
    )


def test_split_cli_refuses_options_the_split_mode_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(make_folder(tmp_path / "data"))
    assert data_main(["split", root, "--split-mode", "random", "--val-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "--val-fraction 0.2 has no effect with --split-mode random" in err and "70/20/10" in err
    assert data_main(["split", root, "--random-pool", "all"]) == 2
    assert "--random-pool all has no effect with --split-mode patient" in capsys.readouterr().err
    assert data_main(["split", root, "--split-mode", "random", "--random-pool", "all"]) == 0
    out = capsys.readouterr().out
    assert "random_pool 'all'" in out and "--split random --split-seed 0 --random-pool all" in out


def _move(old: Path, new: Path) -> Path:
    """Copy a data tree to another place and remove the original: the data set moved."""
    shutil.copytree(old, new)
    shutil.rmtree(old)
    return new


def test_a_split_file_follows_its_data_set_to_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pneumo data split data -o data/split.json`, then the folder moves: --data finds every image again.

    Before session 21 split.json recorded the root as typed ("data", relative to the working folder of
    the writer) with absolute image paths, and Splits.load could not re-root them at all.
    """
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "data")
    assert data_main(["split", "data", "--val-fraction", "0.3", "-o", "data/split.json"]) == 0
    assert json.loads((tmp_path / "data" / "split.json").read_text())["root"] == str(
        (tmp_path / "data").resolve()
    )
    new = _move(tmp_path / "data", tmp_path / "elsewhere" / "xray")
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = Splits.load(new / "split.json", data_root=new)
    everything = moved.train + moved.val + moved.test
    assert len(everything) == 16 and all(s.path.is_file() and new in s.path.parents for s in everything)
    assert moved.config.root == new
    recorded = Splits.load(
        new / "split.json"
    )  # without --data: the paths as recorded, gone with the old folder
    assert not any(s.path.is_file() for s in recorded.train)
    assert [s.path.relative_to(recorded.config.root) for s in recorded.train] == [
        s.path.relative_to(new) for s in moved.train
    ]


def test_an_older_split_file_with_a_relative_root_is_re_rooted_too(tmp_path: Path) -> None:
    """Files written before session 21: root as typed (relative to an unknown folder), paths absolute."""
    data = make_folder(tmp_path / "work" / "data")
    written = make_splits(DataConfig(data, val_fraction=0.3)).to_json()
    older = written | {"root": "data", "config": written["config"] | {"root": "data"}}
    (data / "split.json").write_text(json.dumps(older))
    new = _move(data, tmp_path / "moved")
    loaded = Splits.load(new / "split.json", data_root=new)
    assert all(s.path.is_file() for s in loaded.train + loaded.val + loaded.test)
    assert Splits.load(new / "split.json").config.root == data, "the old root, found from the recorded paths"


def test_a_relative_root_is_relative_to_the_split_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A portable split file (root and paths relative) works wherever it and the data set are copied."""
    data = make_folder(tmp_path / "data")
    written = make_splits(DataConfig(data, val_fraction=0.3)).to_json()
    for name in ("train", "val", "test"):
        for entry in written[name]:
            entry["path"] = Path(entry["path"]).relative_to(data).as_posix()
    (data / "lists").mkdir()
    (data / "lists" / "split.json").write_text(json.dumps(written | {"root": ".."}))
    new = _move(data, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)  # not the split file's folder
    loaded = Splits.load(new / "lists" / "split.json")
    assert all(
        s.path.is_file() and new in s.path.resolve().parents for s in loaded.train + loaded.val + loaded.test
    )


# --------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_patient_mode(real_data: Path) -> None:
    splits = make_splits(DataConfig(real_data))
    summary = splits.summary()
    test = summary["splits"]["test"]
    assert test["images"] == 624 and test["per_class"] == {"NORMAL": 234, "PNEUMONIA": 390}
    assert {s.split for s in splits.test} == {"test"}
    assert not {s.patient_id for s in splits.train} & {s.patient_id for s in splits.val}
    assert summary["patient_overlap"]["train-val"]["patients"] == 0
    # the official val (16 images) is folded into the pool
    assert sum(s.split == "val" for s in splits.train + splits.val) == 16
    assert len(splits.train) + len(splits.val) == 5216 + 16
    assert 0.08 < len(splits.val) / (len(splits.train) + len(splits.val)) < 0.12
    # The official split shares 170 `person` ids between train and test (data README).
    assert any(note.startswith("170 patient ids occur in both") for note in splits.notes)


@pytest.mark.data
def test_real_exclude_test_patients_and_originals(real_data: Path) -> None:
    splits = make_splits(DataConfig(real_data, exclude_test_patients=True, sources="original"))
    summary = splits.summary()
    assert all(pair["patients"] == 0 for pair in summary["patient_overlap"].values())
    assert {s.source for s in splits.train + splits.val} == {"original"}
    assert summary["splits"]["test"]["images"] == 624


@pytest.mark.data
@pytest.mark.parametrize(("pool", "images"), [("train", 5216), ("all", 5856)])
def test_real_random_mode_leaks_patients(real_data: Path, pool: str, images: int) -> None:
    splits = make_splits(DataConfig(real_data, split_mode="random", random_pool=pool))  # type: ignore[arg-type]
    summary = splits.summary()
    sizes = [summary["splits"][name]["images"] for name in ("train", "val", "test")]
    assert sum(sizes) == images
    assert sizes == [
        round(0.7 * images),
        round(0.2 * images),
        images - round(0.7 * images) - round(0.2 * images),
    ]
    folders = {
        folder for name in ("train", "val", "test") for folder in summary["splits"][name]["from_folder"]
    }
    assert folders == ({"train"} if pool == "train" else {"train", "val", "test"})
    overlap = summary["patient_overlap"]
    # The leak this mode exists to measure: hundreds of children on both sides.
    assert overlap["train-test"]["patients"] > 200
    assert overlap["train-val"]["patients"] > 400
    assert any("leak" in note for note in splits.notes)


@pytest.mark.data
def test_real_kind_mode(real_data: Path) -> None:
    samples = discover(real_data, label_mode="kind")
    test = [s for s in samples if s.split == "test"]
    counts = {label: sum(s.label == label for s in test) for label in ("BACTERIA", "NORMAL", "VIRUS")}
    assert counts == {"BACTERIA": 242, "NORMAL": 234, "VIRUS": 148}
