"""Our decode loop (`Generator(decoder="loop")`) gives `generate`'s candidates: greedy and beams, mixed
adapters, prompts of different lengths, with and without the stop at the answer line's end.

The tiny random model seldom ends a line or emits EOS, so `stop_heavy` adds a fixed bias to the output logits
(a forward hook on `lm_head`, which both paths run through) that makes EOS and line ends common: finished
beams, freed beam slots, the early-stop heuristic and `min_new_tokens` are then all exercised. CUDA graphs are
not (CPU); the step they capture is the eager step these tests run.
"""

import os
import types

import pytest
import torch

from models.adapters.registry import AdapterRegistry
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator
from models.decode.loop import bucket
from models.decode.search import BeamSearch, Greedy, Stops
from models.errors import UnknownAdapterError

SHORT = [{"role": "system", "content": "답하라."}, {"role": "user", "content": "서울은 어디?"}]
LONG = [
    {"role": "system", "content": "문맥을 읽고 질문에 대한 답을 문맥에서 그대로 찾아 쓰시오."},
    {"role": "user", "content": "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가 창제했나?"},
]
PROMPTS = [LONG, SHORT, "plain prompt: 수도는?", LONG]
ADAPTERS = ["gamma", None, "alpha", "beta"]


def _generator(
    model_dir, adapters_dir, bias: torch.Tensor | None = None, static_prefill: bool | None = None, **kw
) -> Generator:
    """`static_prefill=True`: prompts padded to shape buckets (as CUDA graphs replay them) but run eagerly."""
    model, tokenizer = load_base(model_dir, LoadConfig(device="cpu", quantization="none"))
    if bias is not None:
        model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    gen = Generator(model, tokenizer, **kw)
    if gen._loop is not None:
        gen._loop.static_prefill = static_prefill
    info = read_base_info(model_dir)
    for spec in AdapterRegistry.from_dir(adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint):
        gen.load_adapter(spec)
    return gen


def _hf_and_loop(model_dir, adapters_dir, stop_at_newline: bool, static_prefill: bool | None):
    """`generate` and the loop, each on its own load of the base, the same settings otherwise."""
    hf = _generator(model_dir, adapters_dir, stop_at_newline=stop_at_newline)
    loop_settings = dict(static_prefill=static_prefill, stop_at_newline=stop_at_newline, decoder="loop")
    return hf, _generator(model_dir, adapters_dir, **loop_settings)


def stop_heavy(tokenizer, vocab: int) -> torch.Tensor:
    """A logit bias that makes EOS and line ends likely (and a few other tokens, to vary the texts)."""
    bias = torch.zeros(vocab)
    bias[tokenizer.eos_token_id] = 5.0
    bias[[i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]] = 4.0
    bias[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:20]] += 3.0
    return bias


def assert_same(got, want) -> None:
    assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
    for g, w in zip(got, want, strict=True):
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4)


@pytest.mark.parametrize("static_prefill", [None, True])
@pytest.mark.parametrize("stop_at_newline", [False, True])
def test_greedy_equals_generate(tiny_model_dir, tiny_adapters_dir, stop_at_newline, static_prefill) -> None:
    hf, loop = _hf_and_loop(tiny_model_dir, tiny_adapters_dir, stop_at_newline, static_prefill)
    for max_new_tokens in (1, 12):
        want = hf.generate(PROMPTS, ADAPTERS, max_new_tokens=max_new_tokens)
        got = loop.generate(PROMPTS, ADAPTERS, max_new_tokens=max_new_tokens)
        assert_same(got, want)
    assert loop.stats.new_tokens == hf.stats.new_tokens and loop.stats.sequences == hf.stats.sequences


@pytest.mark.parametrize("static_prefill", [None, True])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("stop_at_newline", [False, True])
def test_beams_equal_generate(tiny_model_dir, tiny_adapters_dir, n, stop_at_newline, static_prefill) -> None:
    hf, loop = _hf_and_loop(tiny_model_dir, tiny_adapters_dir, stop_at_newline, static_prefill)
    beams = dict(num_beams=3, num_return_sequences=n, max_new_tokens=10)
    want = hf.generate(PROMPTS, ADAPTERS, **beams)
    assert_same(loop.generate(PROMPTS, ADAPTERS, **beams), want)
    assert len({c[0][0] for c in want}) > 1, "adapters and prompts should give different candidates"


@pytest.mark.parametrize(
    ("beams", "n", "stop_at_newline", "min_new_tokens"),
    [(1, 1, True, None), (1, 1, False, 3), (3, 3, False, None), (3, 2, True, None), (4, 1, True, 2)],
)
def test_stops_equal_generate(tiny_model_dir, tiny_adapters_dir, beams, n, stop_at_newline, min_new_tokens):
    hf = _generator(tiny_model_dir, tiny_adapters_dir, stop_at_newline=stop_at_newline)
    bias = stop_heavy(hf.tokenizer, hf.model.config.vocab_size)
    hf = _generator(tiny_model_dir, tiny_adapters_dir, bias, stop_at_newline=stop_at_newline)
    loop = _generator(
        tiny_model_dir, tiny_adapters_dir, bias, True, stop_at_newline=stop_at_newline, decoder="loop"
    )
    for gen in (hf, loop):
        gen.model.generation_config.min_new_tokens = min_new_tokens
    decoding = dict(num_beams=beams, num_return_sequences=n, max_new_tokens=12)
    want = hf.generate(PROMPTS, ADAPTERS, **decoding)
    assert_same(loop.generate(PROMPTS, ADAPTERS, **decoding), want)
    lengths = [len(hf.tokenizer(t, add_special_tokens=False)["input_ids"]) for c in want for t, _ in c]
    assert min(lengths) < 12, "some candidates should have stopped early"


def test_every_candidate_ends_with_its_first_line(tiny_model_dir, tiny_adapters_dir) -> None:
    plain = _generator(tiny_model_dir, tiny_adapters_dir)
    bias = stop_heavy(plain.tokenizer, plain.model.config.vocab_size)
    bias[plain.tokenizer.eos_token_id] = 0.0  # lines, not EOS, end these answers
    loop = _generator(tiny_model_dir, tiny_adapters_dir, bias, decoder="loop")
    out = loop.generate(PROMPTS, ADAPTERS, **dict(num_beams=3, num_return_sequences=3, max_new_tokens=16))
    texts = [t for c in out for t, _ in c]
    assert all("\n" not in t.strip() for t in texts)
    assert sum(t.strip() != "" and t.endswith("\n") for t in texts) >= len(texts) // 2


def _search_tables() -> tuple[Stops, dict[str, int]]:
    """A 5-token vocabulary: "a" and "b" are text, "\\n" a line break, "\\n\\n" two, EOS."""
    ids = {"a": 0, "b": 1, "\n": 2, "\n\n": 3, "eos": 4}
    lines = types.SimpleNamespace(
        has_newline=torch.tensor([False, False, True, True, False]),
        text_before_newline=torch.zeros(5, dtype=torch.bool),
        non_blank=torch.tensor([True, True, False, False, False]),
    )
    return Stops(torch.tensor([ids["eos"]]), 5, lines, "cpu"), ids


def log_probs(rows: int, **weights: float) -> torch.Tensor:
    order = ["a", "b", "nl", "nl2", "eos"]
    logits = torch.tensor([[weights.get(name, 0.0) for name in order]] * rows)
    return torch.log_softmax(logits, dim=-1)


def test_a_line_end_finishes_the_beam_and_frees_its_slot() -> None:
    stops, ids = _search_tables()
    search = BeamSearch(prompts=1, beams=2, keep=4, max_new=6, stops=stops, device="cpu")
    # A newline before any text does not end the line: it runs on like any token.
    tokens, _ = search.choose(0, log_probs(2, nl=5.0, a=4.0), no_eos=False)
    assert sorted(tokens.tolist()) == [ids["a"], ids["\n"]] and not search.finished.any()
    # After text, a newline ends the line: that hypothesis is finished and two others run on.
    tokens, _ = search.choose(1, log_probs(2, nl=6.0, b=1.0), no_eos=False)
    assert search.finished[0, 0] and search.tokens[0, 0, :2].tolist() == [ids["a"], ids["\n"]]
    running = search.running_tokens[0, :, :2].tolist()
    assert search.lengths[0, 0] == 2 and [ids["a"], ids["\n"]] not in running
    assert [ids["\n"], ids["\n"]] in running  # a blank line has no text yet: it runs on
    assert (search.running_scores > -1e8).all()
    assert not bool(search.halted)


def test_greedy_rows_stop_at_their_line_end_and_eos() -> None:
    stops, ids = _search_tables()
    search = Greedy(rows=2, max_new=4, stops=stops, device="cpu")
    search.choose(0, torch.stack([log_probs(1, a=5.0)[0], log_probs(1, eos=5.0)[0]]), no_eos=False)
    search.choose(1, log_probs(2, nl=5.0), no_eos=False)
    assert bool(search.halted)
    done = search.result(1)
    assert done.tokens == [[ids["a"], ids["\n"]], [ids["eos"]]]
    # min_new_tokens: EOS is impossible, the next best is taken.
    search = Greedy(rows=1, max_new=2, stops=stops, device="cpu")
    assert search.choose(0, log_probs(1, eos=5.0, b=1.0), no_eos=True)[0].tolist() == [ids["b"]]


def test_shapes_are_reused_and_dropped_when_adapters_change(tiny_model_dir, tiny_adapters_dir) -> None:
    loop = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6)
    loop.generate([LONG, SHORT], ["gamma", None], **beams)
    loop.generate([SHORT, LONG], ["alpha", "beta"], **beams)  # other rows, the same shape
    assert len(loop._loop._states) == 1
    with torch.inference_mode():  # a row count's mask keeps its storage (graphs captured it)
        loop._stacked.set_rows(["alpha", None], repeat=3)
        first = loop._stacked.rows.mask
        loop._stacked.set_rows([None, "beta"], repeat=3)
        assert loop._stacked.rows.mask.data_ptr() == first.data_ptr() and not first[:3].any()
        loop._stacked.clear_rows()
    loop.unload_adapter("gamma")
    loop.generate([LONG, SHORT], ["alpha", "beta"], **beams)
    assert len(loop._loop._states) == 1  # the old stacks' shapes were dropped, this call's shape added
    loop._loop.cache_bytes = 1  # over budget: only the newest shape stays
    loop.generate([SHORT], [None], **beams)
    assert len(loop._loop._states) == 1


def test_sampling_still_goes_through_generate(tiny_model_dir, tiny_adapters_dir) -> None:
    hf = _generator(tiny_model_dir, tiny_adapters_dir)
    loop = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    sample = dict(do_sample=True, num_beams=1, num_return_sequences=2, seed=3, max_new_tokens=6)
    assert_same(loop.generate(PROMPTS, ADAPTERS, **sample), hf.generate(PROMPTS, ADAPTERS, **sample))


def test_the_loop_needs_the_stacked_backend(tiny_model_dir, tiny_adapters_dir) -> None:
    peft = _generator(tiny_model_dir, tiny_adapters_dir, lora_backend="peft")
    with pytest.raises(ValueError, match="stacked"):
        Generator(peft.model, peft.tokenizer, decoder="loop")
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    with pytest.raises(ValueError, match="stacked"):
        Generator(model, tokenizer, lora_backend="peft", decoder="loop")
    with pytest.raises(ValueError, match="decoder"):
        Generator(model, tokenizer, decoder="fast")  # type: ignore[arg-type]


def test_auto_picks_the_loop_where_it_runs(tiny_model_dir, tiny_adapters_dir) -> None:
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    assert Generator(model, tokenizer, decoder="auto").decoder == "loop"
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    assert Generator(model, tokenizer, lora_backend="peft", decoder="auto").decoder == "hf"
    peft = _generator(tiny_model_dir, tiny_adapters_dir, lora_backend="peft")  # a peft model passed in
    assert Generator(peft.model, peft.tokenizer, decoder="auto").decoder == "hf"


def test_loop_on_a_4bit_base(tiny_model_dir, tiny_adapters_dir) -> None:
    pytest.importorskip("bitsandbytes")
    gens = {}
    for decoder in ("hf", "loop"):
        model, tokenizer = load_base(
            tiny_model_dir, LoadConfig(device="cpu", quantization="4bit", dtype="float32")
        )
        gens[decoder] = gen = Generator(model, tokenizer, decoder=decoder)
        info = read_base_info(tiny_model_dir)
        registry = AdapterRegistry.from_dir(
            tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint
        )
        for name in ("alpha", "beta"):
            gen.load_adapter(registry.get(name))
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6)
    want = gens["hf"].generate([LONG, SHORT, LONG], ["alpha", None, "beta"], **beams)
    got = gens["loop"].generate([LONG, SHORT, LONG], ["alpha", None, "beta"], **beams)
    assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
    for g, w in zip(got, want, strict=True):  # 4-bit matmuls round differently for B and B x beams rows
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-3)


def test_the_ladder_of_buckets() -> None:
    assert [bucket(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert [bucket(n, 256) for n in (1, 256, 257, 384, 385, 1100, 4120)] == [
        256,
        256,
        384,
        384,
        512,
        1536,
        6144,
    ]


@pytest.mark.parametrize("prompts", [5, 7])
@pytest.mark.parametrize(("beams", "n"), [(1, 1), (3, 2)])
def test_padding_rows_never_change_results(tiny_model_dir, tiny_adapters_dir, prompts, beams, n) -> None:
    """5 and 7 prompts decode in states of 6 and 8 (padding rows copy prompt 0 under no adapter), with stops
    common enough that the padding's own stops would show if they counted."""
    hf = _generator(tiny_model_dir, tiny_adapters_dir)
    bias = stop_heavy(hf.tokenizer, hf.model.config.vocab_size)
    hf = _generator(tiny_model_dir, tiny_adapters_dir, bias)
    loop = _generator(tiny_model_dir, tiny_adapters_dir, bias, decoder="loop")
    rows, adapters = (PROMPTS * 2)[:prompts], ([None, *ADAPTERS[1:], *ADAPTERS])[:prompts]  # row 0: no LoRA
    decoding = dict(num_beams=beams, num_return_sequences=n, max_new_tokens=10)
    want = hf.generate(rows, adapters, **decoding)
    got = loop.generate(rows, adapters, **decoding)
    assert len(got) == prompts and all(len(c) == n for c in got)
    assert_same(got, want)
    [(state_rows, *_)] = loop._loop._states
    assert state_rows == bucket(prompts) * beams


@pytest.mark.parametrize("garbage", ["nan", "never stops"])
def test_padding_rows_stay_out_of_the_search(garbage) -> None:
    """Whatever padding rows hold (NaN, or a text token forever), the real rows stop when they would alone
    and their results are the same."""
    stops, ids = _search_tables()
    pad = torch.full((8, 5), float("nan")) if garbage == "nan" else log_probs(8, a=9.0)
    steps = [log_probs(2, a=5.0, b=4.0), log_probs(2, eos=6.0), log_probs(2)]
    steps[0][1] = log_probs(1, eos=5.0)[0]  # greedy: row 1 ends at once, row 0 a step later
    alone, padded = Greedy(2, 3, stops, "cpu"), Greedy(5, 3, stops, "cpu", real=2)
    for t, step in enumerate(steps):
        alone.choose(t, step, no_eos=False)
        padded.choose(t, torch.cat((step, pad[:3])), no_eos=False)
        assert bool(padded.halted) == bool(alone.halted)
    assert bool(alone.halted) and padded.result(1) == alone.result(1)
    alone, padded = BeamSearch(1, 2, 4, 3, stops, "cpu"), BeamSearch(3, 2, 4, 3, stops, "cpu", real=1)
    for t, step in enumerate(steps):  # beams: two finish at t=1, the prompt can no longer improve
        alone.choose(t, step, no_eos=False)
        padded.choose(t, torch.cat((step, pad[:4])), no_eos=False)
        assert bool(padded.halted) == bool(alone.halted)
    assert bool(alone.halted) and padded.result(2) == alone.result(2)


def test_lengths_and_row_counts_of_a_bucket_share_a_state(tiny_model_dir, tiny_adapters_dir) -> None:
    loop = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    beams = dict(num_beams=3, num_return_sequences=1, max_new_tokens=4)
    loop.generate([SHORT] * 5, ADAPTERS + ["alpha"], **beams)
    loop.generate(
        [LONG] * 6, (ADAPTERS * 2)[:6], **beams
    )  # another prompt length, another row count, one bucket
    assert list(loop._loop._states) == [(18, 256, 32, True, True)]
    loop.generate([SHORT] * 7, [None] * 7, **beams)  # rows of the next bucket, without LoRA
    assert list(loop._loop._states)[1:] == [(24, 256, 32, True, False)]


def test_warm_up_makes_the_shapes_requests_use(tiny_model_dir, tiny_adapters_dir) -> None:
    gen = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    plan = (("alpha", "alpha", "beta", "beta", "gamma", "gamma"), 3)
    done = gen.warm_up([plan, (("alpha",), 1)], max_length=400)
    assert (done.shapes, done.captures, done.skipped) == (6, 0, 0)  # 2 batches x lengths 256, 384, 512
    assert set(gen._loop._states) == {
        (rows, length, 32, beams, True)
        for rows, beams in ((18, True), (1, False))
        for length in (256, 384, 512)
    }
    assert gen._stacked.rows.mask is None  # no row mask left for the next forward
    beams = dict(num_beams=3, num_return_sequences=3, max_new_tokens=6)
    gen.generate([LONG, SHORT] * 3, list(plan[0]), **beams)
    gen.generate([LONG], ["alpha"], **dict(beams, num_beams=1, num_return_sequences=1))
    assert len(gen._loop._states) == 6  # the requests met warm shapes
    with pytest.raises(UnknownAdapterError):
        gen.warm_up([(("delta",), 1)], max_length=100)


def test_warm_up_stays_within_the_shape_cache(tiny_model_dir, tiny_adapters_dir) -> None:
    gen = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    gen._loop.cache_bytes = 1 << 20
    done = gen.warm_up([((None,) * 6, 3), ((None,), 1)], max_length=8192)
    assert done.skipped > 0 and done.shapes == len(gen._loop._states)  # nothing made was pushed out
    assert sum(s.nbytes for s in gen._loop._states.values()) <= gen._loop.cache_bytes
    assert Generator(gen.model, gen.tokenizer, lora_backend="stacked").warm_up([], max_length=1).shapes == 0


@pytest.mark.parametrize("backend", [pytest.param(os.environ.get("QA_TEST_COMPILE_BACKEND", "aot_eager"))])
def test_compiled_steps_equal_eager_steps(tiny_model_dir, tiny_adapters_dir, backend) -> None:
    """`compile_backend` compiles the loop's step (the CPU runs it through TorchDynamo and AOTAutograd, the
    inductor backend's front half; QA_TEST_COMPILE_BACKEND=inductor runs all of it): greedy and beams, mixed
    adapters, stops, two shapes of each; a different shape recompiles at most once (automatic dynamic)."""
    from torch._dynamo.utils import counters

    hf = _generator(tiny_model_dir, tiny_adapters_dir)
    bias = stop_heavy(hf.tokenizer, hf.model.config.vocab_size)
    eager = _generator(tiny_model_dir, tiny_adapters_dir, bias, decoder="loop")
    compiled = _generator(tiny_model_dir, tiny_adapters_dir, bias, decoder="loop", compile_backend=backend)
    torch._dynamo.reset()
    counters.clear()
    for decoding in (
        dict(num_beams=1, num_return_sequences=1),
        dict(num_beams=3, num_return_sequences=2),
    ):
        for prompts, adapters in ((PROMPTS, ADAPTERS), (PROMPTS[:2] * 4, ["alpha", None] * 4)):
            want = eager.generate(prompts, adapters, max_new_tokens=8, **decoding)
            assert_same(compiled.generate(prompts, adapters, max_new_tokens=8, **decoding), want)
    assert counters["stats"]["unique_graphs"] >= 2  # greedy and beams traced, not run eagerly
    assert counters["stats"]["unique_graphs"] <= 6
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_warm_up_makes_the_prefill_shapes_requests_use(tiny_model_dir, tiny_adapters_dir) -> None:
    """With prompts padded to shape buckets (CUDA's prefill graphs), warm-up makes every prefill width up to
    `max_length` (each then decides the decode state's length), and requests meet only those."""
    gen = _generator(tiny_model_dir, tiny_adapters_dir, static_prefill=True, decoder="loop")
    plan = (("alpha", "alpha", "beta", "beta", "gamma", "gamma"), 3)
    done = gen.warm_up([plan, (("alpha",), 1)], max_length=193)  # prompts of up to 192 tokens
    widths = (64, 96, 128, 192)
    assert set(gen._loop._prefills) == {(rows, width, True) for rows in (6, 1) for width in widths}
    assert set(gen._loop._states) == {(18, 256, 32, True, True), (1, 256, 32, False, True)}
    assert done.shapes == 10
    beams = dict(num_beams=3, num_return_sequences=3, max_new_tokens=6)
    gen.generate([LONG, SHORT] * 3, list(plan[0]), **beams)
    gen.generate([SHORT], ["alpha"], **dict(beams, num_beams=1, num_return_sequences=1))
    assert len(gen._loop._prefills) == 8 and len(gen._loop._states) == 2  # the requests met warm shapes


def test_prefill_padding_follows_the_graph_size_and_survives_a_failed_capture(
    tiny_model_dir, tiny_adapters_dir, monkeypatch
) -> None:
    """Where graphs are on (pretended here: the CPU cannot capture, so every capture fails as a host sync
    would on CUDA), a prefill within `PREFILL_GRAPH_TOKENS` is padded to its shape and one above it runs as
    it is; a failed prefill capture turns prefill graphs off and the padded prefill runs eagerly, with the
    candidates `generate` gives."""
    import models.decode.loop

    hf = _generator(tiny_model_dir, tiny_adapters_dir)
    loop = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
    monkeypatch.setattr(models.decode.loop.DecodeLoop, "_graphs_on", lambda self, device: True)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6)
    want = hf.generate(PROMPTS, ADAPTERS, **beams)
    monkeypatch.setattr(models.decode.loop, "PREFILL_GRAPH_TOKENS", 1)  # every prefill is "too large"
    assert_same(loop.generate(PROMPTS, ADAPTERS, **beams), want)
    assert not loop._loop._prefills  # unpadded: no prefill shape made
    monkeypatch.setattr(models.decode.loop, "PREFILL_GRAPH_TOKENS", 16384)
    assert_same(loop.generate(PROMPTS, ADAPTERS, **beams), want)
    width = loop._encode(list(PROMPTS))[0].shape[1]
    assert list(loop._loop._prefills) == [(4, bucket(width, 64), True)]  # padded to the width's bucket
    assert loop._loop.captures == 0 and not loop._loop._prefill_graphs  # the capture failed, then stopped
    assert not loop._loop.cuda_graphs  # the step's capture failed too: steps run eagerly


@pytest.mark.parametrize("beams", [1, 3])
def test_each_prompt_alone_equals_the_padded_prefill(tiny_model_dir, tiny_adapters_dir, beams) -> None:
    """Off CUDA each prompt is prefilled alone and its KV left-padded into the batch's (`_prefill_each`):
    the same candidates and scores as one padded forward of the batch, and the kept prefill it leaves for
    the likelihood vote holds the same KV at the real slots and the same next-token log-probabilities."""
    gens = {}
    for alone in (True, False):
        gens[alone] = _generator(tiny_model_dir, tiny_adapters_dir, decoder="loop")
        gens[alone]._loop.prefill_alone = alone
    decoding = dict(num_beams=beams, num_return_sequences=beams, max_new_tokens=10)
    got, want = (gens[alone].generate(PROMPTS, ADAPTERS, **decoding) for alone in (True, False))
    assert_same(got, want)
    kept_alone, kept_padded = gens[True]._loop.kept, gens[False]._loop.kept
    real = kept_padded.mask.bool()
    assert torch.equal(kept_alone.mask, kept_padded.mask) and not real.all(), "prompts of different lengths"
    torch.testing.assert_close(kept_alone.log_probs, kept_padded.log_probs, atol=1e-4, rtol=1e-4)
    for a, p in zip(kept_alone.cache.layers, kept_padded.cache.layers, strict=True):
        for row in range(real.shape[0]):
            keys_alone, keys_padded = a.keys[row][:, real[row]], p.keys[row][:, real[row]]
            torch.testing.assert_close(keys_alone, keys_padded, atol=1e-4, rtol=0)
            assert not a.keys[row][:, ~real[row]].any(), "padding slots hold zeros"
