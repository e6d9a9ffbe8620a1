# The same kernels as _nmf, built for AVX2 + FMA.
from timbral._core._nmf import LONG_ROW_ENTRIES as LONG_ROW_ENTRIES
from timbral._core._nmf import observed_dot as observed_dot
from timbral._core._nmf import solve_rows as solve_rows
