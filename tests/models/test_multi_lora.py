"""The stacked LoRA backend: what it refuses, and that the base comes back when the adapters go."""

import json
import shutil

import pytest
import torch

from models.adapters.config import read_lora_config
from models.adapters.multi_lora import read_lora
from models.adapters.registry import AdapterRegistry
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator
from models.errors import AdapterError

PROMPT = "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가?\n답:"
GREEDY = dict(max_new_tokens=6)  # Generator.generate's defaults: greedy, one candidate


@pytest.mark.parametrize("field", ["use_dora", "rank_pattern", "bias"])
def test_unsupported_lora_variants_are_refused(tiny_adapters_dir, tmp_path, field) -> None:
    folder = tmp_path / "x"
    shutil.copytree(tiny_adapters_dir / "alpha", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = {"use_dora": True, "rank_pattern": {"q_proj": 2}, "bias": "all"}[field]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    label = {"use_dora": "DoRA", "rank_pattern": "rank_pattern", "bias": "bias 'all'"}[field]
    with pytest.raises(AdapterError, match=f"{label} cannot be served"):
        read_lora_config(folder, "x")


def test_scaling_and_shapes_follow_the_config(tiny_adapters_dir) -> None:
    folder = tiny_adapters_dir / "alpha"
    weights = read_lora(folder, "alpha", read_lora_config(folder, "alpha"))
    assert weights.rank == 4 and weights.scaling == 2.0  # lora_alpha 8 / r 4
    a, b = next(iter(weights.modules.values()))
    assert a.shape[0] == 4 and b.shape[1] == 4


def test_unloading_every_adapter_gives_the_base_back(tiny_model_dir, tiny_adapters_dir) -> None:
    info = read_base_info(tiny_model_dir)
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    base_only = Generator(model, tokenizer).generate([PROMPT], [None], **GREEDY)
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer)
    registry = AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint
    )
    for spec in registry:
        gen.load_adapter(spec)
    assert gen.generate([PROMPT], ["alpha"], **GREEDY) != base_only
    assert gen.generate([PROMPT], [None], **GREEDY) == base_only  # a base row in a model with adapters
    for name in ("alpha", "beta", "gamma"):
        gen.unload_adapter(name)
    assert gen.generate([PROMPT], [None], **GREEDY) == base_only
    layer = gen.model.model.layers[0].self_attn.q_proj
    assert layer.lora_a is None and isinstance(layer.base_layer, torch.nn.Linear)


def test_siblings_share_one_a_matmul_and_each_projection_stays_exact(
    tiny_model_dir, tiny_adapters_dir
) -> None:
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer)
    for name in ("alpha", "beta"):
        gen.load_adapter(read_lora_spec(tiny_model_dir, tiny_adapters_dir, name))
    attn, mlp = gen.model.model.layers[0].self_attn, gen.model.model.layers[0].mlp
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj  # the tiny adapters target all of them
    assert q.group is k.group is v.group and mlp.gate_proj.group is mlp.up_proj.group
    assert o.group is not q.group and len(o.group.members) == 1
    assert k.lora_a.untyped_storage().data_ptr() == q.group.lora_a.untyped_storage().data_ptr()  # views
    stacked = gen._stacked
    stacked.set_rows(["alpha", None, "beta"])
    try:
        x = torch.randn(3, 5, q.in_features)
        mask = stacked.rows.mask[:, None, :]
        for layer in (v, q, k):  # each with an input of its own: computed afresh, in any order
            alone = x.clone()
            expected = layer.base_layer(alone) + ((alone @ layer.lora_a.T) * mask) @ layer.lora_b.T
            torch.testing.assert_close(layer(alone), expected)
        assert q.group.fused is not None
        for fused in (q.group.fused, None):  # None: siblings whose bases could not be fused, each its own
            q.group.fused = fused
            together = [q(x), k(x), v(x)]  # as attention calls them, one input: one A matmul, then slices
            for layer, got in zip((q, k, v), together, strict=True):
                torch.testing.assert_close(
                    got, layer.base_layer(x) + ((x @ layer.lora_a.T) * mask) @ layer.lora_b.T
                )
            assert q.group._x is None  # every member took its slice: no reference kept
    finally:
        stacked.clear_rows()


def read_lora_spec(tiny_model_dir, tiny_adapters_dir, name):
    info = read_base_info(tiny_model_dir)
    registry = AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint
    )
    return registry.get(name)
