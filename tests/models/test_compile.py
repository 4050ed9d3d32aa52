"""Compiled decoding (static KV cache + torch.compile) gives the eager path's candidates, adapters included.

The GPU setting uses the inductor backend with CUDA graphs; here the trace-only "eager" backend runs the same
path through TorchDynamo on the CPU: the stacked LoRA layers, a mixed-adapter batch and beams in one graph.
"""

import pytest

from models.adapters.registry import AdapterRegistry
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator

GREEDY = dict(max_new_tokens=6)  # Generator.generate's defaults: greedy, one candidate
BEAMS = dict(GREEDY, num_beams=3, num_return_sequences=2)
PROMPTS = [
    "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가?\n답:",
    "짧은 질문?",
    "문맥: 비\n질문: 언제?",
]
ROWS = ["alpha", None, "gamma"]


def _generator(model_dir, adapters_dir, **kw) -> Generator:
    info = read_base_info(model_dir)
    model, tokenizer = load_base(model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer, **kw)
    for spec in AdapterRegistry.from_dir(adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint):
        gen.load_adapter(spec)
    return gen


def test_compiled_decoding_equals_eager(tiny_model_dir, tiny_adapters_dir, monkeypatch) -> None:
    from torch._dynamo.utils import counters

    import models.decode.hf_generate

    reorders = []
    real_reorder = models.decode.hf_generate.reorder_in_place

    def counted(layer, index) -> None:
        reorders.append(1)
        real_reorder(layer, index)

    monkeypatch.setattr(models.decode.hf_generate, "reorder_in_place", counted)

    eager = _generator(tiny_model_dir, tiny_adapters_dir)
    compiled = _generator(tiny_model_dir, tiny_adapters_dir, compile_backend="eager")
    counters.clear()
    for decoding in (GREEDY, BEAMS):
        want = eager.generate(PROMPTS, ROWS, **decoding)
        got = compiled.generate(PROMPTS, ROWS, **decoding)
        assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
        for g, w in zip(got, want, strict=True):
            assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1  # the forward really went through TorchDynamo
    assert reorders, "beam search reordered the static cache in place"
    assert input_width(compiled) % 64 == 0


def input_width(gen: Generator) -> int:
    return gen._encode(PROMPTS)[0].shape[1]


def test_compile_refuses_a_peft_model(tiny_model_dir, tiny_adapters_dir) -> None:
    peft = _generator(tiny_model_dir, tiny_adapters_dir, lora_backend="peft")
    with pytest.raises(ValueError, match="stacked"):
        Generator(peft.model, peft.tokenizer, compile_backend="eager")
