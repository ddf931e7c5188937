"""`pneumo train select`: the validation-only selection rule of issue 6 (train/select.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.contract import ModelInfo
from tests.train.test_shape_probe import _data, _run_folder
from train.cli import select_main
from train.errors import TrainError
from train.select import Candidate, SelectConfig, choose


def _c(run: str, flops: int, val: float, pooled: float) -> Candidate:
    return Candidate(
        run=run, model_version=run, params=flops * 4, flops=flops, val_auc=val, shape_pooled_auc=pooled
    )


# Session 6's six candidates, their scores as measured (reports/best_model.md, "Shape-pooled selection").
SESSION6 = [
    _c("smooth-seed2", 64, 0.9974036, 0.9878855),
    _c("smooth-seed3", 64, 0.9975945, 0.9858893),
    _c("ens-smooth-3", 192, 0.9987782, 0.9910164),
    _c("shape-seed2", 64, 0.9972127, 0.9958129),
    _c("shape-seed3", 64, 0.9972890, 0.9967430),
    _c("ens-shape-3", 192, 0.9979572, 0.9976464),
]


def test_a_tie_within_the_margin_goes_to_the_cheaper_model() -> None:
    result = choose(SESSION6, "shape-pooled")
    assert result["winner"] == "shape-seed3"  # 0.0009 below the ensemble: a tie, at a third of the FLOPs
    assert result["tied_with_best"] == ["shape-seed3", "ens-shape-3"]
    assert [c["run"] for c in result["candidates"]][:2] == ["ens-shape-3", "shape-seed3"]
    assert [c["chosen"] for c in result["candidates"]].count(True) == 1
    # Without the tie margin the highest score wins, whatever it costs.
    assert choose(SESSION6, "shape-pooled", tie=0.0)["winner"] == "ens-shape-3"
    # The plain validation AUC ranks the other recipe first. Both ensembles tie (0.0008 apart) at equal
    # cost, so the higher score wins; no single run is within 0.001 of it.
    plain = choose(SESSION6, "val-auc")
    assert plain["winner"] == "ens-smooth-3" and plain["tied_with_best"] == ["ens-smooth-3", "ens-shape-3"]


def test_a_clear_winner_wins_even_when_it_costs_more() -> None:
    result = choose([_c("cheap", 10, 0.99, 0.980), _c("dear", 100, 0.99, 0.9812)], "shape-pooled")
    assert result["winner"] == "dear" and result["tied_with_best"] == ["dear"]
    json.dumps(result)


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"criterion": "test-auc"}, "--criterion"), ({"tie": -0.1}, "--tie"), ({"runs": (Path("a"),)}, "two")],
)
def test_bad_settings_are_refused(changes: dict, match: str) -> None:
    settings: dict = {"runs": (Path("a"), Path("b")), "data": Path("d")} | changes
    with pytest.raises(TrainError, match=match):
        SelectConfig(**settings)


def test_select_scores_runs_on_their_shared_validation_split(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "data")
    runs = [_run_folder(tiny_bundle, data, tmp_path / name) for name in ("dear", "cheap")]
    for run, flops in zip(runs, (2_000_000, 1_000_000), strict=True):
        info = ModelInfo.load(run)
        ModelInfo(**{**info.__dict__, "extra": {"params": flops // 10, "flops": flops}}).save(run)
    argv = [str(r) for r in runs] + ["--data", str(data), "--cache-dir", str(tmp_path / "c"), "-q"]
    assert select_main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The same model twice scores the same: a tie, so the cheaper run is chosen.
    assert result["winner"] == str(runs[1]) and len(result["tied_with_best"]) == 2
    assert result["candidates"][0]["shape_pooled_auc"] == result["candidates"][1]["shape_pooled_auc"]
    assert "test split was not read" in result["note"]
    assert select_main(argv) == 0
    assert "<- chosen" in capsys.readouterr().out

    other = tmp_path / "other"
    _run_folder(tiny_bundle, data, other)
    split = json.loads((other / "split.json").read_text())
    split["val"] = split["val"][1:]  # one validation image fewer: not comparable
    (other / "split.json").write_text(json.dumps(split))
    assert select_main([str(runs[0]), str(other), "--data", str(data), "-q"]) == 1
    assert "validation split differs" in capsys.readouterr().err


def _runs(tiny_bundle: Path, data: Path, root: Path, synthetic: bool) -> list[Path]:
    root.mkdir(exist_ok=True)
    runs = [_run_folder(tiny_bundle, data, root / name) for name in ("a", "b")]
    for run in runs:
        info = ModelInfo.load(run)
        ModelInfo(**{**info.__dict__, "synthetic": synthetic}).save(run)
    return runs


def test_a_ranking_of_synthetic_runs_says_so(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.contract import SYNTHETIC_WARNING

    data = _data(tmp_path / "data")
    cache = ["--cache-dir", str(tmp_path / "c"), "-q"]
    synthetic = [str(r) for r in _runs(tiny_bundle, data, tmp_path / "synth", synthetic=True)]
    assert select_main([*synthetic, *cache]) == 0
    assert capsys.readouterr().out.startswith(f"*** {SYNTHETIC_WARNING} ***")
    assert select_main([*synthetic, *cache, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["synthetic"] is True and result["warning"] == SYNTHETIC_WARNING
    assert all(c["synthetic"] for c in result["candidates"])
    real = [str(r) for r in _runs(tiny_bundle, data, tmp_path / "real", synthetic=False)]
    assert select_main([*real, *cache]) == 0
    assert "SYNTHETIC" not in capsys.readouterr().out
    assert select_main([*real, *cache, "--json"]) == 0
    assert "warning" not in json.loads(capsys.readouterr().out)


def test_data_is_optional_and_follows_a_data_set_that_moved(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "data")
    runs = [str(r) for r in _runs(tiny_bundle, data, tmp_path, synthetic=False)]
    cache = ["--cache-dir", str(tmp_path / "c"), "-q", "--json"]
    assert select_main([*runs, *cache]) == 0  # no --data: the paths split.json recorded
    before = json.loads(capsys.readouterr().out)
    assert select_main([*runs, "--data", str(tmp_path / "nonexistent"), *cache]) == 1
    assert "nonexistent: folder not found" in capsys.readouterr().err
    moved = tmp_path / "moved"
    data.rename(moved)
    assert select_main([*runs, *cache]) == 1  # the recorded paths are gone, and it says where to look
    assert "--data" in capsys.readouterr().err
    assert select_main([*runs, "--data", str(moved), *cache]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == before["candidates"]
    assert select_main([*runs, "--data", str(tmp_path / "a"), *cache]) == 1  # a folder without the images
    assert "validation images are not under --data" in capsys.readouterr().err
