"""Top-K selection (interim: the NumPy reference until the compiled kernel lands)."""

from timbral._reference import top_k as _top_k


def top_k(query, items, k, *, exclude=None, item_mask=None, n_threads=0):
    return _top_k(query, items, k, exclude=exclude, item_mask=item_mask)
