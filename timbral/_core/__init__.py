"""Compiled kernels: small, pure, GIL-free. Python validates; these only compute."""

from timbral._core._openmp import _openmp_enabled, _openmp_max_threads

__all__ = ["_openmp_enabled", "_openmp_max_threads"]
