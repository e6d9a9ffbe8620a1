# cython: language_level=3
"""Report how the kernels were built."""

cdef extern from *:
    """
    #ifndef TIMBRAL_OPENMP
    #define TIMBRAL_OPENMP 0
    #endif
    """
    int TIMBRAL_OPENMP

from cython.parallel cimport parallel
cimport openmp


def _openmp_enabled():
    """True when the extensions were compiled and linked with OpenMP."""
    return bool(TIMBRAL_OPENMP)


def _openmp_max_threads():
    """The OpenMP runtime's default team size (1 without OpenMP)."""
    if TIMBRAL_OPENMP:
        return openmp.omp_get_max_threads()
    return 1
