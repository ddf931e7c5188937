"""Every ``pneumo ... --help`` page renders cleanly: exit 0, usage first, no argparse escapes left in."""

from __future__ import annotations

import pytest

from edge_runtime import pneumo_cli

PAGES = [
    ["data"],
    ["data", "check"],
    ["data", "split"],
    ["data", "synth"],
    ["train"],
    ["train", "sweep"],
    ["train", "ensemble"],
    ["train", "select"],
    ["evaluate"],
    ["export"],
    ["export", "onnx"],
    ["export", "calib"],
    ["export", "bundle"],
    ["export", "engine"],
    ["edge"],
    ["edge", "predict"],
    ["edge", "camera"],
    ["edge", "watch"],
    ["edge", "build"],
    ["edge", "doctor"],
    ["bench"],
]


@pytest.mark.parametrize("page", PAGES, ids=" ".join)
def test_help_page_renders_without_leftover_escapes(
    page: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = pneumo_cli.main([*page, "--help"])
    except SystemExit as exc:  # argparse exits after printing help
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("usage: pneumo " + " ".join(page))
    # '%%' is argparse's escape inside help= strings only; in a description or epilog it prints as is
    assert "%%" not in out
