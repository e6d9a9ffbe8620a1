"""Timbral: music recommendations from non-negative matrix factorization."""

from timbral._version import __version__
from timbral.interactions import Interactions, load_interactions
from timbral.nmf import Explanation, NMFModel
from timbral.recommender import Recommender

__all__ = ["Explanation", "Interactions", "NMFModel", "Recommender", "__version__", "load_interactions"]
