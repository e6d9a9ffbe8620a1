"""Why a model scores an item for a user: latent factors and history items.

The user's factors solve (without the bound) ``A_u w_u = b_u`` with
``A_u = β HᵀH + λ₂ I + Σ_j (c_j − β) h_j h_jᵀ`` and ``b_u = Σ_j c_j p_j h_j``, so
``w_u·h_i = Σ_j c_j p_j · h_jᵀ A_u⁻¹ h_i``: one term per history item, as implicit's
ALS ``explain``. ``β HᵀH + λ₂ I`` is the same for every user; :class:`Explainer`
computes it once per model, so one explanation costs O(|history|·k² + k³) and never
touches all of H.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.nmf.fit import regularized_gram
from timbral.nmf.objective import BM25Stats, RowPenalty, confidence_data, kernel_data, mass_of_row, weights_of


@dataclass(frozen=True)
class Explanation:
    """Why ``user`` is recommended ``item``.

    ``NMFModel.explain`` fills it with internal indices, ``Recommender.explain`` with
    external ids; the shape is the same.

    Attributes
    ----------
    user, item : int or str
        Internal indices (NMFModel) or external ids (Recommender).
    score : float
        The model's score for the pair (``predict``).
    factors : list of (factor, contribution)
        The latent factors with the largest ``w_uf · h_if``; they sum (with the
        rest) to the factor part of the score.
    items : list of (history item, contribution)
        The user's own interactions that push the score up most: the score's
        linear decomposition over the row solver's right-hand side,
        ``c_j p_j · h_jᵀ A_u⁻¹ h_i`` (as implicit's ALS ``explain``).
    bias : float
        ``μ + b_u + b_i`` for explicit feedback, else 0.
    """

    user: Any
    item: Any
    score: float
    factors: list[tuple[int, float]] = field(default_factory=list)
    items: list[tuple[Any, float]] = field(default_factory=list)
    bias: float = 0.0

    def with_ids(self, user: Any, item: Any, items: list[Any]) -> Explanation:
        """The same explanation with ``user``, ``item`` and the history items renamed."""
        renamed = [(name, c) for name, (_, c) in zip(items, self.items, strict=True)]
        return replace(self, user=user, item=item, items=renamed)

    def to_dict(self) -> dict[str, Any]:
        """``{"user_id", "item_id", "score", "bias", "factors": [{"factor", "contribution"}],
        "items": [{"item_id", "contribution"}]}`` (the HTTP API's shape)."""
        return {
            "user_id": self.user,
            "item_id": self.item,
            "score": self.score,
            "bias": self.bias,
            "factors": [{"factor": f, "contribution": c} for f, c in self.factors],
            "items": [{"item_id": i, "contribution": c} for i, c in self.items],
        }


class Explainer:
    """The explain maths of one fitted model, with its user-independent part computed once.

    Parameters
    ----------
    item_factors : ndarray of shape (n_items, k)
    feedback, alpha, confidence : the model's objective.
    penalty : RowPenalty
        The ridge: λ of a user's row from its total entry weight.
    bm25 : BM25Stats, optional
        The training matrix's statistics when ``confidence="bm25"``.
    global_mean, user_bias, item_bias : the explicit-feedback offsets (zeros otherwise).
    """

    def __init__(
        self,
        item_factors: NDArray[np.floating],
        *,
        feedback: str,
        alpha: float,
        confidence: str,
        penalty: RowPenalty,
        bm25: BM25Stats | None,
        global_mean: float,
        user_bias: NDArray[np.floating],
        item_bias: NDArray[np.floating],
    ) -> None:
        self.item_factors = item_factors
        self.feedback, self.confidence, self.bm25 = feedback, confidence, bm25
        self.weights = weights_of(feedback, alpha)
        self.penalty = penalty
        self.global_mean, self.user_bias, self.item_bias = global_mean, user_bias, item_bias
        H = item_factors
        self.system = regularized_gram((H.T @ H).astype(np.float64), self.weights.beta, 0.0)

    def history_contributions(self, row: sp.csr_matrix, user: int, item: int) -> NDArray[np.float64]:
        """``c_j p_j · h_jᵀ A_u⁻¹ h_i`` for each stored item j of ``row`` (the user's history)."""
        w = self.weights
        if self.feedback == "implicit":
            scaled = confidence_data(row, self.confidence, np.dtype(np.float64), self.bm25)
            confidence, target = w.conf_offset + w.conf_scale * scaled, 1.0
        elif self.feedback == "explicit":
            confidence = np.ones(row.nnz)
            target = row.data - self.global_mean - self.user_bias[user] - self.item_bias[row.indices]
        else:
            confidence, target = np.ones(row.nnz), row.data.astype(np.float64)
        history = self.item_factors[row.indices].astype(np.float64)
        values = kernel_data(row, self.feedback, self.confidence, np.dtype(np.float64), self.bm25)
        mass = mass_of_row(values, row.shape[1], w)
        system = self.system + (history * (confidence - w.beta)[:, None]).T @ history
        system[np.diag_indices_from(system)] += self.penalty.of(mass)
        direction = np.linalg.lstsq(system, self.item_factors[item].astype(np.float64), rcond=None)[0]
        return confidence * target * (history @ direction)

    def explain(
        self, row: sp.csr_matrix, user: int, item: int, user_factors: NDArray[np.floating],
        bias: float, n_factors: int, n_items: int,
    ) -> Explanation:
        """The :class:`Explanation` of ``user`` (factor row ``user_factors``, history ``row``) for ``item``."""
        per_factor = user_factors.astype(np.float64) * self.item_factors[item].astype(np.float64)
        top_factors = np.argsort(-per_factor, kind="stable")[:n_factors]
        contributions = self.history_contributions(row, user, item)
        order = np.argsort(-contributions, kind="stable")[:n_items]
        return Explanation(
            user=user,
            item=item,
            score=float(per_factor.sum() + bias),
            factors=[(int(f), float(per_factor[f])) for f in top_factors],
            items=[(int(row.indices[j]), float(contributions[j])) for j in order],
            bias=bias,
        )
