# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=True
"""The row solver of ``_nmf`` compiled for AVX2 + FMA (8 floats or 4 doubles a lane).

Same source (``_nmf_impl.pxi``), built with ``-mavx2 -mfma`` when the compiler can;
``timbral._core`` imports it only on a CPU that has both, else ``_nmf``.
"""

include "_nmf_impl.pxi"
