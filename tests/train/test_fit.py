"""TrainConfig, the input pipeline, class weights, the run-folder guard and determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from train.config import AUGMENTATIONS, TrainConfig, load_toml, merge
from train.errors import TrainError


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SYNTHETIC phantom folder (split layout)."""
    from train.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth") / "data", SynthConfig(per_class=24, size=64)).root


# --------------------------------------------------------------------------- config (no TensorFlow)


def test_resolved_fills_the_arch_recipe_and_keeps_overrides() -> None:
    cfg = TrainConfig(arch="lhu", learning_rate=0.01).resolved()
    assert (cfg.height, cfg.width, cfg.color) == (256, 256, "rgb")
    assert (cfg.optimizer, cfg.batch_size, cfg.epochs, cfg.learning_rate) == ("adagrad", 32, 20, 0.01)
    assert cfg.class_weights is False and cfg.augment == "none"
    ros = TrainConfig(arch="roskilde", undersample=False).resolved()
    assert ros.undersample is False and ros.early_stopping == 5 and ros.color == "grayscale"


def test_dsconv_recipe_is_the_validation_winner_and_flags_still_override() -> None:
    cfg = TrainConfig(arch="dsconv").resolved()
    assert (cfg.height, cfg.width, cfg.color, cfg.augment) == (160, 160, "grayscale", "xray-shape")
    assert (cfg.label_smoothing, cfg.threshold_rule, cfg.early_stopping) == (0.1, "sensitivity:0.95", 0)
    assert cfg.threshold_on == "shape-pooled" and cfg.epochs == 30
    assert TrainConfig(arch="dsconv", threshold_on="validation").resolved().threshold_on == "validation"
    assert TrainConfig(arch="lhu").resolved().threshold_on == "validation"
    plain = TrainConfig(arch="dsconv", label_smoothing=0.0, threshold_rule="youden").resolved()
    assert (plain.label_smoothing, plain.threshold_rule) == (0.0, "youden")  # 0.0 is not "unset"
    seed = TrainConfig(arch="lhu").resolved()
    assert (seed.label_smoothing, seed.threshold_rule) == (0.0, "sensitivity:0.95")


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"learning_rate": -1.0}, "--learning-rate"),
        ({"batch_size": 100_000}, "--batch-size"),
        ({"height": 4}, "--height"),
        ({"optimizer": "lion"}, "--optimizer"),
        ({"augment": "heavy"}, "--augment"),
        ({"threshold_rule": "sensitivity:2"}, "--threshold-rule"),
        ({"val_fraction": 0.9}, "--val-fraction"),
        ({"label_smoothing": float("nan")}, "--label-smoothing"),
        ({"activation": "tanh"}, "--activation"),
        ({"last_conv_filters": 0}, "--last-conv-filters"),
        ({"pool_dropout": 1.0}, "--pool-dropout"),
        ({"lr_schedule": "step"}, "--lr-schedule"),
        ({"threshold_on": "test"}, "--threshold-on"),
        ({"split_seed": -1}, "--split-seed"),
    ],
)
def test_bad_values_name_their_flag(changes: dict, flag: str) -> None:
    with pytest.raises(TrainError, match=flag):
        TrainConfig(**changes)


def test_flags_override_the_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\narch = "lhu"\nepochs = 7\nimage-size = 128\nclass_weights = true\n')
    cfg = merge(load_toml(toml), {"epochs": 2, "data": "/d", "out": "/o"})
    assert (cfg.arch, cfg.epochs, cfg.height, cfg.width, cfg.class_weights) == ("lhu", 2, 128, 128, True)
    assert cfg.data == Path("/d")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip


def test_model_options_go_to_the_builders_that_take_them() -> None:
    ros = TrainConfig(arch="roskilde", dropout=0.0, last_conv_filters=256, pool_dropout=0.25)
    assert ros.model_options() == {"dropout": 0.0, "last_filters": 256, "pool_dropout": 0.25}
    assert ros.model_settings() == {"dropout": 0.0, "last_conv_filters": 256, "pool_dropout": 0.25}
    # unset: nothing passed, and the card records the builder's own defaults
    assert TrainConfig(arch="roskilde").model_options() == {}
    assert TrainConfig(arch="roskilde").model_settings() == {
        "dropout": 0.5,
        "last_conv_filters": 128,
        "pool_dropout": 0.0,
    }
    assert TrainConfig(arch="sutd_cnn1", activation="relu").model_options() == {"activation": "relu"}
    assert TrainConfig(arch="sutd_cnn3").model_settings() == {"activation": "relu"}
    assert TrainConfig(arch="dsconv", width_multiplier=0.5).model_options() == {"width": 0.5}
    assert TrainConfig(arch="dsconv").model_options() == {}  # 1.0 is the builder's own default


@pytest.mark.parametrize(
    ("changes", "flag", "takers"),
    [
        ({"arch": "sutd_cnn1", "last_conv_filters": 256}, "--last-conv-filters", "roskilde"),
        ({"arch": "dsconv", "pool_dropout": 0.25}, "--pool-dropout", "roskilde"),
        ({"arch": "roskilde", "activation": "relu"}, "--activation", "sutd_cnn1, sutd_cnn2, sutd_cnn3"),
        ({"arch": "lhu", "dropout": 0.3}, "--dropout", "roskilde, go19, sutd_cnn2"),
        ({"arch": "roskilde", "width_multiplier": 2.0}, "--width-multiplier", "dsconv"),
        ({"arch": "lhu", "freeze_base": True}, "--freeze-base", "vgg16_transfer, resnet50"),
    ],
)
def test_a_model_option_the_arch_does_not_take_is_an_error(changes: dict, flag: str, takers: str) -> None:
    config = TrainConfig(**changes)
    with pytest.raises(TrainError) as err:
        config.resolved()  # what `pneumo train` and every sweep plan call before reading any data
    message = str(err.value)
    assert message.startswith(f"{flag} does not apply to --arch {changes['arch']}")
    assert takers in message


def test_new_model_options_round_trip_through_toml_and_config_json(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('arch = "roskilde"\nlast-conv-filters = 256\npool_dropout = 0.25\nimage_size = 64\n')
    cfg = merge(load_toml(toml), {"data": "/d", "out": "/o"})
    assert (cfg.last_conv_filters, cfg.pool_dropout, cfg.activation) == (256, 0.25, None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["last_conv_filters"] == 256
    toml.write_text('arch = "sutd_cnn2"\nactivation = "relu"\n')
    assert merge(load_toml(toml), {}).resolved().model_options() == {"activation": "relu"}
    toml.write_text('arch = "roskilde"\nlast_conv_filters = 256.5\n')
    with pytest.raises(TrainError, match="last_conv_filters must be an integer"):
        merge(load_toml(toml), {}, source=str(toml))


def test_toml_errors_name_the_file_and_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 'ten'\n")
    with pytest.raises(TrainError, match="epochs must be an integer"):
        merge(load_toml(bad), {}, source=str(bad))
    bad.write_text("epoch = 3\n")
    with pytest.raises(TrainError, match="unknown setting 'epoch'"):
        merge(load_toml(bad), {}, source=str(bad))
    bad.write_text("epochs = [\n")
    with pytest.raises(TrainError, match="not a readable TOML"):
        load_toml(bad)
    with pytest.raises(TrainError, match="file not found"):
        load_toml(tmp_path / "missing.toml")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_run(out: Path) -> dict[str, bytes]:
    """A finished run's files (enough of them for the folder checks), as a snapshot."""
    (out / "plots").mkdir(parents=True)
    for name, data in {"model.h5": b"old model", "metrics.json": b"{}", "history.csv": b"old history",
                       "config.json": b"{}", "plots/curves.png": b"old plot"}.items():  # fmt: skip
        (out / name).write_bytes(data)
    return _snapshot(out)


def test_run_folder_is_never_overwritten_without_the_flag(tmp_path: Path) -> None:
    from train.fit import check_run_folder

    out = tmp_path / "run"
    check_run_folder(out, overwrite=False)  # new: fine, and nothing is created before the run starts
    assert not out.exists()
    before = _old_run(out)
    with pytest.raises(TrainError, match="--overwrite"):
        check_run_folder(out, overwrite=False)
    check_run_folder(out, overwrite=True)
    assert _snapshot(out) == before  # checking deletes nothing


def test_overwrite_swaps_in_a_whole_run_only_once_it_finished(tmp_path: Path) -> None:
    from train.fit import building_run_folder

    out = tmp_path / "run"
    before = _old_run(out)
    # stopped mid-run: the old run is untouched (no new history.csv beside the old model)
    with pytest.raises(KeyboardInterrupt), building_run_folder(out, overwrite=True) as work:
        (work / "history.csv").write_bytes(b"new history")
        raise KeyboardInterrupt
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "a failed run leaves nothing behind"
    # finished: the new run alone, no file of the old one (its plots) left beside it
    with building_run_folder(out, overwrite=True) as work:
        assert not work.is_relative_to(out)
        (work / "model.h5").write_bytes(b"new model")
        (work / "history.csv").write_bytes(b"new history")
    assert _snapshot(out) == {"model.h5": b"new model", "history.csv": b"new history"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "the old run is removed once replaced"


def test_overwrite_never_removes_what_a_run_did_not_write(tmp_path: Path) -> None:
    from train.fit import building_run_folder, check_run_folder

    mixed = tmp_path / "mixed"
    _old_run(mixed)
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"does not write \(notes.txt\)"):
        check_run_folder(mixed, overwrite=True)
    # an input of the run inside --out would be deleted with the old run: refused
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    with pytest.raises(TrainError, match="holds the data folder"):
        check_run_folder(tmp_path / "run", overwrite=True, inputs={"the data folder": data})
    # something written into --out while the run trained is kept, and so is the finished run
    out = tmp_path / "late"
    with (
        pytest.raises(TrainError, match="changed while this run trained"),
        building_run_folder(out, False) as work,
    ):
        (work / "model.h5").write_bytes(b"new model")
        out.mkdir()
        (out / "model.h5").write_bytes(b"someone else's")
    assert (out / "model.h5").read_bytes() == b"someone else's"
    [kept] = tmp_path.glob(".late.building-*")
    assert (kept / "model.h5").read_bytes() == b"new model"


def test_a_failed_run_removes_the_empty_folders_it_created(tmp_path: Path) -> None:
    from train.fit import building_run_folder

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), building_run_folder(tmp_path / "runs" / "a" / "b" / "run", False):
        raise RuntimeError("training failed")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep.txt"]


# A builder that starts a run folder the way `pneumo train` does, says so, and waits to be killed.
BUILDER = """\
import sys, time
from pathlib import Path

from train.fit import building_run_folder

with building_run_folder(Path(sys.argv[1]), overwrite=False) as work:
    (work / "history.csv").write_text("epoch,loss\\n")
    print(work, flush=True)
    time.sleep(600)
"""


def _start_builder(out: Path) -> tuple[Any, Path]:
    """A real process building ``out``; it and its hidden staging folder."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", BUILDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_the_next_run_removes_the_folder_of_a_killed_one_and_keeps_a_live_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import signal

    from train.fit import building_run_folder, staging_folders

    out = tmp_path / "run"
    killed, killed_staging = _start_builder(out)
    live, live_staging = _start_builder(out)
    try:
        assert killed_staging.is_dir() and live_staging.is_dir()
        killed.send_signal(signal.SIGKILL)  # no cleanup: exactly what a killed `pneumo train` leaves
        killed.wait()
        assert killed_staging.is_dir()
        with caplog.at_level(logging.WARNING), building_run_folder(out, overwrite=False) as work:
            (work / "model.h5").write_bytes(b"model")
        assert not killed_staging.exists(), "its builder is gone: removed"
        assert f"removed {killed_staging}" in caplog.text and f"pid {killed.pid}" in caplog.text
        assert live_staging.is_dir() and staging_folders(out) == [live_staging], "a running build is kept"
        assert (out / "model.h5").read_bytes() == b"model"
    finally:
        live.kill()
        live.wait()


def test_a_staging_folder_is_removed_only_when_its_builder_is_certainly_gone(tmp_path: Path) -> None:
    import os
    import socket

    from train.fit import remove_stale_staging, staging_builder

    out = tmp_path / "run"
    host = socket.gethostname()
    dead_pid = _a_finished_pid()
    names = {
        "dead here": f".run.building-{host}-{dead_pid}-1",
        "alive here": f".run.building-{host}-{os.getpid()}-2",
        "other host": f".run.building-not-{host}-{dead_pid}-1",
        "no host (older name)": f".run.building-{dead_pid}-1",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    assert staging_builder(tmp_path / names["other host"], out) == (f"not-{host}", dead_pid)
    assert staging_builder(tmp_path / names["no host (older name)"], out) is None
    assert remove_stale_staging(out) == [tmp_path / names["dead here"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for what, name in names.items() if what != "dead here"
    )


def _a_finished_pid() -> int:
    """The pid of a process that has exited (and been reaped): certainly not alive."""
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.mark.tf
def test_bad_data_is_refused_before_any_folder_is_created(tmp_path: Path) -> None:
    from train.fit import train_run

    empty = tmp_path / "empty-data"
    empty.mkdir()
    out = tmp_path / "runs" / "sweep" / "run"
    with pytest.raises(Exception, match="empty-data"):
        train_run(TrainConfig(arch="lhu", data=empty, out=out, progress=False, tensorboard=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-data"]


def test_a_sigmoid_head_that_would_learn_p_normal_is_refused(synth_small: Path, tmp_path: Path) -> None:
    """Labels sort by name: with ABNORMAL / NORMAL folders a sigmoid unit would learn P(NORMAL)."""
    import shutil

    from train.fit import train_run

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    for split in ("train", "val", "test"):
        (data / split / "PNEUMONIA").rename(data / split / "ABNORMAL")
    out = tmp_path / "runs" / "run"
    with pytest.raises(TrainError, match=r"P\('NORMAL'\).*pass --head softmax"):
        train_run(TrainConfig(arch="lhu", data=data, out=out, epochs=1, progress=False, tensorboard=False))
    assert not out.exists()


def test_class_weights_follow_seed_004() -> None:
    from train.pipeline import class_weights, sample_weights

    y = np.array([0] * 25 + [1] * 75)
    weights = class_weights(y, 2)
    assert weights == {0: pytest.approx(100 / (2 * 25)), 1: pytest.approx(100 / (2 * 75))}
    w = sample_weights(y, weights)
    assert w[:25].sum() == pytest.approx(w[25:].sum())  # each class carries half the loss


# --------------------------------------------------------------------------- pipeline (TensorFlow)


@pytest.mark.tf
def test_training_batches_are_float_pixels_with_targets_and_weights() -> None:
    from train.augment import build_augmenter
    from train.models.blocks import Head
    from train.pipeline import evaluation_data, training_data

    x = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 1), dtype=np.uint8)
    y = np.array([0, 1] * 5)
    batches = list(training_data(x, y, Head("sigmoid", 2), 4, build_augmenter("seed004"), {0: 2.0, 1: 0.5}))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    images, targets, weights = (np.asarray(t) for t in batches[0])
    assert images.dtype == np.float32 and images.max() <= 255.0 and targets.shape == (4, 1)
    assert set(np.round(weights, 3).tolist()) <= {2.0, 0.5}
    seen = np.concatenate([np.asarray(b[1]).reshape(-1) for b in batches])
    assert sorted(seen.tolist()) == sorted(y.tolist())  # shuffled, none lost
    plain = list(evaluation_data(x, y, Head("softmax", 2), 4))
    assert len(plain[0]) == 2 and np.asarray(plain[0][1]).shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(plain[0][0]), x[:4].astype(np.float32))  # ordered, unaugmented


@pytest.mark.tf
@pytest.mark.parametrize("preset", [name for name in AUGMENTATIONS if name != "none"])
def test_augmentation_presets_keep_shape_and_pixel_range(preset: str) -> None:
    from train.augment import build_augmenter

    x = np.random.default_rng(1).integers(0, 256, (4, 24, 24, 1)).astype(np.float32)
    augmenter = build_augmenter(preset, seed=0)
    assert augmenter is not None
    y = np.asarray(augmenter(x, np.array([0, 1, 0, 1])))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 255.0
    assert not np.array_equal(y, x)  # it does something
    np.testing.assert_array_equal(np.asarray(augmenter.common(x, training=False)), x)  # nothing at inference
    assert build_augmenter("none") is None


@pytest.mark.tf
def test_mixup_blends_images_targets_and_weights_with_one_lambda() -> None:
    from train.augment import Mixup
    from train.models.blocks import Head
    from train.pipeline import training_data

    # Image i holds a = 20 i in one pixel and b = 3 i^2 in another: one (partner, lambda) fits both.
    n = 8
    a, b = np.arange(n) * 20.0, np.arange(n) ** 2 * 3.0
    x = np.zeros((n, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = a, b
    y = np.array([0, 1] * (n // 2))
    weights = {0: 3.0, 1: 1.0}
    (batch,) = list(
        training_data(x, y, Head("sigmoid", 2), n, None, weights, shuffle=False, mixup=Mixup(0.4))
    )
    images, targets, w = (np.asarray(t, dtype=np.float64) for t in batch)
    assert images.shape == (n, 4, 4, 1)
    p0, p1 = images[:, 0, 0, 0], images[:, 0, 1, 0]
    lams, partners = set(), []
    for i in range(n):
        if np.isclose(p0[i], a[i]) and np.isclose(p1[i], b[i]):  # paired with itself
            partners.append(i)
            continue
        fits = [
            (j, (p0[i] - a[j]) / (a[i] - a[j]))
            for j in range(n)
            if j != i and np.isclose(p1[i], b[j] + (p0[i] - a[j]) / (a[i] - a[j]) * (b[i] - b[j]), atol=1e-3)
        ]
        assert len(fits) == 1, (i, fits)
        partners.append(fits[0][0])
        lams.add(round(fits[0][1], 4))
    assert len(lams) == 1  # one lambda per batch
    lam = lams.pop()
    assert 0.5 <= lam <= 1.0  # the row's own image dominant
    assert sorted(partners) == list(range(n))  # a permutation of the batch
    hard_w = np.array([weights[int(c)] for c in y])
    np.testing.assert_allclose(targets.reshape(-1), lam * y + (1 - lam) * y[partners], atol=1e-3)
    np.testing.assert_allclose(w, lam * hard_w + (1 - lam) * hard_w[partners], atol=1e-3)
    # The PyDataset path (PyTorch / JAX backends) blends the same way.
    from train.pipeline import array_batches
    from train.pipeline import targets as make_targets

    hard_t = make_targets(y, Head("sigmoid", 2))
    other = array_batches(x, hard_t, hard_w.astype(np.float32), n, None, 0, False, y, Mixup(0.4))
    px, pt, pw = (np.asarray(t, dtype=np.float64) for t in other[0])
    assert px.shape == x.shape and not np.array_equal(px, x.astype(np.float64))
    assert np.all((pt >= 0) & (pt <= 1)) and np.all((hard_w.min() <= pw) & (pw <= hard_w.max()))
    assert targets.min() >= 0.0 and targets.max() <= 1.0


@pytest.mark.tf
def test_cosine_schedule_decays_to_one_percent_over_the_planned_steps() -> None:
    from train.fit import make_optimizer

    constant = make_optimizer("adam", 1e-3)
    opt = make_optimizer("adam", 1e-3, "cosine", total_steps=100)
    assert float(constant.learning_rate) == pytest.approx(1e-3)
    assert float(opt.learning_rate) == pytest.approx(1e-3)
    opt.iterations.assign(50)
    assert float(opt.learning_rate) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-4)
    opt.iterations.assign(100)
    assert float(opt.learning_rate) == pytest.approx(1e-5, rel=1e-4)
    with pytest.raises(TrainError, match="training steps"):
        make_optimizer("adam", 1e-3, "cosine", total_steps=0)


def test_mixup_alpha_is_checked() -> None:
    from train.config import TrainConfig

    with pytest.raises(TrainError, match="mixup"):
        TrainConfig(mixup=-0.1)


def _mean_gradient(images: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3))


@pytest.mark.tf
def test_xray_balanced_blurs_only_the_normal_class() -> None:
    from train.augment import Augmenter, build_augmenter

    # Identical sharp images; class 1 is normal here, so only rows 1 and 3 may lose detail.
    rng = np.random.default_rng(2)
    x = np.repeat(rng.integers(0, 256, (1, 32, 32, 1)).astype(np.float32), 4, axis=0)
    augmenter = build_augmenter("xray-balanced", seed=0, negative_index=1)
    assert augmenter is not None and augmenter.negative_only is not None
    # Without the common layers the effect is exact: rows of the other class are untouched.
    only_extra = Augmenter("extra-only", lambda b, training: b, augmenter.negative_only, 1)
    out = np.asarray(only_extra(x, np.array([0, 1, 0, 1])))
    np.testing.assert_array_equal(out[[0, 2]], x[[0, 2]])
    sharp, blurred = _mean_gradient(x[:1])[0], _mean_gradient(out[[1, 3]])
    assert np.all(blurred < 0.8 * sharp)


def _box_extents(augmenter: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of the bright box in each augmented image."""
    out = np.asarray(augmenter(x, np.zeros(len(x), np.int64)))[..., 0] > 127  # type: ignore[operator]
    widths = np.array([m.any(axis=0).sum() for m in out], np.float64)
    heights = np.array([m.any(axis=1).sum() for m in out], np.float64)
    return widths, heights


@pytest.mark.tf
def test_xray_aspect_rescales_width_more_than_height() -> None:
    from train.augment import build_augmenter

    # A bright 20x20 square: its width should vary across the batch far more than its height.
    x = np.zeros((64, 48, 48, 1), np.float32)
    x[:, 14:34, 14:34] = 255.0
    augmenter = build_augmenter("xray-aspect", seed=3)
    assert augmenter is not None
    widths, heights = _box_extents(augmenter, x)
    assert widths.min() > 0 and heights.min() > 0
    assert np.std(np.log(widths)) > 1.8 * np.std(np.log(heights))
    assert widths.min() <= 17 and widths.max() >= 23  # spans about x0.8..x1.2 of 20 px
    # xray-shape rescales both axes, each on its own.
    both = build_augmenter("xray-shape", seed=3)
    assert both is not None
    widths, heights = _box_extents(both, x)
    assert heights.min() <= 17 and heights.max() >= 23 and widths.min() <= 17 and widths.max() >= 23
    assert abs(np.corrcoef(np.log(widths), np.log(heights))[0, 1]) < 0.6  # not one isotropic zoom


@pytest.mark.tf
@pytest.mark.slow
def test_training_is_deterministic_with_a_seed(tmp_path: Path, synth_small: Path) -> None:
    from train.fit import train_run

    def run(name: str) -> bytes:
        cfg = TrainConfig(
            arch="lhu", data=synth_small, out=tmp_path / name, height=32, width=32, epochs=2,
            augment="light", class_weights=True, cache_dir=tmp_path / "cache", progress=False,
            bootstrap=10, tensorboard=False, seed=3,
        )  # fmt: skip
        result = train_run(cfg)
        return json_bytes(result.metrics["history"]["loss"]) + json_bytes(result.metrics["test"]["roc_curve"])

    assert run("a") == run("b")


def json_bytes(obj: object) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True).encode()


@pytest.mark.tf
@pytest.mark.slow
def test_three_class_softmax_run_with_focal_loss_and_mirrored_strategy(
    tmp_path: Path, synth_small: Path
) -> None:
    """NORMAL / BACTERIA / VIRUS from the file names, softmax head, focal loss, tf.distribute on CPU."""
    from train.fit import train_run

    cfg = TrainConfig(
        arch="lhu", data=synth_small, out=tmp_path / "kind", height=32, width=32, epochs=1,
        label_mode="kind", loss="focal", label_smoothing=0.1, strategy="mirrored", threshold_rule="youden",
        lr_schedule="cosine",
        cache_dir=tmp_path / "cache", progress=False, bootstrap=10, tensorboard=False,
    )  # fmt: skip
    result = train_run(cfg)
    assert result.info.head == "softmax" and result.info.labels == ("BACTERIA", "NORMAL", "VIRUS")
    assert result.info.negative_label == "NORMAL"
    assert set(result.metrics["test"]["per_class"]) == {"BACTERIA", "NORMAL", "VIRUS"}
    assert result.card["training"]["compute"]["strategy"] == "mirrored"
    assert result.card["training"]["loss"].startswith("focal")
    assert result.card["training"]["lr_schedule"] == "cosine"


@pytest.mark.tf
def test_training_metrics_score_soft_targets_against_the_label_they_lean_to() -> None:
    import keras

    from train.fit import training_metrics
    from train.pipeline import Head

    accuracy, auc = training_metrics(Head("sigmoid", 2))
    soft = np.array([[0.2], [0.8], [0.7], [0.3]], np.float32)  # distillation / mixup targets
    pred = np.array([[0.1], [0.9], [0.4], [0.6]], np.float32)
    accuracy.update_state(soft, pred)
    auc.update_state(soft, pred)
    assert float(accuracy.result()) == pytest.approx(0.5)  # rounded targets 0,1,1,0 vs calls 0,1,0,1
    assert float(auc.result()) == pytest.approx(0.75, abs=0.01)
    plain = keras.metrics.BinaryAccuracy()
    plain.update_state(soft, pred)
    assert float(plain.result()) == 0.0, "what history.csv showed before: soft targets never 'equal'"
    hard = np.array([[0.0], [1.0], [1.0], [0.0]], np.float32)
    accuracy.reset_state()
    accuracy.update_state(hard, pred)
    assert float(accuracy.result()) == pytest.approx(0.5)  # hard labels: unchanged


@pytest.mark.tf
@pytest.mark.slow
def test_overwrite_killed_mid_run_leaves_the_old_run_whole(tmp_path: Path, synth_small: Path) -> None:
    """`pneumo train --out OLD --overwrite` killed while training: OLD is still the old run, file for file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from train.fit import train_run

    out = tmp_path / "run"
    settings: dict = dict(
        arch="lhu", data=synth_small, height=32, width=32, epochs=1, cache_dir=tmp_path / "cache",
        progress=False, bootstrap=10,
    )  # fmt: skip
    train_run(TrainConfig(out=out, tensorboard=True, **settings))
    before = _snapshot(out)
    assert "logs" in {Path(name).parts[0] for name in before}
    old_history = before["history.csv"]

    command = [sys.executable, "-m", "edge_runtime.pneumo_cli", "train", "--arch", "lhu", "--data", str(synth_small),
               "--out", str(out), "--overwrite", "--image-size", "32", "--epochs", "2000", "--bootstrap", "10",
               "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def training() -> bool:  # Keras's CSVLogger opens history.csv when fitting starts
            fresh = [p / "history.csv" for p in tmp_path.glob(".run.building-*")] + [out / "history.csv"]
            return any(p.is_file() and p.read_bytes() != old_history for p in fresh)

        while process.poll() is None and not training():
            time.sleep(0.05)  # polling for fitting to start, not a timing
        assert process.poll() is None, "the run ended before it was killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert _snapshot(out) == before, "a killed --overwrite run changed the old run folder"

    # finished, it replaces the whole folder: the old run's TensorBoard logs do not linger
    result = train_run(TrainConfig(out=out, overwrite=True, tensorboard=False, **settings))
    assert result.out == out and (out / "model.h5").is_file() and not (out / "logs").exists()
    assert result.info.extra["run_folder"] == "run" and "-run-" in result.info.model_version


@pytest.mark.tf
@pytest.mark.slow
def test_a_test_split_without_every_class_is_noted_in_metrics_json(tmp_path: Path, synth_small: Path) -> None:
    import json
    import shutil

    from train.fit import train_run

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    for image in (data / "test" / "PNEUMONIA").iterdir():
        image.write_bytes(b"unreadable")  # skipped, so the test split holds NORMAL images only
    cfg = TrainConfig(
        arch="lhu", data=data, out=tmp_path / "run", height=32, width=32, epochs=1,
        cache_dir=tmp_path / "cache", progress=False, bootstrap=10, tensorboard=False,
    )  # fmt: skip
    result = train_run(cfg)
    note = "the test split does not hold every class; per-class figures of absent classes are empty"
    assert result.metrics["note"] == note
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["note"] == note
    assert result.metrics["test"]["n_abnormal"] == 0 and result.card["data"]["images_used"]["test"] > 0
    assert result.card["data"]["skipped_unreadable"]["test"] == len(
        list((data / "test" / "PNEUMONIA").iterdir())
    )
