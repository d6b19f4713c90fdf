"""The one least-recently-used cache of the runtime (decoded frames, Parquet row groups, open readers)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A map bounded by the total ``cost`` of its values (1 each by default); the least recently used
    values go first, each passed to ``evict`` (to close a file, say). The newest value always stays,
    whatever its cost."""

    def __init__(self, limit: int, *, cost: Callable[[V], int] | None = None,
                 evict: Callable[[V], None] | None = None) -> None:
        self.limit = limit
        self._cost = cost or (lambda _: 1)
        self._evict = evict
        self._items: OrderedDict[K, V] = OrderedDict()
        self._held = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        """Add ``value`` as the most recent, then drop the oldest beyond the limit; returns ``value``."""
        self._items[key] = value
        self._held += self._cost(value)
        while self._held > self.limit and len(self._items) > 1:
            self._drop(self._items.popitem(last=False)[1])
        return value

    def clear(self) -> None:
        while self._items:
            self._drop(self._items.popitem()[1])

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, value: V) -> None:
        self._held -= self._cost(value)
        if self._evict is not None:
            self._evict(value)
