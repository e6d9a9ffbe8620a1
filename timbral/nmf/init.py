"""Initial factors of a fit: random (scikit-learn's scale) or NNDSVD.

References
----------
Boutsidis, Gallopoulos. SVD based initialization: a head start for NMF. 2008 (NNDSVD).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import svds

from timbral.exceptions import ValidationError

INIT_KINDS = ("random", "nndsvd")


def init_factors(
    target: sp.csr_matrix, k: int, init: str, rng: np.random.Generator, dtype: np.dtype
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Non-negative starting factors for the zero-filled ``target`` matrix.

    ``random``: sqrt(mean(target) / k) · U[0, 1) (scikit-learn's scale; the mean of
    the product is then ~ mean(target) / 4), W drawn before H. ``nndsvd``: Boutsidis &
    Gallopoulos on a truncated SVD whose ARPACK start vector comes from ``rng``.
    """
    if init not in INIT_KINDS:
        raise ValidationError(f"`init` must be one of {', '.join(map(repr, INIT_KINDS))}; got {init!r}.")
    n_users, n_items = target.shape
    if init == "random":
        scale = dtype.type(np.sqrt(abs(target.sum()) / (n_users * n_items) / k))
        # Drawn in float32 for either dtype: float32 and float64 fits start alike.
        W = rng.random((n_users, k), dtype=np.float32).astype(dtype, copy=False)
        H = rng.random((n_items, k), dtype=np.float32).astype(dtype, copy=False)
        W *= scale
        H *= scale
        return W, H
    if k >= min(n_users, n_items):
        raise ValidationError(
            f"init='nndsvd' needs n_components < min(n_users, n_items) = "
            f"{min(n_users, n_items)}, got {k}; use init='random' or fewer components."
        )
    v0 = rng.uniform(-1.0, 1.0, min(n_users, n_items))
    U, S, Vt = svds(target.astype(np.float64), k=k, v0=v0, solver="arpack")
    order = np.argsort(S)[::-1]
    U, S, V = U[:, order], S[order], Vt[order].T
    W = np.zeros((n_users, k), dtype=dtype)
    H = np.zeros((n_items, k), dtype=dtype)
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[:, 0] = np.sqrt(S[0]) * np.abs(V[:, 0])
    for j in range(1, k):
        x, y = U[:, j], V[:, j]
        parts = [(np.maximum(x, 0), np.maximum(y, 0)), (np.maximum(-x, 0), np.maximum(-y, 0))]
        norms = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in parts]
        best = int(norms[1][0] * norms[1][1] > norms[0][0] * norms[0][1])
        (a, b), (na, nb) = parts[best], norms[best]
        if na * nb > 0:  # else the component has no usable sign pattern: leave it zero
            lam = np.sqrt(S[j] * na * nb)
            W[:, j] = lam * a / na
            H[:, j] = lam * b / nb
    return W, H
