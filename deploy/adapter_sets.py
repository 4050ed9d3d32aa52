"""Adapter sets: the unit Ray Serve multiplexes on, and what keeps their adapters loaded on one replica.

A request's adapter set is the adapters it names (`adapter_set_id` makes one canonical string of them, the
multiplexed model id the ingress routes by), or the default ensemble. Serve's multiplexer keeps a few sets per
replica (LRU) and routes a set's requests to the replicas that hold it; `AdapterHolds` turns that into
adapter loads and unloads on the replica's one base model: an adapter stays loaded while anything holds it
(a resident set, as an `AdapterSetLease`, or a request in flight), so evicting a set never pulls an adapter
from under a request that is generating with it. Pure Python, no Ray and no torch: loading is a callback.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence

logger = logging.getLogger(__name__)

BASE_SET = "base"
"""The set of no adapter: the base model alone ("base" is a reserved member name, never an adapter's)."""
DEFAULT_SET = "*"
"""The default ensemble, asked for by naming no adapters ("*" is no valid adapter name)."""
SEPARATOR = ","


def adapter_set_id(adapters: Sequence[str] | None, *, base_member: str = BASE_SET) -> str:
    """The canonical multiplexed model id of the adapters a request names.

    Order, repeats and the base member do not change which adapters must be loaded, so they do not change the
    id either: `["beta", "alpha", "base"]` and `["alpha", "beta"]` are both `"alpha,beta"`. The request keeps
    its own order for answering; the id only routes it.
    """
    if adapters is None:
        return DEFAULT_SET
    names = sorted({name for name in adapters if name != base_member})
    return SEPARATOR.join(names) if names else BASE_SET


def adapter_set_names(set_id: str, default: Sequence[str]) -> tuple[str, ...]:
    """The adapters of a set id (`default`: the adapters of the default ensemble)."""
    if set_id == DEFAULT_SET:
        return tuple(default)
    if set_id == BASE_SET:
        return ()
    return tuple(name for name in set_id.split(SEPARATOR) if name)


class AdapterHolds:
    """Reference counts of the adapters loaded on one replica; loads on the first hold, unloads on the last
    release. Thread-safe: every change runs under one lock (a load or an unload included, so counts and the
    model never disagree)."""

    def __init__(
        self,
        load: Callable[[str], object],
        unload: Callable[[str], None],
        available: Collection[str],
    ) -> None:
        self._load, self._unload = load, unload
        self._available = frozenset(available)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._counts)

    def holds(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def hold(self, names: Iterable[str]) -> tuple[str, ...]:
        """Hold these adapters (loading those not loaded yet) and return the names held.

        Names that are not available adapters are skipped, not refused: the request that named them is
        answered by the service, which reports them as unknown with its usual error. If a load fails, what
        this call held is released again and the error propagates.
        """
        with self._lock:
            held: list[str] = []
            try:
                for name in dict.fromkeys(names):
                    if name not in self._available:
                        continue
                    if self._counts[name] == 0:
                        self._load(name)
                    self._counts[name] += 1
                    held.append(name)
            except BaseException:
                self._release(held)
                raise
            return tuple(held)

    def release(self, names: Iterable[str]) -> None:
        """Give back a `hold`; an adapter nobody holds any more is unloaded."""
        with self._lock:
            self._release(names)

    def _release(self, names: Iterable[str]) -> None:
        for name in names:
            if self._counts[name] <= 0:
                raise RuntimeError(f"adapter {name!r} released more often than held")  # a bug, not input
            self._counts[name] -= 1
            if self._counts[name] == 0:
                del self._counts[name]
                try:
                    self._unload(name)
                except Exception:  # noqa: BLE001 - it stays loaded, which is harmless; the count is right
                    logger.exception("adapter %s could not be unloaded; it stays loaded", name)


class AdapterSetLease:
    """What Serve's multiplexer caches for one adapter set on a replica: a hold on its adapters.

    Serve calls `__del__` when it evicts the set (least recently used first, past
    `max_num_models_per_replica`), and Python calls it again when the object is collected; the hold is given
    back exactly once either way.
    """

    def __init__(self, holds: AdapterHolds, set_id: str, names: Sequence[str]) -> None:
        self.set_id = set_id
        self._holds = holds
        self._lock = threading.Lock()
        self._released = False
        self.names: tuple[str, ...] = ()  # set only once the hold succeeded, so a failed one releases nothing
        self.names = holds.hold(names)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._holds.release(self.names)

    def __del__(self) -> None:
        if hasattr(self, "_lock"):  # a constructor that raised leaves nothing to release
            self.release()
