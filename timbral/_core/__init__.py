"""Compiled kernels: small, pure, GIL-free. Python validates; these only compute.

``nmf`` is the row-solver module for this CPU: ``_nmf_avx2`` (the same source built
with AVX2 and FMA) when the CPU has both and the build made it, else the portable
``_nmf``. ``TIMBRAL_KERNELS=portable`` forces the portable one.

``topk_half`` is the top-K pre-pass module (``_topk_half``: float16 items, AVX2 + FMA +
F16C) when the CPU has all three and the build made it, else ``None`` and every top-K
runs the exact ``_topk``. ``TIMBRAL_TOPK=exact`` (or ``TIMBRAL_KERNELS=portable``) forces
the exact one: the same lists, for A/B measurements.
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


def _select_topk_half() -> ModuleType | None:
    if (os.environ.get("TIMBRAL_KERNELS", "").lower() == "portable"
            or os.environ.get("TIMBRAL_TOPK", "").lower() == "exact"
            or not _cpu_has("AVX2", "FMA3", "F16C")):
        return None
    try:
        from timbral._core import _topk_half
    except ImportError:  # the compiler could not build it
        return None
    return _topk_half


nmf = _select_nmf()
topk_half = _select_topk_half()

__all__ = ["_openmp_enabled", "_openmp_max_threads", "nmf", "topk_half"]
