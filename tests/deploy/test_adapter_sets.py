"""Adapter sets without Ray: the canonical multiplexed model id, and reference-counted holds of adapters (an
adapter is unloaded only when no resident set and no request in flight holds it; a failed load holds nothing).
"""

from __future__ import annotations

import gc
import threading

import pytest

from deploy.adapter_sets import (
    BASE_SET,
    DEFAULT_SET,
    AdapterHolds,
    AdapterSetLease,
    adapter_set_id,
    adapter_set_names,
)


def test_set_id_is_canonical() -> None:
    assert adapter_set_id(None) == DEFAULT_SET
    assert (
        adapter_set_id(["beta", "alpha", "base", "beta"]) == "alpha,beta" == adapter_set_id(["alpha", "beta"])
    )
    assert adapter_set_id(["base"]) == BASE_SET
    assert adapter_set_names("alpha,beta", default=["x"]) == ("alpha", "beta")
    assert adapter_set_names(DEFAULT_SET, default=["x", "y"]) == ("x", "y")
    assert adapter_set_names(BASE_SET, default=["x"]) == ()


class FakeEngine:
    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.loaded: list[str] = []
        self.log: list[str] = []
        self.broken = broken

    def load(self, name: str) -> None:
        if name in self.broken:
            raise ValueError(f"{name} is corrupt")
        self.loaded.append(name)
        self.log.append(f"+{name}")

    def unload(self, name: str) -> None:
        self.loaded.remove(name)
        self.log.append(f"-{name}")


def holds(engine: FakeEngine) -> AdapterHolds:
    return AdapterHolds(engine.load, engine.unload, available=["alpha", "beta", "gamma", "bad"])


def test_an_adapter_stays_loaded_while_a_set_or_a_request_holds_it() -> None:
    engine = FakeEngine()
    sets = holds(engine)
    ab = AdapterSetLease(sets, "alpha,beta", ["alpha", "beta"])
    bg = AdapterSetLease(sets, "beta,gamma", ["beta", "gamma"])
    assert engine.log == ["+alpha", "+beta", "+gamma"]  # beta loaded once
    request = sets.hold(ab.names)  # a request generating with alpha and beta
    ab.release()  # Serve evicts the set meanwhile
    assert sorted(engine.loaded) == ["alpha", "beta", "gamma"]  # nothing pulled from under the request
    sets.release(request)
    assert sorted(engine.loaded) == ["beta", "gamma"]  # alpha: nobody holds it any more
    bg.release()
    assert engine.loaded == [] and sets.loaded() == []


def test_unknown_names_and_base_are_skipped_not_loaded() -> None:
    engine = FakeEngine()
    lease = AdapterSetLease(holds(engine), "alpha,nope", ["alpha", "nope", "base"])
    assert lease.names == ("alpha",) and engine.loaded == ["alpha"]


def test_a_failed_load_holds_nothing() -> None:
    engine = FakeEngine(broken=frozenset({"bad"}))
    sets = holds(engine)
    with pytest.raises(ValueError, match="corrupt"):
        AdapterSetLease(sets, "alpha,bad", ["alpha", "bad"])
    gc.collect()
    assert engine.loaded == [] and sets.loaded() == []


def test_release_happens_once_whether_serve_or_the_collector_calls_it() -> None:
    engine = FakeEngine()
    sets = holds(engine)
    keep = AdapterSetLease(sets, "alpha", ["alpha"])
    lease = AdapterSetLease(sets, "alpha", ["alpha"])
    lease.__del__()  # Serve's eviction calls __del__ itself ...
    del lease  # ... and the collector calls it again
    gc.collect()
    assert sets.holds("alpha") == 1 and engine.loaded == ["alpha"]
    keep.release()
    assert engine.loaded == []


def test_concurrent_holds_load_once() -> None:
    engine = FakeEngine()
    sets = holds(engine)
    held: list[tuple[str, ...]] = []
    threads = [threading.Thread(target=lambda: held.append(sets.hold(["alpha", "beta"]))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.log == ["+alpha", "+beta"] and sets.holds("alpha") == 16
    for names in held:
        sets.release(names)
    assert engine.loaded == []
    with pytest.raises(RuntimeError, match="released more often than held"):
        sets.release(["alpha"])
