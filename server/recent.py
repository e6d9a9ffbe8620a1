"""Plays since the served model was trained, per user, for real-time fold-in.

Filled by the registry follower from ``timbral_interactions`` when ingestion
announces which users got new events (``NOTIFY timbral_interactions``), emptied and
refilled when a new model is swapped in. A digest of a user's recent plays goes into
that user's cache key, so an answer computed before their new plays is never served
again while everyone else's stays valid; being computed from the plays themselves,
it is the same on every replica, so replicas can share those answers through Redis.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class RecentPlays:
    digest: str  # of the plays: part of the user's cache key
    items: dict[str, float]  # item id (as text) -> plays since the model was trained


class RecentEvents:
    """A bounded LRU of user id (as text) -> :class:`RecentPlays`."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._users: OrderedDict[str, RecentPlays] = OrderedDict()

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user_id: str) -> RecentPlays | None:
        return self._users.get(user_id)

    def replace(self, user_id: str, items: dict[str, float]) -> None:
        """Set a user's plays since training (their cache keys change with them)."""
        encoded = orjson.dumps(items, option=orjson.OPT_SORT_KEYS)
        self._users[user_id] = RecentPlays(hashlib.sha256(encoded).hexdigest()[:16], items)
        self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def clear(self) -> None:
        self._users.clear()
