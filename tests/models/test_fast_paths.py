"""The decode step's drop-in replacements (`models.decode.fast_paths`) compute what transformers' modules
compute."""

import pytest
import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from models.decode.fast_paths import NAME, use_fast_paths, use_fused_rms_norm, use_grouped_attention


def _model(dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,  # 4 query heads a KV head, as GQA models have
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).eval().to(dtype)
    for norm in (m for m in model.modules() if type(m).__name__ == "Qwen2RMSNorm"):
        norm.weight.data.uniform_(0.5, 1.5)  # not all ones: the weight must be applied as the module does
    return model


def _prefill_and_step(model: Qwen2ForCausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a left-padded prefill, then of one decode step under a ready-made 4-D mask (the loop's)."""
    ids = torch.randint(0, 100, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1).bool()[:, None, None, :]
        step = model(
            input_ids=ids[:, :1],
            attention_mask={"full_attention": step_mask},
            position_ids=positions[:, -1:] + 1,
            past_key_values=cache,
        )
    return prefill.logits, step.logits


def test_grouped_attention_gives_sdpas_logits() -> None:
    model = _model()
    want = _prefill_and_step(model)
    assert use_grouped_attention(model) and model.config._attn_implementation == NAME
    got = _prefill_and_step(model)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_grouped_attention_leaves_other_implementations_alone() -> None:
    model = _model()
    model.set_attn_implementation("eager")
    assert not use_grouped_attention(model) and model.config._attn_implementation == "eager"


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_fused_rms_norm_gives_the_modules_output(dtype, tolerance) -> None:
    model = _model(dtype)
    want = _prefill_and_step(model)
    assert use_fused_rms_norm(model) == 2 * 2 + 1  # two per layer and the final norm
    got = _prefill_and_step(model)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), atol=tolerance, rtol=0)


def test_a_norm_of_another_dtype_keeps_its_own_forward() -> None:
    model = _model()
    use_fast_paths(model)
    norm = model.model.norm
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    # float32 weight, bf16 input: the module's own forward (a float32 result), not F.rms_norm's
    want = type(norm).forward(norm, x)
    assert norm(x).dtype == want.dtype == torch.float32
    torch.testing.assert_close(norm(x), want)
