"""Type stubs for the half-precision top-K pre-pass (timbral/_core/_topk_half.pyx)."""

import numpy as np
from numpy.typing import NDArray

def item_bounds(items: NDArray[np.float32], out: NDArray[np.float32]) -> bool: ...
def half_tiles(items: NDArray[np.float32], scale: float, tiles: NDArray[np.uint16]) -> None: ...
def top_k_half(
    query: NDArray[np.float32],
    items: NDArray[np.float32],
    tiles: NDArray[np.uint16],
    scale: float,
    score_bound: float,
    exclude_indptr: NDArray[np.int64],
    exclude_indices: NDArray[np.int32],
    item_mask: NDArray[np.uint8],
    ids: NDArray[np.int32],
    scores: NDArray[np.float32],
    block_queries: int,
    n_threads: int,
) -> int: ...
