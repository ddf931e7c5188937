"""``pneumo`` itself: a missing optional module is one line naming the install command, never a traceback."""

from __future__ import annotations

import sys
import types

import pytest

from edge_runtime import pneumo_cli


def _fake_subcommand(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Route ``pneumo export`` to a module whose main raises ``error``, as a stage's deep import would."""
    module = types.ModuleType("fake_export_cli")

    def main(argv: list[str], prog: str) -> int:
        raise error

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_export_cli", module)
    monkeypatch.setitem(pneumo_cli.SUBCOMMANDS, "export", ("fake_export_cli", "main", "test"))
    monkeypatch.setitem(pneumo_cli.EXTRA_FOR, "fake_export_cli", "train")


def test_a_known_missing_module_escaping_a_stage_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_subcommand(
        monkeypatch, ModuleNotFoundError("No module named 'tf2onnx.convert'", name="tf2onnx.convert")
    )
    assert pneumo_cli.main(["export", "onnx", "runs/x", "-o", "x.onnx"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pneumo export: error: tf2onnx is not installed")
    assert "pip install -e '.[train]'" in err and err.count("\n") == 1


def test_matplotlib_missing_under_bench_names_the_bench_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_subcommand(monkeypatch, ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"))
    monkeypatch.setitem(pneumo_cli.EXTRA_FOR, "fake_export_cli", "bench")
    assert pneumo_cli.main(["export"]) == 1
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_an_unknown_missing_module_is_a_bug_and_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_subcommand(monkeypatch, ModuleNotFoundError("No module named 'train.nope'", name="train.nope"))
    with pytest.raises(ModuleNotFoundError, match="train.nope"):
        pneumo_cli.main(["export"])
