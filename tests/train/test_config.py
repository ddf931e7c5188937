"""--config files and settings that would otherwise be dropped silently (train/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.cli import train_main
from train.config import load_toml, merge
from train.errors import ConfigError


def _toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_keys_above_a_train_table_are_refused_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = _toml(tmp_path / "mixed.toml", 'epochs = 1\nbatch_size = 8\n[train]\narch = "dsconv"\n')
    with pytest.raises(ConfigError, match="batch_size, epochs sit above the \\[train\\] table"):
        load_toml(mixed)
    out = tmp_path / "run"
    assert train_main(["--config", str(mixed), "--data", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(mixed) in err and "move them below the [train] header" in err and not out.exists()
    # Either layout alone reads every setting.
    table = _toml(tmp_path / "table.toml", '[train]\nepochs = 1\nbatch_size = 8\narch = "dsconv"\n')
    flat = _toml(tmp_path / "flat.toml", 'epochs = 1\nbatch_size = 8\narch = "dsconv"\n')
    for path in (table, flat):
        config = merge(load_toml(path), {}).resolved()
        assert (config.epochs, config.batch_size, config.arch) == (1, 8, "dsconv")


@pytest.mark.parametrize("weight", ["0.7", "0.5"])
def test_distill_weight_flag_without_teacher_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], weight: str
) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tmp_path), "--out", str(out), "--distill-weight", weight]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--distill-weight {weight} has no effect without --teacher" in err and not out.exists()


def test_distill_weight_in_a_config_file(tmp_path: Path) -> None:
    chosen = _toml(tmp_path / "chosen.toml", "[train]\ndistill_weight = 0.7\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'chosen.toml'}: --distill-weight 0.7 has no effect"):
        merge(load_toml(chosen), {}, source=str(chosen))
    # With a teacher (from the file or a flag) it is what distillation uses.
    assert merge(load_toml(chosen), {"teacher": tmp_path}).distill_weight == 0.7
    # The default, as 'pneumo train sweep' writes every setting into configs/NAME.toml, is no choice.
    written = _toml(tmp_path / "written.toml", "[train]\ndistill_weight = 0.5\nepochs = 2\n")
    assert merge(load_toml(written), {}).teacher is None
    assert merge({}, {}).distill_weight == 0.5
