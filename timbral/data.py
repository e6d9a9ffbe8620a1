"""Loading interaction logs (kept for existing imports).

The loader lives in :mod:`timbral.interactions` (``Interactions``,
``load_interactions``), the cleaning rules and their report in
:mod:`timbral.cleaning`, the file readers in :mod:`timbral.io` and the id maps in
:mod:`timbral.ids`.
"""

from timbral.cleaning import ValidationReport
from timbral.interactions import Interactions, load_interactions

__all__ = ["Interactions", "ValidationReport", "load_interactions"]
