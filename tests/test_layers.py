"""The dependency direction of STYLE.md: export and benchmarks use the edge runtime, never ``train``.

The benchmarks run on the Jetson, where only the edge runtime's dependencies are
installed; export runs beside training but reads what training wrote (contract,
model info, split.json) through the edge runtime's readers. Checked in a fresh
interpreter, because this test session may already have imported ``train``.
(``edge_runtime`` itself importing none of ours is tests/edge_runtime/test_lean.py.)
"""

from __future__ import annotations

import pytest

from tests.edge_runtime.test_lean import _loaded_after


@pytest.mark.parametrize("package", ["export", "benchmarks"])
def test_package_imports_nothing_of_train(package: str) -> None:
    body = f"""
import importlib, pkgutil, {package}
names = [m.name for m in pkgutil.walk_packages({package}.__path__, "{package}.")]
assert len(names) > 5, names
for name in names:
    importlib.import_module(name)
"""
    assert _loaded_after(body, ("train",)) == []
