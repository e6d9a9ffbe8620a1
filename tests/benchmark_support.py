"""Importing a benchmark script from the tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import timbral  # noqa: F401 - the package under test, imported before a benchmark puts its checkout on sys.path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, with ``sys.path`` as it was before.

    A benchmark puts its checkout first on ``sys.path`` (it measures the tree it sits in). Left
    there, every later import of timbral from a subprocess (Dask's worker processes) or through
    ``importlib.metadata`` would find the checkout, which holds no compiled kernel, instead of
    the installed package.
    """
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
