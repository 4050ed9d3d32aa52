"""Which adapters stay resident on the shared base: least recently used first out, pinned ones never.

`AdapterResidency` is bookkeeping only (names, use order, pins, a capacity);
`models.decode.generator.Generator` asks it what to evict before it loads an adapter a batch needs, and does
the loading and unloading itself under its lock. No capacity means every registered adapter stays resident.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from models.errors import AdapterCapacityError


class AdapterResidency:
    """Resident adapter names in least-recently-used order, with pins and an optional capacity."""

    def __init__(self, capacity: int | None = None, pinned: Iterable[str] = ()) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"max_resident_adapters must be at least 1 (or unset), got {capacity}")
        self.capacity = capacity
        self.pinned = frozenset(pinned)
        if capacity is not None and len(self.pinned) > capacity:
            raise ValueError(
                f"{len(self.pinned)} pinned adapters do not fit max_resident_adapters={capacity}"
            )
        self._order: OrderedDict[str, None] = OrderedDict()

    @property
    def resident(self) -> list[str]:
        """Least recently used first."""
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order

    def touch(self, names: Iterable[str]) -> None:
        """Mark resident adapters as just used."""
        for name in names:
            if name in self._order:
                self._order.move_to_end(name)

    def evictions_for(self, needed: Iterable[str]) -> list[str]:
        """Resident adapters to unload so that every name in `needed` can be resident at once.

        Raises `AdapterCapacityError` when `needed` alone is more than the capacity, or when what must go is
        pinned or needed itself.
        """
        needed = list(dict.fromkeys(needed))
        missing = [n for n in needed if n not in self._order]
        if self.capacity is None or not missing:
            return []
        if len(needed) > self.capacity:
            raise AdapterCapacityError(
                f"{len(needed)} adapters are needed at once but max_resident_adapters is {self.capacity}"
            )
        excess = len(self._order) + len(missing) - self.capacity
        if excess <= 0:
            return []
        keep = set(needed) | self.pinned
        candidates = [n for n in self._order if n not in keep]
        if len(candidates) < excess:
            raise AdapterCapacityError(
                f"cannot make room for {', '.join(missing)}: the resident adapters are pinned or in use "
                f"(max_resident_adapters={self.capacity})"
            )
        return candidates[:excess]

    def added(self, name: str) -> None:
        self._order[name] = None
        self._order.move_to_end(name)

    def removed(self, name: str) -> None:
        self._order.pop(name, None)
