"""The bounded memory of one inbox: which intents it has acknowledged lately and which are being
handled right now. The same rules as `mesh-agent`'s `dedupe.rs`:

- a repeat of an acknowledged intent is acknowledged again and not handed to the application;
- a repeat of an intent still being handled is ignored (no reply: the gateway asks again later,
  and by then the first copy is acknowledged or released);
- the memory keeps the last `capacity` acknowledged ids, oldest forgotten first;
- keys are `(sender, intent id)`: two senders may choose the same intent id.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Set, Tuple

Key = Tuple[str, str]


class Seen(enum.Enum):
    NEW = "new"
    """Not seen lately: hand it to the application (it is now marked in progress)."""
    ACKED = "acked"
    """Acknowledged lately: acknowledge again, do not hand it over."""
    IN_PROGRESS = "in_progress"
    """Handed over and not yet acknowledged or released: ignore this copy."""


class Recent:
    """Recently acknowledged and in-progress intent ids (not thread-safe; one event loop)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("dedupe capacity must be 0 or more")
        self.capacity = capacity
        self._acked: "OrderedDict[Key, None]" = OrderedDict()
        self._in_progress: Set[Key] = set()

    def claim(self, key: Key) -> Seen:
        """Classifies `key`, marking it in progress when it is new."""
        if key in self._acked:
            return Seen.ACKED
        if key in self._in_progress:
            return Seen.IN_PROGRESS
        self._in_progress.add(key)
        return Seen.NEW

    def acked(self, key: Key) -> None:
        """Records that `key` was acknowledged."""
        self._in_progress.discard(key)
        if self.capacity == 0 or key in self._acked:
            return
        while len(self._acked) >= self.capacity:
            self._acked.popitem(last=False)
        self._acked[key] = None

    def release(self, key: Key) -> None:
        """Forgets that `key` is in progress (its handling ended without an acknowledgement)."""
        self._in_progress.discard(key)

    def __len__(self) -> int:
        return len(self._acked)

    @property
    def in_progress(self) -> int:
        return len(self._in_progress)
