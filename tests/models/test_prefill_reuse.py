"""A decode of the very batch the loop just prefilled (a batch's greedy pass right after its beam pass) starts
from the kept prefill: no second prefill, and the outputs a fresh prefill gives. Anything else prefills."""

import pytest
import torch

from models.adapters.registry import AdapterRegistry
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator

SHORT = [{"role": "system", "content": "답하라."}, {"role": "user", "content": "서울은 어디?"}]
LONG = [
    {"role": "system", "content": "문맥을 읽고 질문에 대한 답을 문맥에서 그대로 찾아 쓰시오."},
    {"role": "user", "content": "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가 창제했나?"},
]
PROMPTS = [LONG, SHORT, "plain prompt: 수도는?"]
ADAPTERS = ["gamma", None, "alpha"]
BEAMS = {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": 3}
GREEDY = {"max_new_tokens": 5}


def _loop(model_dir, adapters_dir, static_prefill: bool | None = None) -> Generator:
    model, tokenizer = load_base(model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer, decoder="loop")
    assert gen._loop is not None
    gen._loop.static_prefill = static_prefill  # True: prompts padded to shape buckets, as on CUDA
    info = read_base_info(model_dir)
    for spec in AdapterRegistry.from_dir(adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint):
        gen.load_adapter(spec)
    return gen


@pytest.mark.parametrize("static_prefill", [None, True], ids=["eager", "static"])
def test_greedy_after_beams_on_the_same_batch_reuses_the_prefill(
    tiny_model_dir, tiny_adapters_dir, static_prefill
) -> None:
    gen = _loop(tiny_model_dir, tiny_adapters_dir, static_prefill)
    fresh = _loop(tiny_model_dir, tiny_adapters_dir, static_prefill)
    loop = gen._loop
    assert loop is not None
    gen.generate(PROMPTS, ADAPTERS, **BEAMS)
    assert (loop.prefills, loop.reused) == (1, 0)
    greedy = gen.generate(PROMPTS, ADAPTERS, **GREEDY)
    assert (loop.prefills, loop.reused) == (1, 1)
    assert greedy == fresh.generate(PROMPTS, ADAPTERS, **GREEDY)  # the same texts and scores
    # again on it, beams this time: still the same batch, still its outputs
    again = gen.generate(PROMPTS, ADAPTERS, **BEAMS)
    assert (loop.prefills, loop.reused) == (1, 2)
    assert again == fresh.generate(PROMPTS, ADAPTERS, **BEAMS)
    # the kept prefill still scores (a likelihood vote after both passes)
    tails = [["서울"], ["부산", "서울"], ["x"]]
    got, want = gen.score(PROMPTS, ADAPTERS, tails), fresh.score(PROMPTS, ADAPTERS, tails)
    assert [[n for _, n in row] for row in got] == [[n for _, n in row] for row in want]
    assert [s for row in got for s, _ in row] == pytest.approx([s for row in want for s, _ in row], abs=1e-5)


def test_another_batch_or_other_adapters_prefill_again(tiny_model_dir, tiny_adapters_dir) -> None:
    gen = _loop(tiny_model_dir, tiny_adapters_dir)
    loop = gen._loop
    assert loop is not None
    gen.generate(PROMPTS, ADAPTERS, **BEAMS)
    gen.generate(PROMPTS[:2], ADAPTERS[:2], **GREEDY)  # fewer rows
    gen.generate(PROMPTS[:2], ["beta", None], **GREEDY)  # the same prompts under another adapter
    gen.generate(list(reversed(PROMPTS[:2])), ["beta", None][::-1], **GREEDY)  # another order
    assert (loop.prefills, loop.reused) == (4, 0)
    gen.unload_adapter("alpha")  # the LoRA stacks change: what was kept is gone
    gen.generate(PROMPTS[1:2], [None], **GREEDY)
    gen.generate(PROMPTS[1:2], [None], **GREEDY)
    assert (loop.prefills, loop.reused) == (5, 1)
    with torch.inference_mode():
        assert loop.kept is not None and loop.kept.adapters == (None,)
