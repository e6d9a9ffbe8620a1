"""Training and batch scoring on a Dask cluster, where no single process holds the data.

``fit`` reads a Parquet dataset (or a dask DataFrame) on the workers, keeps R, Rᵀ and
the factors there as blocks, and exchanges only k × k Gram matrices and the factor
rows each block needs; ``recommend_all`` writes every user's top-k as partitioned
Parquet. Needs the ``distributed`` extra (``pip install timbral[distributed]``).
"""

from timbral.dask.blocks import Blocks, CleaningRules, read_blocks
from timbral.dask.fit import DaskFit, fit
from timbral.dask.scoring import RecommendAllSummary, recommend_all

__all__ = ["Blocks", "CleaningRules", "DaskFit", "RecommendAllSummary", "fit", "read_blocks", "recommend_all"]
