"""Compiled kernels: small, pure, GIL-free. Python validates; these only compute.

``nmf`` is the row-solver module for this CPU: ``_nmf_avx2`` (the same source built
with AVX2 and FMA) when the CPU has both and the build made it, else the portable
``_nmf``. ``TIMBRAL_KERNELS=portable`` forces the portable one.
"""

import os
from types import ModuleType

from timbral._core import _nmf
from timbral._core._openmp import _openmp_enabled, _openmp_max_threads


def _cpu_has(*features: str) -> bool:
    """Whether the CPU has every one of ``features``, as NumPy's dispatcher sees it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return all(__cpu_features__.get(name, False) for name in features)


def _select_nmf() -> ModuleType:
    if os.environ.get("TIMBRAL_KERNELS", "").lower() == "portable" or not _cpu_has("AVX2", "FMA3"):
        return _nmf
    try:
        from timbral._core import _nmf_avx2
    except ImportError:  # the compiler could not build it
        return _nmf
    return _nmf_avx2


nmf = _select_nmf()

__all__ = ["_openmp_enabled", "_openmp_max_threads", "nmf"]
