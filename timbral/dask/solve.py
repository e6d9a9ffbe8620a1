"""The block code's one door to the model layer (``timbral.nmf``'s public functions).

Blocks need the objective's weights, the kernel's values, the regularised Gram
matrix and the row solve (``timbral.nmf.fit.half_step``, the same function the local
fit loop calls), plus three things the local loop computes from whole matrices and a
distributed fit must compute from reductions: the loss, λ for ``"auto"``, and the
random start of each block.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import ValidationError
from timbral.nmf.fit import SolveSettings, half_step, regularized_gram, triplet
from timbral.nmf.objective import FIT_SWEEPS, auto_regularization, kernel_data, weights_of

__all__ = [
    "FIT_SWEEPS", "SolveSettings", "block_mass", "block_start", "check_finite", "kernel_data",
    "objective", "regularized_gram", "settings", "solve_rows", "start_scale",
]


def settings(feedback: str, alpha: float, l1: float) -> SolveSettings:
    """What every row solve of the fit shares (weights, L1, sweeps), as the local loop builds it."""
    return SolveSettings(weights_of(feedback, alpha), l1, FIT_SWEEPS[feedback])


def solve_rows(
    block: sp.csr_matrix,
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram: NDArray[np.floating],
    solve: SolveSettings,
    n_threads: int,
    row_loss: NDArray[np.float64],
) -> None:
    """Update every row of ``X`` in place against ``Y`` (``block``: CSR of kernel values, columns into ``Y``)."""
    half_step(triplet(block, block.data), X, Y, gram, solve, n_threads, row_loss)


def objective(
    WtW: NDArray[np.floating],
    HtH: NDArray[np.floating],
    solve: SolveSettings,
    l2: float,
    observed: float,
    sum_w: float,
    sum_h: float,
) -> float:
    """β Σ (WᵀW ∘ HᵀH) + Σ_obs [c (p − s)² − β s²] + l2 (tr WᵀW + tr HᵀH) + l1 (ΣW + ΣH).

    The fit loop's objective written over reductions only (k × k Grams, the summed
    observed losses of the H half-step, ΣW and ΣH), so no factor matrix is needed.
    """
    value = solve.weights.beta * float(np.sum(WtW.astype(np.float64) * HtH)) + observed
    value += l2 * float(np.trace(WtW) + np.trace(HtH))
    return value + solve.l1 * (sum_w + sum_h)


def check_finite(value: float, iteration: int, alpha: float, l2: float) -> None:
    """Stop a diverging fit with what to change."""
    if not np.isfinite(value):
        raise ValidationError(
            f"distributed fit diverged at iteration {iteration}: the loss is {value}. Lower alpha "
            f"(got {alpha}) or use confidence='log', or raise the regularization (l2={l2}); check the "
            "data for huge values (CleaningRules.max_value drops them)."
        )


def block_mass(block: sp.csr_matrix, feedback: str, alpha: float, confidence: str) -> float:
    """The block's share of ``auto_regularization``'s numerator (Σ of the confidences).

    ``auto_regularization`` is mass / (rows + columns), so the block's mass is its
    value times its rows plus columns, and the blocks' masses add up.
    """
    return auto_regularization(block, feedback, alpha, confidence) * sum(block.shape)


def block_start(
    state: dict, offset: int, n_rows: int, k: int, scale: float, dtype: np.dtype
) -> NDArray[np.floating]:
    """Rows ``offset:offset + n_rows`` of ``init_factors``'s random start, drawn without the others.

    ``state`` is the PCG64 ``bit_generator.state`` the fit starts from; ``offset``
    counts rows over W then H (H's first row is ``n_users``). The start draws
    ``rng.random((N, k), float32)``, and two float32 draws use one 64-bit step, so
    ``advance`` jumps straight to the block's first value.
    """
    bits = np.random.PCG64()
    bits.state = state
    first = offset * k
    bits.advance(first // 2)
    rng = np.random.Generator(bits)
    if first % 2:
        rng.random(1, dtype=np.float32)  # the step's first half belongs to the previous row
    rows = rng.random((n_rows, k), dtype=np.float32).astype(dtype, copy=False)
    rows *= dtype.type(scale)
    return rows


def start_scale(target_sum: float, n_users: int, n_items: int, k: int) -> float:
    """sqrt(mean(target) / k), ``init_factors``'s scale of the random start."""
    return float(np.sqrt(abs(target_sum) / (n_users * n_items) / k))
