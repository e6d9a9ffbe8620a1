"""One layer, one job (issue 8): no module reaches into another module's private names.

The package's modules and the server's may import any module of the package, but
only its public names; the Python wrappers of the compiled kernels
(``timbral._core``) are the one exception. Checked on the source with ``ast``:
``from m import _name``, ``module._name`` through an imported module, and
``obj._name`` where ``_name`` is not defined by the module doing the access.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("timbral", "server") for p in (ROOT / folder).rglob("*.py") if "_core" not in p.parts
)
ALLOWED_MODULES = ("timbral._core",)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> set[str]:
    """Private names the module itself defines (functions, classes, attributes, variables)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _private(n)}


def violations(source: str, path: str) -> list[str]:
    """Every reach into another module's private names in ``source``."""
    tree = ast.parse(source, path)
    own = _own_names(tree)
    modules: dict[str, str] = {}  # local alias -> imported module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _private(alias.name) and not full.startswith(ALLOWED_MODULES):
                    found.append(f"{path}:{node.lineno} imports {alias.name} from {node.module}")
                modules[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if isinstance(base, ast.Name) and modules.get(base.id, "").startswith(ALLOWED_MODULES):
            continue
        if node.attr in own:
            continue
        found.append(f"{path}:{node.lineno} uses .{node.attr} of {ast.unparse(base)}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path):
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from timbral._solvers import _weights", "imports _weights from timbral._solvers"),
        ("from timbral import model\nmodel._state()", "uses ._state of model"),
        ("def f(model):\n    return model._from_state", "uses ._from_state of model"),
    ],
)
def test_the_check_catches_each_kind_of_reach(source, expected):
    assert any(expected in v for v in violations(source, "x.py"))


@pytest.mark.parametrize(
    "source",
    [
        "from timbral._core import _nmf\n_nmf.solve_rows",
        "from timbral._core import nmf as _nmf\n_nmf._anything",
        "class A:\n    def f(self):\n        return self._x",
        "def _helper(): ...\nclass B:\n    def g(self, other):\n        return other._helper",
        "from timbral._validation import check_k",
    ],
)
def test_the_check_allows_kernels_own_names_and_public_names(source):
    assert violations(source, "x.py") == []
