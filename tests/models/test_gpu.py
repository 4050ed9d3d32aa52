"""The serving path on CUDA: auto config (4-bit NF4, bf16), mixed-adapter batches with beams, sampling, and
the decode loop's CUDA graphs."""

import pytest
import torch

from models.adapters.registry import AdapterRegistry
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPT = [{"role": "user", "content": "문맥: 세종대왕은 1443년에 훈민정음을 창제하였다.\n질문: 누가?"}]
DECODE = dict(max_new_tokens=8)  # and Generator.generate's defaults: greedy, one candidate


@pytest.fixture
def cuda_generator(tiny_model_dir, tiny_adapters_dir) -> Generator:
    model, tokenizer = load_base(tiny_model_dir, LoadConfig())
    generator = Generator(model, tokenizer)
    base = read_base_info(tiny_model_dir)
    registry = AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key=base.key, base_fingerprint=base.fingerprint
    )
    for spec in registry:
        generator.load_adapter(spec)
    return generator


def test_auto_config_is_4bit_bf16_on_cuda(cuda_generator):
    assert cuda_generator.device.startswith("cuda")
    model = cuda_generator.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert getattr(base, "is_loaded_in_4bit", False) and base.dtype == torch.bfloat16


def test_mixed_batch_with_beams_on_cuda(cuda_generator):
    adapters = ["alpha", None, "beta", "gamma"]
    beams = dict(DECODE, num_beams=3, num_return_sequences=2)
    mixed = cuda_generator.generate([PROMPT] * 4, adapters, **beams)
    alone = [cuda_generator.generate([PROMPT], [a], **beams)[0] for a in adapters]
    assert [[t for t, _ in c] for c in mixed] == [[t for t, _ in c] for c in alone]
    assert all(len(c) == 2 and c[0][1] >= c[1][1] for c in mixed)


def test_sampling_on_cuda(cuda_generator):
    sample = dict(DECODE, do_sample=True, num_beams=1, num_return_sequences=3, seed=3)
    first = cuda_generator.generate([PROMPT, PROMPT], ["alpha", None], **sample)
    assert first == cuda_generator.generate([PROMPT, PROMPT], ["alpha", None], **sample)
    assert [len(c) for c in first] == [3, 3]


def _generators(model_dir, adapters_dir, quantization: str, configs: dict[str, dict]) -> dict[str, Generator]:
    """One generator a config, each on its own load of the base (fp32, or bf16 under a 4-bit base), with
    every tiny adapter loaded."""
    dtype = "float32" if quantization == "none" else "bfloat16"
    base = read_base_info(model_dir)
    gens = {}
    for name, kwargs in configs.items():
        model, tokenizer = load_base(model_dir, LoadConfig(quantization=quantization, dtype=dtype))
        gens[name] = Generator(model, tokenizer, **kwargs)
        registry = AdapterRegistry.from_dir(
            adapters_dir, base_key=base.key, base_fingerprint=base.fingerprint
        )
        for spec in registry:
            gens[name].load_adapter(spec)
    return gens


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_decode_loop_with_cuda_graphs(tiny_model_dir, tiny_adapters_dir, quantization):
    """The loop replaying CUDA graphs gives the candidates of the loop stepping eagerly over the same padded
    shapes (in fp32, also those of generate), padding rows included (5 prompts decode as 6); each shape is
    captured once, and a warm-up captures the shapes a later request meets."""
    gens = _generators(
        tiny_model_dir,
        tiny_adapters_dir,
        quantization,
        {"hf": {}, "eager": {"decoder": "loop", "cuda_graphs": False}, "graphs": {"decoder": "loop"}},
    )
    # the prompts in the cache slots a replayed prefill puts them in (in bf16 another layout of the same
    # prompts rounds differently: a score can move by a bf16 step of a logit)
    gens["eager"]._loop.static_prefill = True
    prompts = [PROMPT, "짧은 질문?", PROMPT, "짧은 질문?", PROMPT]
    adapters = ["alpha", None, "gamma", "beta", None]
    for decoding in (
        dict(DECODE, num_beams=1, num_return_sequences=1),
        dict(DECODE, num_beams=3, num_return_sequences=2),
    ):
        out = {name: gen.generate(prompts, adapters, **decoding) for name, gen in gens.items()}
        assert [[t for t, _ in c] for c in out["graphs"]] == [[t for t, _ in c] for c in out["eager"]]
        for got, want in zip(out["graphs"], out["eager"], strict=True):
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-3)
        if quantization == "none":
            assert [[t for t, _ in c] for c in out["graphs"]] == [[t for t, _ in c] for c in out["hf"]]
    loop = gens["graphs"]._loop
    captured = loop.captures
    assert captured == 3 and loop.cuda_graphs  # greedy and beams: a step shape each, and their one prefill
    gens["graphs"].generate(prompts, adapters, **dict(DECODE, num_beams=3, num_return_sequences=2))
    assert loop.captures == captured  # the same shape replays its graph
    done = gens["graphs"].warm_up([(tuple(adapters), 3), (("alpha",), 1)], max_length=600)
    assert done.shapes == done.captures == loop.captures - captured > 0  # each new shape captured
    captured = loop.captures
    gens["graphs"].generate([PROMPT], ["alpha"], **dict(DECODE, num_beams=1, num_return_sequences=1))
    assert loop.captures == captured  # a warm shape


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_compiled_decode_loop_on_cuda(tiny_model_dir, tiny_adapters_dir, quantization):
    """The loop's step compiled by inductor (bitsandbytes' 4-bit matmul is a torch.library operator it keeps)
    and replayed from CUDA graphs gives the eager loop's candidates: the same texts in fp32, where fused
    kernels only reorder float sums; in bf16 the best scores within 0.1 (a fused RMSNorm or rotary skips the
    intermediate bf16 roundings the eager modules make; 0.062 was the largest difference seen on an H200)."""
    loop = {"decoder": "loop"}
    gens = _generators(
        tiny_model_dir,
        tiny_adapters_dir,
        quantization,
        {"eager": {**loop, "cuda_graphs": False}, "compiled": {**loop, "compile_backend": "inductor"}},
    )
    prompts = [PROMPT, "짧은 질문?", PROMPT, "짧은 질문?", PROMPT]
    adapters = ["alpha", None, "gamma", "beta", None]
    for decoding in (
        dict(DECODE, num_beams=1, num_return_sequences=1),
        dict(DECODE, num_beams=3, num_return_sequences=2),
    ):
        out = {name: gen.generate(prompts, adapters, **decoding) for name, gen in gens.items()}
        if quantization == "none":
            assert [[t for t, _ in c] for c in out["compiled"]] == [[t for t, _ in c] for c in out["eager"]]
        best = [(c[0][1], w[0][1]) for c, w in zip(out["compiled"], out["eager"], strict=True)]
        tolerance = 0.05 if quantization == "none" else 0.1  # bf16: 0.062 seen (fused kernels round less)
        assert [got for got, _ in best] == pytest.approx([want for _, want in best], abs=tolerance)
    assert gens["compiled"]._loop.captures == 3 and gens["compiled"]._loop.cuda_graphs  # 2 steps, 1 prefill


@pytest.mark.parametrize("nested", [True, False])
def test_fused_4bit_siblings_equal_each_layer_on_cuda(nested):
    """bitsandbytes' CUDA kernels on repacked q/k/v blocks: one row (gemv) and several (dequantise + gemm)."""
    import copy

    bnb = pytest.importorskip("bitsandbytes")
    from models.adapters.fused_base import fuse

    torch.manual_seed(0)
    layers = []
    for out in (896, 128, 128):
        layer = bnb.nn.Linear4bit(896, out, compute_dtype=torch.bfloat16, compress_statistics=nested)
        layer.weight = bnb.nn.Params4bit(
            torch.randn(out, 896) * 0.05, requires_grad=False, quant_type="nf4", compress_statistics=nested
        )
        layer.bias = torch.nn.Parameter(torch.randn(out, dtype=torch.bfloat16) * 0.05, requires_grad=False)
        layers.append(layer.cuda())
    before = copy.deepcopy(layers)
    fused = fuse(layers)
    assert fused is not None
    with torch.inference_mode():
        for rows in (1, 5):
            x = torch.randn(rows, 1, 896, dtype=torch.bfloat16, device="cuda")
            out = fused(x)
            for (start, end), original in zip(fused.spans, before, strict=True):
                torch.testing.assert_close(out[..., start:end], original(x), rtol=2e-2, atol=2e-2)


def test_lora_kernel_equals_the_matmuls_on_cuda():
    """The one-kernel stacked LoRA against the matmul path it replaces, in bf16, in the 0.5B model's shapes:
    q/k/v (three members), gate/up (two), down (one, 4,864 inputs), a decode step's row counts."""
    import torch.nn.functional as F

    from models.kernels import lora_kernel

    torch.manual_seed(0)
    rank = 48  # three r=16 adapters stacked
    for outs, in_features in (((896, 128, 128), 896), ((4864, 4864), 896), ((896,), 4864)):
        starts = [sum(outs[:i]) for i in range(len(outs))]
        for rows in (1, 18, 64):
            x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
            a = torch.randn(len(outs) * rank, in_features, device="cuda", dtype=torch.bfloat16) * 0.05
            mask = torch.zeros(rows, rank, device="cuda", dtype=torch.bfloat16)
            for row in range(rows):
                mask[row, (row % 3) * 16 : (row % 3 + 1) * 16] = 1  # each row one adapter's slice
            b = torch.randn(sum(outs), rank, device="cuda", dtype=torch.bfloat16) * 0.05
            out = torch.randn(rows, sum(outs), device="cuda", dtype=torch.bfloat16)
            want = out.clone()
            h = (F.linear(x, a).view(rows, len(outs), rank) * mask[:, None, :]).view(rows, -1)
            for i, (start, size) in enumerate(zip(starts, outs, strict=True)):
                want[:, start : start + size].addmm_(
                    h[:, i * rank : (i + 1) * rank], b[start : start + size].t()
                )
            assert lora_kernel.fits(x, a, mask, b, out, starts)  # down's 4,864 inputs: the split form
            lora_kernel.add_lora_(x, a, mask, b, out, starts)
            torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)


def test_candidates_with_and_without_the_lora_kernel_on_cuda(tiny_model_dir, tiny_adapters_dir, monkeypatch):
    """fp32 (the kernel multiplies in IEEE float32 there): the same candidates and scores as the matmuls, and
    the kernel really served the decode steps."""
    from models.kernels import lora_kernel

    calls = []
    kernel = lora_kernel.add_lora_
    monkeypatch.setattr(lora_kernel, "add_lora_", lambda *a: calls.append(1) or kernel(*a))
    gen = _generators(tiny_model_dir, tiny_adapters_dir, "none", {"hf": {}})["hf"]
    prompts, adapters = [PROMPT, "짧은 질문?", PROMPT], ["alpha", None, "gamma"]
    beams = dict(DECODE, num_beams=3, num_return_sequences=2)
    with_kernel = gen.generate(prompts, adapters, **beams)
    assert calls, "the decode steps should have run the kernel"
    gen._stacked.rows.kernel = False  # what QA_LORA_KERNEL=false sets
    calls.clear()
    without = gen.generate(prompts, adapters, **beams)
    assert not calls
    assert [[t for t, _ in c] for c in with_kernel] == [[t for t, _ in c] for c in without]
    for got, want in zip(with_kernel, without, strict=True):
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)


def test_attention_kernel_equals_transformers_on_cuda():
    """The decode step's attention kernel against transformers' rotary and SDPA in bf16, in the 0.5B model's
    shapes (14 query heads, 2 KV heads of 64), one and several splits of the cache, a padding mask."""
    import torch.nn.functional as F
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    from models.kernels import attention_kernel

    torch.manual_seed(0)
    heads, kv_heads, dim, dt = 14, 2, 64, torch.bfloat16
    for rows, length in ((1, 256), (18, 1024), (3, 2048)):
        fused = torch.randn(rows, (heads + 2 * kv_heads) * dim, device="cuda", dtype=dt)
        query, key, value = fused.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
        angles = torch.rand(rows, dim // 2, device="cuda") * 100
        cos = torch.cat((angles.cos(), angles.cos()), -1).to(dt)
        sin = torch.cat((angles.sin(), angles.sin()), -1).to(dt)
        keys = torch.randn(rows, kv_heads, length, dim, device="cuda", dtype=dt)
        values = torch.randn_like(keys)
        mask = torch.rand(rows, length, device="cuda") > 0.4
        cursor = length - 7
        mask[:, cursor] = True
        want_keys, want_values = keys.clone(), values.clone()
        q, k = apply_rotary_pos_emb(
            query.reshape(rows, heads, 1, dim),
            key.reshape(rows, kv_heads, 1, dim),
            cos[:, None],
            sin[:, None],
        )
        want_keys[:, :, cursor] = k[:, :, 0]
        want_values[:, :, cursor] = value.reshape(rows, kv_heads, dim)
        want = F.scaled_dot_product_attention(
            q.float(),
            want_keys.float().repeat_interleave(heads // kv_heads, 1),
            want_values.float().repeat_interleave(heads // kv_heads, 1),
            attn_mask=mask[:, None, None, :],
            scale=dim**-0.5,
        ).reshape(rows, heads * dim)
        assert attention_kernel.fits(heads, cos, sin, keys, values, mask)
        got = attention_kernel.decode_attention(
            query, key, value, cos, sin, keys, values, torch.tensor([cursor], device="cuda"), mask, dim**-0.5
        )
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(keys, want_keys, rtol=2e-2, atol=2e-2)
        assert torch.equal(values, want_values)


def test_candidates_with_and_without_the_attention_kernel_on_cuda(
    tiny_model_dir, tiny_adapters_dir, monkeypatch
):
    """fp32, the loop replaying CUDA graphs: the same candidates and scores with transformers' attention, and
    the kernel really served the decode steps (it runs at capture: a replay does not call Python)."""
    from models.kernels import attention_kernel

    calls = []
    launch = attention_kernel.launch
    monkeypatch.setattr(attention_kernel, "launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    gens = _generators(
        tiny_model_dir,
        tiny_adapters_dir,
        "none",
        {"kernel": {"decoder": "loop"}, "plain": {"decoder": "loop", "attention_kernel": False}},
    )
    prompts, adapters = [PROMPT, "짧은 질문?", PROMPT], ["alpha", None, "gamma"]
    for decoding in (DECODE, dict(DECODE, num_beams=3, num_return_sequences=2)):
        calls.clear()
        with_kernel = gens["kernel"].generate(prompts, adapters, **decoding)
        assert calls, "the decode steps should have run the kernel"
        calls.clear()
        without = gens["plain"].generate(prompts, adapters, **decoding)
        assert not calls
        assert [[t for t, _ in c] for c in with_kernel] == [[t for t, _ in c] for c in without]
        for got, want in zip(with_kernel, without, strict=True):
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
