"""Timbral: music recommendations from non-negative matrix factorization."""

from timbral._version import __version__

__all__ = ["__version__"]
