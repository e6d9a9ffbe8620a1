"""JSON for ranked items, built from arrays without a Python object per item.

Through ``Recommendations.to_dict`` an item costs a tuple, a dict and two boxed numbers
before orjson sees it, and those allocations set off garbage collections. Here orjson
writes a slice of ids and a slice of scores as two arrays in C; splitting them and
joining each id to its score are C loops too (``bytes.split``, ``map(bytes.join)``).
The bytes are the same as ``orjson.dumps(recs.to_dict()["recommendations"])``.

Each C call handles at most ``ITEMS_PER_CALL`` items, so a thread encoding a large
answer gives the GIL back to the event loop between calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from timbral.recommender import RankedBatch

ITEMS_PER_CALL = 4096  # ~150 KB of JSON: a fraction of a millisecond per C call
_OPEN = b'[{"item_id":'
_BETWEEN_ITEMS = b'},{"item_id":'
_SCORE = b',"score":'


def _json_values(values: np.ndarray) -> list[bytes]:
    """The JSON text of each value (int64 or float64 arrays, or an object array of str)."""
    if values.dtype == object:
        return list(map(orjson.dumps, values.tolist()))
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    return text[1:-1].split(b",") if values.size else []


def _item_pairs(batch: RankedBatch) -> list[bytes]:
    """``<item id>,"score":<score>`` for every item of ``batch``, in order."""
    pairs: list[bytes] = []
    for start in range(0, batch.item_ids.size, ITEMS_PER_CALL):
        stop = start + ITEMS_PER_CALL
        ids = _json_values(batch.item_ids[start:stop])
        scores = _json_values(batch.scores[start:stop])
        pairs += map(_SCORE.join, zip(ids, scores, strict=True))
    return pairs


def encode_rows(batch: RankedBatch, limits: Sequence[int] | None = None) -> list[bytes]:
    """Each row's items as a JSON array ``[{"item_id": ..., "score": ...}, ...]``.

    ``limits[r]`` keeps only the first ``limits[r]`` items of row ``r`` (a shorter
    ``k`` asked in the same scoring batch: its list is a prefix of the longer one).
    """
    pairs = _item_pairs(batch)
    bounds = batch.offsets.tolist()
    rows = []
    for r in range(len(batch)):
        start, stop = bounds[r], bounds[r + 1]
        if limits is not None:
            stop = min(stop, start + limits[r])
        rows.append(_OPEN + _BETWEEN_ITEMS.join(pairs[start:stop]) + b"}]" if stop > start else b"[]")
    return rows
