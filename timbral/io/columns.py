"""Which column of a file plays which role (user, item, rating, timestamp).

Names are compared after normalisation: case, spaces, ``-`` and ``_`` are ignored, so
``user-id``, ``User ID``, ``userId`` and ``user_id`` are one name. Explicit names
(``user_col=``...) are normalised the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from timbral.exceptions import DataError

__all__ = ["ITEM_ALIASES", "RATING_ALIASES", "TIMESTAMP_ALIASES", "USER_ALIASES", "normalise", "resolve_columns"]

USER_ALIASES = ("user_id", "user", "uid", "listener_id", "listener", "customer_id", "member_id")
ITEM_ALIASES = (
    "item_id", "item", "artist_id", "artist", "movie_id", "movie", "track_id", "track", "song_id", "song",
    "game_id", "game_title", "game", "product_id", "book_id", "title",
)
RATING_ALIASES = ("rating", "weight", "plays", "count", "play_count", "score", "hours", "value")
TIMESTAMP_ALIASES = ("timestamp", "ts", "time", "datetime", "date")
_ROLES = (("user", USER_ALIASES, True), ("item", ITEM_ALIASES, True),
          ("rating", RATING_ALIASES, False), ("timestamp", TIMESTAMP_ALIASES, False))


def normalise(name: str) -> str:
    """``name`` without case, spaces, ``-`` and ``_``: the key aliases are matched on."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def resolve_columns(
    names: Sequence[str],
    user_col: str | None,
    item_col: str | None,
    rating_col: str | None,
    timestamp_col: str | None,
    source: str,
) -> dict[str, str | None]:
    """Map each role to a column of ``names`` (the rating and timestamp may be None).

    Raises
    ------
    DataError
        A given name is not a column, a required role matches no alias, or one column
        would play two roles; the message lists the columns found and the option to pass.
    """
    by_key: dict[str, str] = {}
    for name in names:
        by_key.setdefault(normalise(name), name)
    found = ", ".join(repr(n) for n in names)
    numeric = names and all(re.fullmatch(r"[-+.\d]+", n.strip()) for n in names)
    hint = " (the file may lack a header line)" if numeric else ""
    resolved: dict[str, str | None] = {}
    for (role, aliases, required), given in zip(_ROLES, (user_col, item_col, rating_col, timestamp_col), strict=True):
        option = f"{role}_col= (CLI: --{role}-col)"
        if given is not None:
            if normalise(given) not in by_key:
                raise DataError(
                    f"{role}_col={given!r} is not a column of {source}; columns found: {found}{hint}; "
                    f"pass one of them as {option}"
                )
            resolved[role] = by_key[normalise(given)]
            continue
        match = next((by_key[normalise(a)] for a in aliases if normalise(a) in by_key), None)
        if match is None and required:
            raise DataError(
                f"no {role} column in {source}: columns found: {found}{hint}; none matches the "
                f"usual names ({', '.join(aliases)}, ignoring case, spaces, '-' and '_'); pass {option}"
            )
        resolved[role] = match
    used = [c for c in resolved.values() if c is not None]
    if len(set(used)) != len(used):
        raise DataError(
            f"one column was chosen for two roles: {resolved}; pass user_col=, item_col=, rating_col= explicitly"
        )
    return resolved
