"""Drop-in replacements for a decode step's hot modules: the same math in fewer kernels.

A small model's decode step is bound by kernel launches (`bench/step_ops.py`), so two of transformers'
modules are swapped, in place, for equivalents that launch less. `use_fast_paths(model)` applies both; the
decode loop calls it, and what it changes serves `generate` too.

**Grouped-query attention for one decoding token.** transformers' SDPA path repeats each KV head for its query
heads (`repeat_kv`: an expand and a reshape, i.e. a copy of the layer's whole cache) whenever a mask is given,
because SDPA's `enable_gqa` drops to the math kernel with a mask. A decode step always has a mask (the padding
of left-padded prompts), so every layer of every step copied its keys and values `num_key_value_groups`
times (7 in Qwen2.5-0.5B): at 288 rows x 1,024 slots, ~25 GB of copies a step against ~3.6 GB of cache to
read. With one query token the group's query heads can instead stand in for query positions: q [B, heads,
1, D] viewed as [B, kv_heads, groups, D] attends to k, v [B, kv_heads, L, D] under the same [B, 1, 1, L]
mask: the same products and softmax, no copy. Everything else (prefill, several query tokens, no mask, no
groups) is transformers' SDPA function. It is registered under its own name (with SDPA's mask builder) and a
model that uses "sdpa" switches to it; other attention implementations are left alone.

**RMSNorm as one operator.** transformers' `Qwen2RMSNorm` (and its Llama-family twins) runs six to eight
operators (casts, pow, mean, add, rsqrt, mul, mul): 49 norms are ~300 launches of a 0.5B model's step.
`F.rms_norm` is one operator, on CUDA PyTorch's fused kernel (`aten::_fused_rms_norm`); it computes in
float32 as the module does and rounds once where the module rounds the normalised value before scaling
(bf16 differences of a rounding; float32 the same). Norms whose weight dtype differs from their input keep
their own forward.

**A decode step's attention in two kernels.** In a step of the decode loop (its cache is a `StepCache` that
asks for it), Qwen2's and Llama's attention go from the q/k/v projections to o_proj through
`models.kernels.attention_kernel.decode_attention`: rotary, the cache write and grouped attention in two
Triton kernels instead of ~14. Any other call, or a shape the kernel does not take, runs the module's own
forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from models.decode.state import StepCache
from models.kernels import attention_kernel

NAME = "qa_grouped_sdpa"
KERNEL_ATTENTION = frozenset({"Qwen2Attention", "LlamaAttention"})
"""Attention classes whose forward is the plain q/k/v -> rotary (`rotate_half`) -> cache -> attention ->
o_proj that `decode_attention` replaces (no q/k norms, no soft-capping, no sliding window)."""


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if (
        q_len != 1
        or attention_mask is None
        or kv_heads == heads
        or dropout
        or kwargs.get("position_bias") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # query heads of a KV head as its query positions (reshape: a copy where rotary left another layout)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None  # as SDPA's path: [B, 1, heads, D]


def use_grouped_attention(model: Any) -> bool:
    """Serve `model`'s SDPA attention through `grouped_sdpa`; False (nothing changed) for another kind."""
    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True


def _fused_rms_norm(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != self.weight.dtype:  # e.g. a float32 norm under bf16 activations
        return type(self).forward(self, hidden_states)
    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)


def use_fused_rms_norm(model: Any) -> int:
    """Run every RMSNorm of `model` of transformers' shape (a `weight` and a `variance_epsilon`) as
    `F.rms_norm`; returns how many."""
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            if isinstance(getattr(module, "weight", None), torch.Tensor):
                module.forward = types.MethodType(_fused_rms_norm, module)
                count += 1
    return count


def _kernel_attention(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    cache = past_key_values
    if (
        isinstance(cache, StepCache)
        and cache.attention_kernel
        and hidden_states.shape[1] == 1
        and attention_mask is not None
        and attention_mask.dim() == 4
        and self.config._attn_implementation in (NAME, "sdpa")
    ):
        cos, sin = (t[:, 0] for t in position_embeddings)  # [rows, 1, dim] -> [rows, dim]
        keys, values = cache.keys[self.layer_idx], cache.values[self.layer_idx]
        mask = attention_mask[:, 0, 0]  # one query token: [rows, 1, 1, slots] -> [rows, slots]
        if attention_kernel.fits(self.config.num_attention_heads, cos, sin, keys, values, mask):
            query, key, value = (p(hidden_states)[:, 0] for p in (self.q_proj, self.k_proj, self.v_proj))
            out = attention_kernel.decode_attention(
                query, key, value, cos, sin, keys, values, cache.cursor, mask, self.scaling
            )
            return self.o_proj(out[:, None]), None
    return type(self).forward(
        self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs
    )


def use_kernel_attention(model: Any) -> int:
    """Let every attention module of `KERNEL_ATTENTION`'s classes run a decode step through
    `decode_attention` (where the step's cache asks for it); returns how many."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in KERNEL_ATTENTION and not hasattr(module, "q_norm"):
            module.forward = types.MethodType(_kernel_attention, module)
            count += 1
    return count


def use_fast_paths(model: Any) -> None:
    """The three replacements (see the module doc)."""
    use_grouped_attention(model)
    use_fused_rms_norm(model)
    use_kernel_attention(model)
