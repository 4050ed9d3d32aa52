"""Grouped-query attention for one decoding token without copying the KV cache.

transformers' SDPA path repeats each KV head for its query heads (`repeat_kv`: an expand and a reshape, i.e.
a copy of the layer's whole cache) whenever a mask is given, because SDPA's `enable_gqa` drops to the math
kernel with a mask. A decode step always has a mask (the padding of left-padded prompts), so every layer of
every step copied its keys and values `num_key_value_groups` times (7 in Qwen2.5-0.5B): at 288 rows x 1,024
slots, ~25 GB of copies a step against ~3.6 GB of cache to read. With one query token the group's query
heads can instead stand in for query positions: q [B, heads, 1, D] viewed as [B, kv_heads, groups, D] attends
to k, v [B, kv_heads, L, D] under the same [B, 1, 1, L] mask: the same products and softmax, no copy.
Everything else (prefill, several query tokens, no mask, no groups) is transformers' SDPA function.

`use_grouped_attention(model)` registers this function under its own name (with SDPA's mask builder) and
switches a model that uses "sdpa" to it; other attention implementations are left alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "qa_grouped_sdpa"


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
