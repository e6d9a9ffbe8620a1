"""``from timbral.model import NMFModel, Explanation`` keeps working: they live in :mod:`timbral.nmf`."""

from timbral.nmf import Explanation, NMFModel

__all__ = ["Explanation", "NMFModel"]
