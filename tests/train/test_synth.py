"""SYNTHETIC phantoms: deterministic, in the data set's layout, patient-consistent, clearly marked."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import load_image
from train.data import DataConfig, discover, make_splits
from train.data_cli import main as data_main
from train.errors import DataError
from train.synth import MARKER_FILE, SynthConfig, generate, is_synthetic


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpeg"))
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    config = SynthConfig(per_class=12, size=96, seed=7)
    first = generate(tmp_path / "a", config)
    second = generate(tmp_path / "b", config)
    assert first.files == second.files == 24
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    generate(tmp_path / "c", SynthConfig(per_class=12, size=96, seed=8))
    other = _digests(tmp_path / "c")
    assert set(other.values()).isdisjoint(_digests(tmp_path / "a").values())


def test_split_layout_names_and_patients(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    result = generate(root, SynthConfig(per_class=40, size=128, seed=1))
    assert is_synthetic(root) and (root / "README.txt").is_file()
    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["synthetic"] is True and "SYNTHETIC" in marker["warning"]
    assert "not X-rays" in (root / "README.txt").read_text()

    samples = discover(root)
    assert len(samples) == 80 == result.files
    per_split = defaultdict(lambda: defaultdict(int))
    for sample in samples:
        per_split[sample.split][sample.label] += 1
    assert dict(per_split["test"]) == {"NORMAL": 8, "PNEUMONIA": 8}
    assert dict(per_split["val"]) == {"NORMAL": 4, "PNEUMONIA": 4}
    assert dict(per_split["train"]) == {"NORMAL": 28, "PNEUMONIA": 28}
    # Kermany-like names parse into patients; some patients have two images; none straddles splits
    patients = defaultdict(set)
    images = defaultdict(int)
    for sample in samples:
        patients[sample.patient_id].add(sample.split)
        images[sample.patient_id] += 1
        assert sample.patient_id.startswith(("synth-person", "SYNTH-IM-"))
    assert all(len(splits) == 1 for splits in patients.values())
    assert max(images.values()) == 2 and min(images.values()) == 1
    kinds = {s.label for s in discover(root, label_mode="kind")}
    assert kinds == {"BACTERIA", "NORMAL", "VIRUS"}
    splits = make_splits(DataConfig(root))
    assert splits.summary()["patient_overlap"]["train-test"]["patients"] == 0


def test_images_are_decodable_and_sized(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate(root, SynthConfig(per_class=6, size=160, seed=2))
    paths = sorted(root.rglob("*.jpeg"))
    assert len(paths) == 12, f"{len(paths)} images for 6 per class, 2 classes"
    for path in paths:
        image = load_image(path)
        assert image.ndim == 2 and image.shape[0] == 160 and 150 <= image.shape[1] <= 230
        assert image.std() > 10  # not a blank frame


def test_pneumonia_phantoms_have_brighter_lungs(tmp_path: Path) -> None:
    """The signal is there: within the lung band, PNEUMONIA phantoms hold more bright spots."""
    root = tmp_path / "synth"
    generate(root, SynthConfig(per_class=30, size=128, seed=3, layout="flat"))

    def bright_spots(label: str) -> float:
        scores = []
        for path in sorted((root / label).glob("*.jpeg")):
            image = load_image(path).astype(np.float32)
            band = image[int(0.2 * image.shape[0]) : int(0.75 * image.shape[0])]
            scores.append(float(np.mean(np.abs(band - np.median(band)) > 45)))
        return float(np.mean(scores))

    assert bright_spots("PNEUMONIA") > bright_spots("NORMAL")


def test_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    generate(root, SynthConfig(per_class=10, size=96, layout="flat"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["NORMAL", "PNEUMONIA"]
    assert {s.split for s in discover(root)} == {""}


def test_never_writes_into_a_foreign_folder_and_reuses_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "xrays"
    foreign.mkdir()
    (foreign / "keep.jpeg").write_bytes(b"precious")
    with pytest.raises(DataError, match="not empty"):
        generate(foreign, SynthConfig(per_class=4, size=96))
    assert [p.name for p in foreign.iterdir()] == ["keep.jpeg"]

    root = tmp_path / "synth"
    config = SynthConfig(per_class=4, size=96)
    generate(root, config)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpeg")}
    again = generate(root, config)
    assert again.reused and again.files == 8
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpeg")} == before
    with pytest.raises(DataError, match="other|not"):
        generate(root, SynthConfig(per_class=5, size=96))


def test_config_bounds() -> None:
    with pytest.raises(DataError, match="per-class"):
        SynthConfig(per_class=1)
    with pytest.raises(DataError, match="size"):
        SynthConfig(size=20)


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        data_main(["synth", str(out), "--per-class", "6", "--size", "96", "--seed", "4"], prog="pneumo data")
        == 0
    )
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text and "next: pneumo train" in text
    assert is_synthetic(out)
    assert (
        data_main(["synth", str(out), "--per-class", "6", "--size", "96", "--seed", "4", "--json"], prog="x")
        == 0
    )
    assert json.loads(capsys.readouterr().out)["reused"] is True
    assert data_main(["synth", str(out), "--per-class", "0"], prog="pneumo data") == 2
    assert not is_synthetic(tmp_path)


def test_default_size_is_fast(tmp_path: Path) -> None:
    """The demo's 320 phantoms: generated in seconds (generous bound for a shared 2-core CI box)."""
    import time

    start = time.perf_counter()
    result = generate(tmp_path / "demo", SynthConfig())
    assert result.files == 320
    assert time.perf_counter() - start < 30


def test_every_folder_and_file_inside_a_phantom_set_is_synthetic(tmp_path: Path) -> None:
    """The marker sits at the top of the set only; SET/train, SET/test/NORMAL and a link to them are phantoms too."""
    root = tmp_path / "set"
    generate(root, SynthConfig(per_class=6, size=64, seed=5))
    image = next((root / "test" / "NORMAL").glob("*.jpeg"))
    for inside in (root, root / "train", root / "test" / "NORMAL", image):
        assert is_synthetic(inside), inside
    (tmp_path / "link").symlink_to(root / "test")
    assert is_synthetic(tmp_path / "link")
    real = tmp_path / "xrays" / "test" / "NORMAL"
    real.mkdir(parents=True)
    assert not is_synthetic(real) and not is_synthetic(tmp_path), "a folder beside the set is not synthetic"


def test_a_real_folder_reached_through_dotdot_from_a_phantom_set_is_not_synthetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SET/../xrays/train names a real folder beside the set: the '..' must not leave SET among its parents."""
    root = generate(tmp_path / "set", SynthConfig(per_class=6, size=64, seed=5)).root
    real = tmp_path / "xrays" / "train"
    real.mkdir(parents=True)
    assert not is_synthetic(f"{root}/../xrays/train")
    assert not is_synthetic(root / "train" / ".." / ".." / "xrays" / "train")
    monkeypatch.chdir(root / "train")  # a relative path typed from inside the phantom set
    assert not is_synthetic("../../xrays/train")
    assert is_synthetic("../test"), "a '..' that stays inside the set is still phantoms"
    # a link before a '..' is followed as the kernel follows it: link/.. is the set, not tmp_path
    (tmp_path / "link").symlink_to(root / "test")
    assert is_synthetic(tmp_path / "link" / ".." / "train")


def test_evaluating_on_a_split_folder_of_a_phantom_set_says_synthetic_data(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from train.evaluate import evaluate_model

    root = generate(tmp_path / "set", SynthConfig(per_class=6, size=64, seed=5)).root
    report = evaluate_model(
        tiny_bundle, root / "test", split="all", bootstrap=10, cache_dir=tmp_path / "cache", progress=False
    )
    assert report["images"] == len(list((root / "test").rglob("*.jpeg"))) > 0
    assert report["synthetic_data"] is True


@pytest.mark.tf
@pytest.mark.slow
def test_a_run_trained_on_the_train_folder_of_a_phantom_set_is_synthetic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pneumo train --data SET/train and pneumo evaluate --data SET/test: both say SYNTHETIC."""
    from edge_runtime.contract import SYNTHETIC_WARNING, ModelInfo
    from train.cli import evaluate_main, train_main

    root = generate(tmp_path / "set", SynthConfig(per_class=24, size=64, seed=5)).root
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    argv = ["--arch", "dsconv", "--data", str(root / "train"), "--out", str(out), "--epochs", "1"]
    flags = ["--image-size", "32", "--bootstrap", "10", "--cache-dir", cache, "--no-tensorboard", "--quiet"]
    assert train_main([*argv, *flags]) == 0, capsys.readouterr().err[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert (
        ModelInfo.load(out).synthetic and card["synthetic"] is True and card["warning"] == SYNTHETIC_WARNING
    )
    capsys.readouterr()
    evaluate = [str(out), "--data", str(root / "test"), "--split", "all", "--json", "--quiet"]
    assert evaluate_main([*evaluate, "--bootstrap", "10", "--cache-dir", cache]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["synthetic_model"] is True and report["synthetic_data"] is True
