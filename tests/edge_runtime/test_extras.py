"""Optional extras: which modules are missing here, and the one-line error that names the extra."""

from __future__ import annotations

import sys

import pytest

from edge_runtime import extras


def test_missing_modules_reports_absent_and_blocked_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "blocked_for_this_test", None)
    found = extras.missing_modules(["json", "no_such_module_here", "blocked_for_this_test", "no_pkg.sub"])
    assert found == ["no_such_module_here", "blocked_for_this_test", "no_pkg.sub"]
    assert extras.missing_message("training", ["keras"], "train") == (
        "training needs keras, which is not installed here; "
        "install the train extra from the pneumo-edge checkout: pip install -e '.[train]'"
    )
