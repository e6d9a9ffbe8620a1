"""Type stubs for the compiled top-K kernel (timbral/_core/_topk.pyx)."""

import numpy as np
from numpy.typing import NDArray

def top_k(
    query: NDArray[np.floating],
    items: NDArray[np.floating],
    exclude_indptr: NDArray[np.int64],
    exclude_indices: NDArray[np.int32],
    item_mask: NDArray[np.uint8],
    ids: NDArray[np.int32],
    scores: NDArray[np.floating],
    chunk_items: int,
    block_queries: int,
    n_threads: int,
) -> int: ...
