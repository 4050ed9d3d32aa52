"""Generator on the tiny model: mixed-adapter batches equal one adapter at a time, left padding, scores."""

import pytest
import torch

from models.adapters.registry import AdapterRegistry
from models.base.loading import LoadConfig, load_base
from models.decode.generator import BASE_ADAPTER, Generator
from models.errors import PromptTooLongError, UnknownAdapterError

GREEDY: dict = {}  # Generator.generate's defaults: greedy, one candidate
BEAMS = dict(num_beams=3, num_return_sequences=2)
SHORT = [{"role": "system", "content": "답하라."}, {"role": "user", "content": "서울은 어디?"}]
LONG = [
    {"role": "system", "content": "문맥을 읽고 질문에 대한 답을 문맥에서 그대로 찾아 쓰시오."},
    {"role": "user", "content": "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가 창제했나?"},
]


def _loaded(
    tiny_model_dir, tiny_adapters_dir, backend: str, quantization: str = "none", **generator: object
) -> Generator:
    """The tiny model with every test adapter loaded; `generator` goes to `Generator` (decoder, ...)."""
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization=quantization))
    gen = Generator(model, tokenizer, lora_backend=backend, **generator)
    registry = AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key="tiny-random", base_fingerprint=_fp(tiny_model_dir)
    )
    for spec in registry:
        gen.load_adapter(spec)
    return gen


@pytest.fixture(params=["stacked", "peft"])
def generator(request, tiny_model_dir, tiny_adapters_dir) -> Generator:
    """Both LoRA backends: every behaviour below holds for each."""
    return _loaded(tiny_model_dir, tiny_adapters_dir, request.param)


@pytest.fixture
def peft_generator(tiny_model_dir, tiny_adapters_dir) -> Generator:
    return _loaded(tiny_model_dir, tiny_adapters_dir, "peft")


def _fp(folder) -> str:
    from models.base.folders import read_base_info

    return read_base_info(folder).fingerprint


def test_mixed_batch_logits_equal_one_adapter_at_a_time(peft_generator):
    model = peft_generator.model
    generator = peft_generator
    input_ids, mask = generator._encode([LONG] * 4)
    names = ["alpha", "beta", BASE_ADAPTER, "gamma"]
    with torch.inference_mode():
        mixed = model(input_ids=input_ids, attention_mask=mask, adapter_names=names).logits
        singles = []
        for row, name in enumerate(names):
            if name == BASE_ADAPTER:
                with model.disable_adapter():
                    singles.append(model(input_ids=input_ids[row : row + 1]).logits[0])
            else:
                model.set_adapter(name)
                singles.append(model(input_ids=input_ids[row : row + 1]).logits[0])
    for row in range(len(names)):
        torch.testing.assert_close(mixed[row], singles[row], rtol=1e-4, atol=1e-4)
    # The adapters really change the model (otherwise the equality above would prove nothing).
    assert not torch.allclose(singles[0], singles[2], atol=1e-2)
    assert not torch.allclose(singles[0], singles[1], atol=1e-2)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_stacked_logits_equal_peft_mixed_batch_logits(tiny_model_dir, tiny_adapters_dir, quantization):
    if quantization == "4bit":
        pytest.importorskip("bitsandbytes")
    stacked = _loaded(tiny_model_dir, tiny_adapters_dir, "stacked", quantization)
    peft_generator = _loaded(tiny_model_dir, tiny_adapters_dir, "peft", quantization)
    for module in [*stacked.model.modules(), *peft_generator.model.modules()]:
        # bitsandbytes' kernel for CPUs with AVX512-BF16 computes in bf16 (0.02 off a float32 layer of the
        # tiny model); the fused layers compute in float32, so compare in float32 on both sides
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    assert stacked.lora_backend == "stacked" and not hasattr(stacked.model, "peft_config")
    layer = stacked.model.model.layers[0]
    # q/k/v and gate/up run as one base matmul each (4-bit: repacked blocks); members' B are rows of one
    q, k = layer.self_attn.q_proj, layer.self_attn.k_proj
    assert q.group.fused is not None and layer.mlp.up_proj.group.fused is not None
    k_start, _ = q.group.spans[q.group.members.index(k)]
    assert k.lora_b.data_ptr() == q.group.lora_b[k_start:].data_ptr()
    input_ids, mask = stacked._encode([LONG] * 4)
    rows = ["alpha", None, "beta", "gamma"]
    with torch.inference_mode():
        want = peft_generator.model(
            input_ids=input_ids, attention_mask=mask, adapter_names=[r or BASE_ADAPTER for r in rows]
        ).logits
        stacked._stacked.set_rows(rows)
        got = stacked.model(input_ids=input_ids, attention_mask=mask).logits
        stacked._stacked.clear_rows()
        plain = stacked.model(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain[1], want[1], rtol=1e-4, atol=1e-4)  # no mask = the base model
    assert not torch.allclose(got[0], got[1], atol=1e-2)


def test_backends_generate_the_same_candidates(tiny_model_dir, tiny_adapters_dir, peft_generator):
    stacked = _loaded(tiny_model_dir, tiny_adapters_dir, "stacked")
    adapters = ["gamma", None, "alpha", "beta"]
    for decoding in (GREEDY, BEAMS):
        got = stacked.generate([LONG, SHORT, LONG, SHORT], adapters, max_new_tokens=8, **decoding)
        want = peft_generator.generate([LONG, SHORT, LONG, SHORT], adapters, max_new_tokens=8, **decoding)
        assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
        for g, w in zip(got, want, strict=True):
            assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4)


def test_mixed_batch_with_beams_equals_per_adapter_generate(generator):
    adapters = ["alpha", None, "beta", "gamma"]
    mixed = generator.generate([LONG] * 4, adapters, max_new_tokens=8, **BEAMS)
    alone = [generator.generate([LONG], [a], max_new_tokens=8, **BEAMS)[0] for a in adapters]
    assert [[t for t, _ in c] for c in mixed] == [[t for t, _ in c] for c in alone]
    for got, want in zip(mixed, alone, strict=True):
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    assert len({tuple(t for t, _ in c) for c in mixed}) > 1, "adapters should yield different candidates"


def test_mixed_batch_greedy_equals_per_adapter_greedy(generator):
    adapters = ["gamma", None, "alpha"]
    mixed = generator.generate([SHORT, LONG, LONG], adapters, max_new_tokens=8)
    alone = [
        generator.generate([p], [a], max_new_tokens=8)[0]
        for p, a in zip([SHORT, LONG, LONG], adapters, strict=True)
    ]
    assert [c[0][0] for c in mixed] == [c[0][0] for c in alone]


def test_left_padding_does_not_change_a_short_prompt(tiny_model_dir):
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer)
    alone = gen.generate([SHORT], [None], max_new_tokens=10)[0]
    batched = gen.generate([SHORT, LONG], [None, None], max_new_tokens=10)[0]
    assert alone[0][0] == batched[0][0]
    assert alone[0][1] == pytest.approx(batched[0][1], abs=1e-4)
    assert tokenizer.padding_side == "left"


def test_returns_sorted_candidates_per_prompt(generator):
    out = generator.generate(
        [SHORT, LONG], ["beta", None], max_new_tokens=6, **dict(BEAMS, num_return_sequences=3)
    )
    assert len(out) == 2
    for candidates in out:
        assert len(candidates) == 3
        scores = [s for _, s in candidates]
        assert all(isinstance(t, str) for t, _ in candidates)
        assert all(type(s) is float and s <= 0 for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_sampling_with_seed_is_reproducible_and_returns_n(generator):
    sample = dict(do_sample=True, num_return_sequences=3, temperature=1.5, top_k=0, top_p=1.0, seed=7)
    first = generator.generate([SHORT, LONG], ["alpha", None], max_new_tokens=6, **sample)
    again = generator.generate([SHORT, LONG], ["alpha", None], max_new_tokens=6, **sample)
    assert first == again
    assert [len(c) for c in first] == [3, 3]
    assert all([s for _, s in c] == sorted((s for _, s in c), reverse=True) for c in first)


def test_base_only_generator_without_adapters(tiny_model_dir):
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer)
    assert gen.adapter_names == [] and gen.has_chat_template and gen.device == "cpu"
    out = gen.generate([LONG, "plain text prompt: "], [None, None], max_new_tokens=5)
    assert len(out) == 2 and all(len(c) == 1 for c in out)
    with pytest.raises(UnknownAdapterError, match="alpha"):
        gen.generate([LONG], ["alpha"], max_new_tokens=5)


def test_stops_at_first_newline(generator):
    tokenizer = generator.tokenizer
    ids = tokenizer("\n답 서울\n그리고", add_special_tokens=False)["input_ids"]
    flags = generator._line_ends(torch.tensor([ids]))[0].tolist()
    text_until_stop = tokenizer.decode(ids[: flags.index(True) + 1])
    assert text_until_stop.strip() == "답 서울" and text_until_stop.endswith("\n")
    out = generator.generate([LONG] * 3, ["alpha", "beta", None], max_new_tokens=24)
    assert all("\n" not in text.strip() for c in out for text, _ in c)


def test_unload_adapter_and_errors(generator):
    assert generator.adapter_names == ["alpha", "beta", "gamma"]
    for name in ("alpha", "beta"):
        generator.unload_adapter(name)
    assert generator.adapter_names == ["gamma"]
    with pytest.raises(UnknownAdapterError, match="'alpha'"):
        generator.generate([SHORT], ["alpha"], max_new_tokens=3)
    generator.unload_adapter("gamma")
    assert generator.generate([SHORT], [None], max_new_tokens=3)
    with pytest.raises(UnknownAdapterError):
        generator.unload_adapter("gamma")


def test_input_validation(generator):
    with pytest.raises(ValueError, match="one adapter"):
        generator.generate([SHORT, LONG], [None], max_new_tokens=3)
    with pytest.raises(ValueError, match="greedy"):
        generator.generate([SHORT], [None], max_new_tokens=3, num_return_sequences=2)
    assert generator.generate([], [], max_new_tokens=3) == []
    limited = Generator(generator.model, generator.tokenizer, max_input_tokens=10)
    with pytest.raises(PromptTooLongError, match="prompt 1"):
        limited.generate(["hi", LONG], [None, None], max_new_tokens=3)
    assert generator.count_tokens("서울") >= 1 and generator.count_tokens("") == 0


@pytest.mark.parametrize("backend", ["stacked", "peft"])
def test_mixed_batch_on_4bit_base(tiny_model_dir, tiny_adapters_dir, backend):
    pytest.importorskip("bitsandbytes")
    model, tokenizer = load_base(
        tiny_model_dir, LoadConfig(device="cpu", quantization="4bit", dtype="float32")
    )
    gen = Generator(model, tokenizer, lora_backend=backend)
    registry = AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key="tiny-random", base_fingerprint=_fp(tiny_model_dir)
    )
    for name in ("alpha", "beta"):
        gen.load_adapter(registry.get(name))
    adapters = ["alpha", None, "beta"]
    mixed = gen.generate([LONG] * 3, adapters, max_new_tokens=6, **BEAMS)
    alone = [gen.generate([LONG], [a], max_new_tokens=6, **BEAMS)[0] for a in adapters]
    assert [[t for t, _ in c] for c in mixed] == [[t for t, _ in c] for c in alone]
