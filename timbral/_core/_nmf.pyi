import numpy as np
from numpy.typing import NDArray

#: Rows with more entries than this are solved chunk by chunk (bounded scratch).
LONG_ROW_ENTRIES: int

def solve_rows(
    indptr: NDArray[np.integer],
    indices: NDArray[np.integer],
    data: NDArray[np.floating],
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram: NDArray[np.floating],
    conf_offset: float,
    conf_scale: float,
    target_one: bool,
    beta: float,
    l1: float,
    n_sweeps: int,
    n_threads: int,
    row_loss: NDArray[np.float64] | None = None,
    row_l2: NDArray[np.float64] | None = None,
) -> None: ...
def observed_dot(
    indptr: NDArray[np.integer],
    indices: NDArray[np.integer],
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    out: NDArray[np.floating],
    n_threads: int,
) -> None: ...
