"""`pneumo train ensemble` (runs averaged in one graph) and distillation (`--teacher`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.config import TrainConfig
from train.errors import TrainError
from train.pipeline import distillation_targets


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth") / "data", SynthConfig(per_class=24, size=64)).root


def _run(root: Path, data: Path, name: str, **changes: object) -> Path:
    from train.fit import train_run

    settings: dict = dict(
        arch="dsconv", data=data, out=root / name, height=32, width=32, epochs=1, width_multiplier=0.25,
        augment="none", cache_dir=root / "cache", progress=False, bootstrap=10, tensorboard=False,
        threshold_rule="youden",
    )  # fmt: skip
    settings.update(changes)
    return train_run(TrainConfig(**settings)).out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synth_small: Path) -> dict[str, Path]:
    """Two members on the same split (different losses), one on another split, one at another size."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "a": _run(root, synth_small, "a"),
        "b": _run(root, synth_small, "b", loss="focal", learning_rate=3e-3),
        "other_split": _run(root, synth_small, "other-split", seed=5),
        "other_size": _run(root, synth_small, "other-size", height=48, width=48),
    }


def test_distillation_targets_mix_label_and_teacher() -> None:
    hard = np.array([[0.0], [1.0], [1.0]], np.float32)
    teacher = np.array([0.2, 0.9, 0.4], np.float32)
    np.testing.assert_allclose(distillation_targets(hard, teacher, 0.5), [[0.1], [0.95], [0.7]], rtol=1e-6)
    np.testing.assert_array_equal(distillation_targets(hard, teacher, 0.0), hard)
    with pytest.raises(TrainError, match="--distill-weight"):
        TrainConfig(distill_weight=1.5)


@pytest.mark.tf
@pytest.mark.slow
def test_ensemble_is_the_mean_of_its_members_in_one_graph(runs: dict[str, Path], tmp_path: Path) -> None:
    import keras

    from edge_runtime.contract import ModelInfo
    from train.ensemble import EnsembleConfig, make_ensemble

    out = tmp_path / "ens"
    result = make_ensemble(
        EnsembleConfig(members=(runs["a"], runs["b"]), out=out, bootstrap=10, progress=False)
    )
    for name in (
        "model.h5",
        "contract.json",
        "model_info.json",
        "split.json",
        "metrics.json",
        "model_card.json",
    ):
        assert (out / name).is_file(), name
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1)).astype(np.float32)

    def outputs(folder: Path) -> np.ndarray:
        model = keras.models.load_model(str(folder / "model.h5"), safe_mode=True, compile=False)
        return np.asarray(model(x, training=False))

    np.testing.assert_allclose(outputs(out), (outputs(runs["a"]) + outputs(runs["b"])) / 2, atol=1e-6)
    info = ModelInfo.load(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert info.arch == "ensemble" and info.synthetic is True
    assert metrics["threshold"]["chosen_on"] == "validation" and metrics["threshold"]["rule"] == "youden"
    assert metrics["threshold"]["value"] == pytest.approx(info.threshold)
    assert len(metrics["members"]) == 2 and 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    one_member = json.loads((runs["a"] / "model_card.json").read_text())["architecture"]["params"]
    assert result.card["architecture"]["params"] == 2 * one_member
    # `pneumo evaluate` opens the folder like any run
    from train.evaluate import open_model

    loaded = open_model(out)
    assert loaded.info.model_version == info.model_version


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize(
    ("other", "message"), [("other_split", "split differs"), ("other_size", "contract differs")]
)
def test_ensemble_refuses_members_that_do_not_share_split_or_contract(
    runs: dict[str, Path], tmp_path: Path, other: str, message: str
) -> None:
    from train.ensemble import EnsembleConfig, make_ensemble

    out = tmp_path / "ens"
    with pytest.raises(TrainError, match=message) as caught:
        make_ensemble(EnsembleConfig(members=(runs["a"], runs[other]), out=out, progress=False))
    assert str(runs[other]) in str(caught.value)
    assert not out.exists()  # nothing written before the members are checked


@pytest.mark.tf
@pytest.mark.slow
def test_overwrite_replaces_a_trained_run_whole_and_never_a_member(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """An ensemble written --overwrite over a single run keeps none of that run's files (its config.json
    would be read as the ensemble's), and a member is never the folder replaced."""
    import shutil

    from train.ensemble import EnsembleConfig, Member, make_ensemble

    out = tmp_path / "old-run"
    shutil.copytree(runs["a"], out)
    members = (runs["a"], runs["b"])
    make_ensemble(EnsembleConfig(members=members, out=out, overwrite=True, bootstrap=10, progress=False))
    assert sorted(p.name for p in out.iterdir()) == [
        "contract.json", "ensemble.json", "metrics.json", "model.h5", "model.keras", "model_card.json",
        "model_info.json", "split.json",
    ]  # fmt: skip
    assert Member.open(out).config == {}, "the old run's config.json would pass for the ensemble's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-run"]

    before = sorted(p.name for p in runs["a"].iterdir())
    with pytest.raises(TrainError, match="holds the member run"):
        make_ensemble(EnsembleConfig(members=members, out=runs["a"], overwrite=True, progress=False))
    assert sorted(p.name for p in runs["a"].iterdir()) == before


def test_ensemble_needs_two_distinct_members(tmp_path: Path) -> None:
    from train.ensemble import EnsembleConfig

    with pytest.raises(TrainError, match="at least two"):
        EnsembleConfig(members=(tmp_path,), out=tmp_path / "o")
    with pytest.raises(TrainError, match="twice"):
        EnsembleConfig(members=(tmp_path, tmp_path), out=tmp_path / "o")
    with pytest.raises(TrainError, match="--tta"):
        EnsembleConfig(members=(tmp_path,), out=tmp_path / "o", tta="flips")
    assert EnsembleConfig(members=(tmp_path,), out=tmp_path / "o", tta="crops").tta == "crops"


@pytest.mark.tf
@pytest.mark.slow
def test_test_time_crops_average_views_of_the_same_image(runs: dict[str, Path], tmp_path: Path) -> None:
    import keras

    from train.ensemble import TTA_CROPS, EnsembleConfig, make_ensemble

    out = tmp_path / "tta"
    make_ensemble(EnsembleConfig(members=(runs["a"],), out=out, tta="crops", bootstrap=10, progress=False))
    tta = keras.models.load_model(str(out / "model.h5"), safe_mode=True, compile=False)
    single = keras.models.load_model(str(runs["a"] / "model.h5"), safe_mode=True, compile=False)
    card, member = (json.loads((folder / "model_card.json").read_text()) for folder in (out, runs["a"]))
    assert card["architecture"]["macs"] == len(TTA_CROPS) * member["architecture"]["macs"]  # runs per view
    assert card["architecture"]["params"] == member["architecture"]["params"]  # with the same weights
    resizes = [layer for layer in tta.layers if isinstance(layer, keras.layers.Resizing)]
    assert len(resizes) == len(TTA_CROPS) - 1  # the whole image is the first view, uncropped
    flat = np.full((2, 32, 32, 1), 117.0, np.float32)  # every crop of a flat image is the same image
    np.testing.assert_allclose(np.asarray(tta(flat)), np.asarray(single(flat, training=False)), atol=1e-6)
    x = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 1)).astype(np.float32)
    views = keras.Model(tta.input, [layer.output for layer in resizes])(x)
    expected = [np.asarray(single(x, training=False))]
    for (top, bottom, left, right), got in zip(TTA_CROPS[1:], views, strict=True):
        crop = x[:, round(top * 32) : 32 - round(bottom * 32), round(left * 32) : 32 - round(right * 32)]
        view = np.asarray(keras.layers.Resizing(32, 32, interpolation="bilinear")(crop))
        np.testing.assert_allclose(np.asarray(got), view, atol=1e-4)  # each view is the crop it claims
        assert not np.allclose(view, x)
        expected.append(np.asarray(single(view, training=False)))
    np.testing.assert_allclose(np.asarray(tta(x, training=False)), np.mean(expected, axis=0), atol=1e-5)


@pytest.mark.tf
@pytest.mark.slow
def test_student_distils_from_a_teacher_with_the_same_split(
    runs: dict[str, Path], synth_small: Path, tmp_path: Path
) -> None:
    student = _run(tmp_path, synth_small, "student", teacher=runs["a"], distill_weight=0.7)
    config = json.loads((student / "config.json").read_text())
    assert config["teacher"] == str(runs["a"]) and config["distill_weight"] == 0.7
    with open(student / "history.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    # soft targets are scored against the label they lean to (Keras alone reported exactly 0.0)
    assert 0.0 < float(last["accuracy"]) <= 1.0 and 0.0 < float(last["auc"]) <= 1.0
    # Run "a" is this student without the teacher: same seed, split and recipe (training here is
    # deterministic: the demo retrains to the last digit). Only the targets differ, so the fit must.
    with open(runs["a"] / "history.csv", newline="") as handle:
        alone = list(csv.DictReader(handle))[-1]
    assert float(last["loss"]) != float(alone["loss"]), "the teacher did not change the training targets"
    with pytest.raises(TrainError, match="split differs"):
        _run(tmp_path, synth_small, "leaky", teacher=runs["other_split"])
    with pytest.raises(TrainError, match="contract"):
        _run(tmp_path, synth_small, "wrong-size", teacher=runs["a"], height=48, width=48)


@pytest.mark.tf
@pytest.mark.slow
def test_ensemble_cli_prints_a_table_and_names_bad_members(runs: dict[str, Path], tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "ensemble"]
    ok = subprocess.run(
        [*cli, str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "e"), "--bootstrap", "10", "-q"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "ensemble" in ok.stdout and "SYNTHETIC" in ok.stdout and "not a diagnosis" in ok.stdout
    assert "test AUC" in ok.stdout and "test sensitivity" in ok.stdout
    blind = subprocess.run(
        [*cli, str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "g"), "--bootstrap", "10", "-q",
         "--blind", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert blind.returncode == 0, blind.stderr
    printed = json.loads(blind.stdout)
    saved = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert printed["test"] is None and saved["test"]["n_images"] > 0, "scored once, on disk only"
    assert printed["validation"] == saved["validation"] and printed["threshold"] == saved["threshold"]
    assert all(not key.startswith("test_") for row in printed["members"] for key in row)
    table = subprocess.run(
        [*cli, str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "h"), "--bootstrap", "10", "-q",
         "--blind"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "test AUC" not in table.stdout and "test sensitivity" not in table.stdout
    assert "hidden (--blind)" in table.stdout and "val AUC" in table.stdout
    bad = subprocess.run(
        [*cli, str(runs["a"]), str(tmp_path / "nowhere"), "--out", str(tmp_path / "f"), "-q"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1 and "nowhere" in bad.stderr and "run folder" in bad.stderr


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "crops"])
def test_an_ensemble_exports_to_onnx_with_parity(runs: dict[str, Path], tmp_path: Path, tta: str) -> None:
    """The one-graph ensemble (and its test-time crops) goes through the same tf2onnx path as a run."""
    from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edge_runtime.contract import ModelInfo, PreprocessContract
    from export.config import OnnxConfig
    from export.onnx_from_keras import keras_outputs, load_keras_model, onnx_from_keras, save_onnx
    from train.ensemble import EnsembleConfig, make_ensemble

    out = tmp_path / "ens"
    members = (runs["a"], runs["b"]) if tta == "none" else (runs["a"],)
    make_ensemble(EnsembleConfig(members=members, out=out, tta=tta, bootstrap=10, progress=False))
    contract, info = PreprocessContract.load(out), ModelInfo.load(out)
    model = load_keras_model(out / "model.h5", contract, info)
    path = save_onnx(onnx_from_keras(model, contract, info, OnnxConfig()), tmp_path / "ens.onnx")
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 1)).astype(np.uint8)
    with OnnxRuntimeBackend(path, name="ort-cpu", precision="fp32") as backend:
        got = backend.infer(x)
    np.testing.assert_allclose(got, keras_outputs(model, x), atol=1e-5)


def _pooled_youden(folder: Path, cache: Path) -> float:
    """Youden's threshold on the run's validation images as they are and width- or height-only
    rescaled x0.85 / x1.15, computed here from the saved model (not through shape_pooled)."""
    import keras

    from edge_runtime.contract import ModelInfo, PreprocessContract
    from edge_runtime.metrics import choose_threshold
    from edge_runtime.predictor import abnormal_probability
    from train.cache import load_arrays
    from train.data import Splits
    from train.shape_probe import rescale

    splits = Splits.load(folder / "split.json")
    info = ModelInfo.load(folder)
    val = load_arrays(splits.val, splits.labels, PreprocessContract.load(folder), cache, progress=False)
    model = keras.models.load_model(str(folder / "model.h5"), safe_mode=True, compile=False)
    scales = [(1.0, 1.0), (0.85, 1.0), (1.0, 0.85), (1.15, 1.0), (1.0, 1.15)]
    prob = np.concatenate(
        [abnormal_probability(np.asarray(model(rescale(val.x, w, h).astype(np.float32), training=False)), info)
         for w, h in scales]
    )  # fmt: skip
    abnormal = np.tile(val.y != splits.labels.index(info.negative_label), len(scales))
    return choose_threshold(abnormal, prob, "youden").threshold


@pytest.mark.tf
@pytest.mark.slow
def test_split_seed_keeps_the_validation_split_and_shape_pooled_sets_the_threshold(
    runs: dict[str, Path], synth_small: Path, tmp_path: Path
) -> None:
    from train.ensemble import EnsembleConfig, make_ensemble

    # Another seed, the same split: its split.json is run a's, so the two can be ensembled.
    other_seed = _run(tmp_path, synth_small, "c", seed=5, split_seed=0, threshold_on="shape-pooled")
    assert json.loads((other_seed / "split.json").read_text()) == json.loads(
        (runs["a"] / "split.json").read_text()
    )
    assert json.loads((runs["other_split"] / "split.json").read_text()) != json.loads(
        (runs["a"] / "split.json").read_text()
    )  # without --split-seed, seed 5 draws another split
    card = json.loads((other_seed / "model_card.json").read_text())
    assert card["training"]["seed"] == 5 and card["training"]["split_seed"] == 0
    metrics = json.loads((other_seed / "metrics.json").read_text())
    assert "pooled with the shape probe's 4 rescales" in metrics["threshold"]["how"]
    assert metrics["threshold"]["value"] == pytest.approx(
        _pooled_youden(other_seed, tmp_path / "cache"), abs=1e-6
    )

    out = tmp_path / "ens"
    make_ensemble(EnsembleConfig(members=(runs["a"], other_seed), out=out, bootstrap=10, progress=False,
                                 threshold_on="shape-pooled"))  # fmt: skip
    ens = json.loads((out / "metrics.json").read_text())["threshold"]
    assert "pooled" in ens["how"]
    assert ens["value"] == pytest.approx(_pooled_youden(out, tmp_path / "cache"), abs=1e-6)
    with pytest.raises(TrainError, match="--threshold-on"):
        EnsembleConfig(members=(runs["a"], other_seed), out=tmp_path / "x", threshold_on="test")
