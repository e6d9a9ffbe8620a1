"""Parameter constraints and input checks, in one place.

Every message names the argument, what was received and what was expected, so
that a caller can fix the call without reading our code.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import ValidationError


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``closed`` says which ends are included ("both", "left", "right", "neither")."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return bool(np.isfinite(value)) if isinstance(value, float) else True

    def __str__(self) -> str:
        name = "an integer" if self.kind is numbers.Integral else "a number"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{name} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


NONE = Options((None,))


def check_params(params: Mapping[str, Any], constraints: Mapping[str, list[Any]]) -> None:
    """Raise ValidationError for the first parameter matching none of its constraints."""
    for name, allowed in constraints.items():
        value = params[name]
        if any(_satisfies(value, c) for c in allowed):
            continue
        expected = " or ".join(_describe(c) for c in allowed)
        raise ValidationError(f"`{name}` must be {expected}; got {value!r}.")


def _satisfies(value: Any, constraint: Any) -> bool:
    if constraint is NONE:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return value in constraint


def _describe(constraint: Any) -> str:
    if constraint is NONE:
        return "None"
    if isinstance(constraint, type):
        return f"a {constraint.__module__}.{constraint.__qualname__}"
    return str(constraint)


def check_user_items(user_items: Any, *, name: str = "user_items") -> sp.csr_matrix:
    """A users × items CSR matrix with finite, non-negative values, sorted and deduplicated.

    Dense arrays and other sparse formats are converted (a copy); float64 is kept,
    anything else becomes float32. Explicitly stored zeros are dropped (a copy; the
    caller's matrix is untouched), as the loader drops them.
    """
    if isinstance(user_items, (list, tuple)):
        user_items = np.asarray(user_items)
    if isinstance(user_items, np.ndarray):
        if user_items.ndim != 2:
            raise ValidationError(
                f"`{name}` must be a 2-D users × items matrix; got an array of shape {user_items.shape}."
            )
        user_items = sp.csr_matrix(user_items)
    elif not sp.issparse(user_items):
        if sp.issparse(getattr(user_items, "user_items", None)):  # what load_interactions returns
            hint = f"pass its matrix, `{name}.user_items` (the ids stay in its id maps)."
        else:
            hint = ("build one with scipy.sparse.csr_matrix((values, (user_idx, item_idx))), or read "
                    "a file with timbral.load_interactions and pass its `.user_items`.")
        raise ValidationError(
            f"`{name}` must be a scipy.sparse matrix (users × items); got {type(user_items).__name__}: {hint}"
        )
    csr = sp.csr_matrix(user_items)
    if csr.shape[0] == 0 or csr.shape[1] == 0:
        raise ValidationError(f"`{name}` has shape {csr.shape}; it needs at least one user and one item.")
    if csr.dtype not in (np.float32, np.float64):
        if not np.issubdtype(csr.dtype, np.number) or np.issubdtype(csr.dtype, np.complexfloating):
            raise ValidationError(f"`{name}` must hold real numbers; got dtype {csr.dtype}.")
        csr = csr.astype(np.float32)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    if csr.nnz and np.any(csr.data == 0):
        # A stored zero is not an observation (the loader drops them too); kept, it
        # would become a positive with confidence 1 under implicit feedback.
        csr = csr.copy()  # may share the caller's arrays
        csr.eliminate_zeros()
    if not np.all(np.isfinite(csr.data)):
        bad = int(np.count_nonzero(~np.isfinite(csr.data)))
        raise ValidationError(
            f"`{name}` holds {bad} NaN or infinite value(s); drop or impute them before fitting."
        )
    if csr.nnz and csr.data.min() < 0:
        raise ValidationError(
            f"`{name}` holds negative values (min {csr.data.min():g}); interactions and ratings must be ≥ 0."
        )
    if csr.nnz == 0:
        raise ValidationError(f"`{name}` has no stored interactions; there is nothing to learn from.")
    return csr


def check_index(value: Any, size: int, *, name: str) -> int:
    """An integer index in [0, size)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValidationError(f"`{name}` must be an integer index; got {value!r}.")
    if not 0 <= int(value) < size:
        raise ValidationError(f"`{name}` must be in [0, {size}); got {value}.")
    return int(value)


def check_indices(values: Any, size: int, *, name: str) -> NDArray[np.int64]:
    """A 1-D array of integer indices in [0, size)."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValidationError(f"`{name}` must be 1-D; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(f"`{name}` must hold integer indices; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        bad = arr[(arr < 0) | (arr >= size)][0]
        raise ValidationError(f"`{name}` must hold indices in [0, {size}); got {bad}.")
    return arr


def check_k(k: Any, *, name: str = "k", limit: int | None = None) -> int:
    """A positive number of results, clamped to ``limit`` (e.g. the number of items).

    The clamp keeps a huge ``k`` (``-k 100000000``) from allocating that many result
    slots when only ``limit`` candidates exist.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (numbers.Integral, np.integer)) or k < 1:
        raise ValidationError(f"`{name}` must be a positive integer; got {k!r}. Pass e.g. {name}=10.")
    return int(k) if limit is None else min(int(k), int(limit))


#: The one default seed (``NMF_RANDOM_STATE`` documents 42): splits, fits and generators.
DEFAULT_SEED = 42


def check_random_state(random_state: Any, *, name: str = "random_state") -> np.random.Generator:
    """A NumPy Generator from a seed (int ≥ 0), a Generator (used as is) or None (fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or (
        isinstance(random_state, (numbers.Integral, np.integer))
        and not isinstance(random_state, (bool, np.bool_))
        and random_state >= 0
    ):
        return np.random.default_rng(random_state)
    raise ValidationError(
        f"`{name}` must be a non-negative integer seed, a numpy.random.Generator or None; "
        f"got {random_state!r}. Pass e.g. {name}={DEFAULT_SEED}."
    )
