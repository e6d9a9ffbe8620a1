"""The package as installed: compiled kernels, OpenMP, and (in CI) not the source tree."""

import os
import site
import sys
from pathlib import Path

import pytest

import timbral
from timbral import _core


def test_kernels_report_their_build():
    assert isinstance(_core._openmp_enabled(), bool)
    assert _core._openmp_max_threads() >= 1


installed_only = pytest.mark.skipif(
    os.environ.get("TIMBRAL_TEST_INSTALLED") != "1",
    reason="a developer's in-place build; scripts/test checks the installed wheel",
)


@installed_only
def test_tests_run_against_the_installed_wheel():
    repo = Path(__file__).resolve().parents[1]
    assert repo not in Path(timbral.__file__).resolve().parents, timbral.__file__
    assert _core._openmp_enabled(), "the wheel was built without OpenMP"


def test_the_row_solver_matches_the_cpu():
    from timbral._core import _cpu_has, _nmf, nmf

    if nmf is not _nmf:
        assert nmf.__name__ == "timbral._core._nmf_avx2" and _cpu_has("AVX2", "FMA3")
    elif os.environ.get("TIMBRAL_TEST_INSTALLED") == "1" and _cpu_has("AVX2", "FMA3"):
        assert os.environ.get("TIMBRAL_KERNELS") == "portable", "the wheel lacks the AVX2 build"


@installed_only
def test_the_test_environment_sees_nothing_of_the_machines_packages():
    """scripts/test's environment is a venv without system site-packages: what passes
    here passes on a fresh machine."""
    assert sys.prefix != sys.base_prefix, "not running in a virtual environment"
    system = {Path(p).resolve() for p in site.getsitepackages([sys.base_prefix])}
    leaked = [p for p in sys.path if p and Path(p).resolve() in system]
    assert not leaked, f"system site-packages on sys.path: {leaked}"
