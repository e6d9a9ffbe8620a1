"""Weighted NMF for recommendation: the estimator and its explanations.

``objective`` (feedback kinds, confidence, constants), ``init`` (starting factors),
``fit`` (the one fit loop and its half-step backends), ``explain`` and ``estimator``.
"""

from timbral.nmf.estimator import FittedState, NMFModel
from timbral.nmf.explain import Explanation

__all__ = ["Explanation", "FittedState", "NMFModel"]
