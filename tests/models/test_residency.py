"""Resident adapters with a capacity: LRU eviction, pins, reload on demand, same outputs as unlimited."""

import pytest

from models.adapters.registry import AdapterRegistry
from models.adapters.residency import AdapterResidency
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator
from models.errors import AdapterCapacityError

GREEDY = dict(max_new_tokens=5)  # Generator.generate's defaults: greedy, one candidate
PROMPTS = ["문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가?\n답:"] * 3


def test_least_recently_used_goes_first_and_pins_stay() -> None:
    cache = AdapterResidency(capacity=2, pinned=["p"])
    for name in ("p", "a"):
        cache.added(name)
    assert cache.evictions_for(["b"]) == ["a"]
    cache.removed("a")
    cache.added("b")
    assert cache.resident == ["p", "b"]
    cache.touch(["p"])
    assert cache.resident == ["b", "p"]
    with pytest.raises(AdapterCapacityError, match="needed at once"):
        cache.evictions_for(["a", "b", "c"])
    with pytest.raises(AdapterCapacityError, match="pinned or in use"):
        cache.evictions_for(["b", "c"])  # p is pinned and b is needed: nothing can go
    assert AdapterResidency().evictions_for(["x", "y", "z"]) == []
    with pytest.raises(ValueError, match="pinned adapters do not fit"):
        AdapterResidency(capacity=1, pinned=["p", "q"])


def _generator(model_dir, adapters_dir, **kw) -> Generator:
    from models.base.folders import read_base_info

    model, tokenizer = load_base(model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer, **kw)
    info = read_base_info(model_dir)
    for spec in AdapterRegistry.from_dir(adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint):
        gen.load_adapter(spec)
    return gen


def test_capacity_evicts_and_reloads_with_the_same_answers(tiny_model_dir, tiny_adapters_dir) -> None:
    unlimited = _generator(tiny_model_dir, tiny_adapters_dir)
    capped = _generator(tiny_model_dir, tiny_adapters_dir, max_resident_adapters=2, pinned_adapters=["alpha"])
    assert unlimited.adapter_names == capped.adapter_names == ["alpha", "beta", "gamma"]
    assert capped.resident_adapters == ["alpha", "gamma"]  # beta went to make room for gamma
    for names in (["beta"], ["gamma", "alpha"], ["beta", "alpha"], ["gamma"]):
        rows = (names * 3)[:3]
        got, want = capped.generate(PROMPTS, rows, **GREEDY), unlimited.generate(PROMPTS, rows, **GREEDY)
        # Same texts; scores up to rounding (the stacked LoRA's sum follows the adapters resident).
        assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
        assert [s for c in got for _, s in c] == pytest.approx([s for c in want for _, s in c], abs=1e-5)
        assert set(names) <= set(capped.resident_adapters) and "alpha" in capped.resident_adapters
        assert len(capped.resident_adapters) == 2
    with pytest.raises(AdapterCapacityError):
        capped.generate(PROMPTS, ["alpha", "beta", "gamma"], **GREEDY)
    capped.unload_adapter("gamma")
    assert "gamma" not in capped.adapter_names and "gamma" not in capped.resident_adapters
