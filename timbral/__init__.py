"""Timbral: music recommendations from non-negative matrix factorization."""

from timbral._version import __version__
from timbral.model import Explanation, NMFModel

__all__ = ["Explanation", "NMFModel", "__version__"]
