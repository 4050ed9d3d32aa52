"""Teacher-forced scores of candidate texts: packed continuations equal plain causal forwards, mixed adapters
equal one adapter at a time, and the numbers equal the log-probabilities `generate` reports for its tokens."""

from contextlib import nullcontext

import pytest
import torch

from models.decode.generator import BASE_ADAPTER, Generator
from models.decode.teacher_forcing import end_of_answer_id, packed_logprobs
from tests.models.test_generator import LONG, SHORT
from tests.models.test_generator import _loaded as loaded

TEXTS = ["서울", "훈민정음을 창제", "", "세종대왕은 1443년"]


def _loaded(tiny_model_dir, tiny_adapters_dir, backend: str, decoder: str = "hf") -> Generator:
    return loaded(tiny_model_dir, tiny_adapters_dir, backend, decoder=decoder, stop_at_newline=False)


@pytest.fixture(params=["stacked", "peft"])
def generator(request, tiny_model_dir, tiny_adapters_dir) -> Generator:
    return _loaded(tiny_model_dir, tiny_adapters_dir, request.param)


def _plain_logprob(model, prompt: list[int], tail: list[int], **kwargs) -> float:
    """The reference: prompt + tail as one ordinary causal sequence, no padding, no packing."""
    ids = torch.tensor([prompt + tail])
    with torch.inference_mode():
        logits = model(input_ids=ids, **kwargs).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return float(logprobs[torch.arange(len(tail)), torch.tensor(tail)].sum())


def test_end_of_answer_is_the_chat_turns_end(generator):
    tokenizer = generator.tokenizer
    assert tokenizer.convert_ids_to_tokens(end_of_answer_id(tokenizer)) == "<|im_end|>"


def test_packed_rows_equal_plain_forwards_of_each_continuation(generator):
    """Left-padded prompts of two lengths, several continuations behind each: every sum equals the plain
    forward of prompt + that continuation alone."""
    model, tokenizer = generator.model, generator.tokenizer
    prompts = [generator._prompt_ids([p])[0] for p in (SHORT, LONG)]
    end = end_of_answer_id(tokenizer)
    tails = [[tokenizer(t, add_special_tokens=False)["input_ids"] + [end] for t in TEXTS]] * 2
    base_only = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with torch.inference_mode(), base_only:
        packed = packed_logprobs(model, prompts, tails, pad_id=tokenizer.pad_token_id)
        for row, prompt in enumerate(prompts):
            for k, tail in enumerate(tails[row]):
                assert packed[row][k] == pytest.approx(_plain_logprob(model, prompt, tail), abs=1e-4)
    assert len({round(v, 3) for v in packed[0]}) == len(TEXTS)  # distinct texts, distinct evidence


def test_score_mixed_adapters_equal_one_adapter_at_a_time(generator):
    names = ["alpha", None, "beta", "alpha"]
    prompts = [LONG, SHORT, LONG, SHORT]
    mixed = generator.score(prompts, names, [TEXTS] * 4)
    alone = [generator.score([p], [a], [TEXTS])[0] for p, a in zip(prompts, names, strict=True)]
    for row in range(len(names)):
        assert [t for _, t in mixed[row]] == [t for _, t in alone[row]]
        assert [v for v, _ in mixed[row]] == pytest.approx([v for v, _ in alone[row]], abs=1e-4)
    # the adapters change the evidence (otherwise the equality proves nothing)
    assert mixed[0][0][0] != pytest.approx(generator.score([LONG], [None], [TEXTS])[0][0][0], abs=1e-3)
    # tokens: the text's and the end-of-answer token; "" is the end alone
    assert mixed[0][2][1] == 1 and all(t >= 2 for i, (_, t) in enumerate(mixed[0]) if i != 2)


def test_score_small_chunks_equal_one_batch(generator, monkeypatch):
    whole = generator.score([LONG, SHORT, LONG], ["alpha", "beta", None], [TEXTS, TEXTS[:2], []])
    monkeypatch.setattr("models.decode.generator.SCORE_TOKENS", 1)  # every row its own forward
    parts = generator.score([LONG, SHORT, LONG], ["alpha", "beta", None], [TEXTS, TEXTS[:2], []])
    assert whole[2] == [] and parts[2] == []
    for a, b in zip(whole, parts, strict=True):
        assert [v for v, _ in a] == pytest.approx([v for v, _ in b], abs=1e-4)


@pytest.mark.parametrize("decoder", ["hf", "loop"])
@pytest.mark.parametrize("backend", ["stacked", "peft"])
def test_scores_equal_the_log_probabilities_generate_reports(
    tiny_model_dir, tiny_adapters_dir, backend, decoder, monkeypatch
):
    """Greedy generate reports each candidate's mean token log-probability (its stop token included when it
    stopped); teacher forcing the same tokens after the same prompt, under the same adapter, gives it too."""
    if decoder == "loop" and backend == "peft":
        pytest.skip("the decode loop needs the stacked backend")
    generator = _loaded(tiny_model_dir, tiny_adapters_dir, backend, decoder)
    tokenizer = generator.tokenizer
    decoded: list[list[int]] = []  # the generated ids, as the generator hands them to the tokenizer
    decode = tokenizer.decode
    monkeypatch.setattr(tokenizer, "decode", lambda ids, **kw: decoded.append(list(ids)) or decode(ids, **kw))
    prompts, adapters = [LONG, SHORT, LONG], ["alpha", None, "gamma"]
    outputs = generator.generate(prompts, adapters, max_new_tokens=6)
    assert len(decoded) == len(prompts)
    for prompt, adapter, [(_, mean)], tokens in zip(prompts, adapters, outputs, decoded, strict=True):
        kwargs = {"adapter_names": [adapter or BASE_ADAPTER]} if generator._served.named_per_row else {}
        if generator._stacked is not None:
            generator._stacked.set_rows([adapter])
        with torch.inference_mode():
            total = packed_logprobs(
                generator.model,
                generator._prompt_ids([prompt]),
                [[tokens]],
                pad_id=tokenizer.pad_token_id,
                forward_kwargs=kwargs,
            )[0][0]
        if generator._stacked is not None:
            generator._stacked.clear_rows()
        assert total / len(tokens) == pytest.approx(mean, abs=1e-4)


def test_score_refuses_mismatched_lists(generator):
    with pytest.raises(ValueError, match="prompts"):
        generator.score([LONG], [None, None], [TEXTS])


@pytest.mark.parametrize("static_prefill", [False, True])
def test_scores_on_the_kept_prefill_equal_scores_prefilled_again(
    tiny_model_dir, tiny_adapters_dir, static_prefill, monkeypatch
):
    """Right after generate (the pipeline's order), the rows it prefilled are scored on that prefill's KV
    (no second prefill); the numbers equal a fresh prefill's. A stale prefill is never used."""
    generator = _loaded(tiny_model_dir, tiny_adapters_dir, "stacked", "loop")
    fresh = _loaded(tiny_model_dir, tiny_adapters_dir, "stacked", "loop")
    generator._loop.static_prefill = static_prefill  # the padded prefill shapes CUDA graphs replay
    prompts, adapters = [LONG, SHORT, LONG, SHORT], ["alpha", None, "beta", "gamma"]
    conts = [TEXTS, TEXTS[:2], TEXTS[1:], [TEXTS[0]]]
    expected = fresh.score(prompts, adapters, conts)
    assert fresh._loop.kept is None  # nothing decoded: every row was prefilled by score itself

    generator.generate(prompts, adapters, max_new_tokens=3, num_beams=2, num_return_sequences=2)
    prefilled = []
    monkeypatch.setattr(
        "models.decode.generator.packed_logprobs",
        lambda *a, **k: prefilled.append(a) or packed_logprobs(*a, **k),
    )
    reused = generator.score(prompts[::-1], adapters[::-1], conts[::-1])[::-1]
    assert prefilled == []  # every row came from the kept prefill
    for a, b in zip(reused, expected, strict=True):
        assert [t for _, t in a] == [t for _, t in b]
        assert [v for v, _ in a] == pytest.approx([v for v, _ in b], abs=1e-4)

    generator.generate([SHORT], ["beta"], max_new_tokens=2)  # another prefill: the old one is gone
    again = generator.score(prompts, adapters, conts)
    assert len(prefilled) >= 1
    for a, b in zip(again, expected, strict=True):
        assert [v for v, _ in a] == pytest.approx([v for v, _ in b], abs=1e-4)


def test_packed_tails_lay_out_each_continuation_in_its_own_causal_block() -> None:
    from models.decode.teacher_forcing import pack_tails

    tails = pack_tails([[[5, 6], [7]], [[8, 9, 10]], []], pad_id=0)
    assert tails.ids.tolist() == [[5, 6, 7], [8, 9, 10], [0, 0, 0]]
    assert tails.offsets.tolist() == [[0, 1, 0], [0, 1, 2], [0, 0, 0]]
    t, f = True, False
    assert tails.allowed.tolist() == [
        [[t, f, f], [t, t, f], [f, f, t]],  # "5 6" causal, "7" alone
        [[t, f, f], [t, t, f], [t, t, t]],  # one continuation: plain causal
        [[t, f, f], [f, t, f], [f, f, t]],  # padding sees only itself
    ]
    # the first token of each continuation is read off the prompt's last position (-1)
    assert tails.query == [(0, -1), (0, 0), (0, -1), (1, -1), (1, 0), (1, 1)]
    assert tails.owner == [(0, 0), (0, 0), (0, 1), (1, 0), (1, 0), (1, 0)] and tails.counts == [2, 1, 0]
