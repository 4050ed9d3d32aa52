"""A decode step's attention for one layer in two kernels: rotary, the KV cache write and grouped attention.

Between the q/k/v projection and o_proj, a layer of transformers' Qwen2/Llama attention is, for one decoding
token, about 14 kernels on a GPU: rotary's two `rotate_half` concatenations and eight pointwise operators, the
cache's two writes, the query's copy into the grouped layout (`models.decode.fast_paths.grouped_sdpa`), SDPA
and the output's copy back: 33-50 us a layer on an H100, ~0.9 ms of a 2.7 ms step of the 0.5B model.
`decode_attention` does it in two Triton kernels (4.7-7.9 us; `bench/attention_kernel_tune.py`):

1. One program per (row, KV head, split of the cache's slots: `split_slots`). It rotates its group's query
   heads and the new key (float32, the halves swapped by index: no copies), writes the key and value into the
   cache at `cursor` (split 0 only), and attends over its slots with an online softmax. This is
   flash-decoding: the splits let one row fill more of the card than its two KV heads would. The slot at
   `cursor` is taken from registers, not read back from the cache another program is writing.
2. One program per (row, query head) combines the splits' partial softmaxes into the output, in the layout
   o_proj reads ([rows, heads x dim]). With one split the first kernel writes the output itself.

Rounding follows transformers' path where it matters: q and the new key are rounded to the cache dtype after
rotary (as its bf16 rotary does, once instead of at every operator), the probabilities are rounded to the
value dtype before their matmul (as SDPA's kernels do), and scores, softmax and sums stay float32.

It serves one token a row under a padding mask (the decode loop's `StepCache`), CUDA tensors, head sizes of
16 to 256 (a power of two) and up to 16 query heads a KV head; `fits` says whether a call qualifies and
`models.decode.fast_paths` keeps transformers' forward for everything else. Under Triton's interpreter
(`TRITON_INTERPRET=1`) CPU tensors qualify too, which is how the CPU tests run it. It is a `torch.library`
operator that mutates the cache, so a compiled step keeps it as one call and a CUDA graph replays it.
`QA_ATTENTION_KERNEL=false` turns it off.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without Triton: transformers' attention serves
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's interpreter runs kernels on the CPU: CPU tensors qualify (tests)."""
BLOCK_L = 64
"""Cache slots a loop iteration of a program reads."""
MAX_PROGRAMS = 1024
"""Programs of the first kernel up to which the cache is split finer: a program owns `BLOCK_L` slots, or twice
as many until the grid fits. One row's 1,024-slot cache is 32 programs, the ensemble's 18 rows' 576 (a split
each 64 slots); 288 rows need no split. The fastest on an H100 (`bench/attention_kernel_tune.py`): 64 slots a
split at 1 and 18 rows (4.7-7.9 us a layer against 33-50 for transformers' path), 128 at 18 rows x 2,048."""
MAX_GROUP = 16
"""Query heads a KV head at most (a program holds its group's queries as one tile)."""

if triton is not None:

    @triton.jit
    def _attend_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        cos_ptr,
        sin_ptr,
        key_cache_ptr,
        value_cache_ptr,
        cursor_ptr,
        mask_ptr,
        out_ptr,
        part_m_ptr,
        part_l_ptr,
        part_acc_ptr,
        length,
        scale,
        stride_q,
        stride_k,
        stride_v,
        stride_cos,
        stride_sin,
        stride_cache_row,
        stride_cache_head,
        stride_mask,
        KV_HEADS: tl.constexpr,
        GROUP: tl.constexpr,
        GROUP_P: tl.constexpr,
        D: tl.constexpr,
        SPLITS: tl.constexpr,
        SPLIT_L: tl.constexpr,
        BLOCK_L: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        row_head = tl.program_id(0)
        split = tl.program_id(1)
        row = row_head // KV_HEADS
        kv_head = row_head % KV_HEADS
        d = tl.arange(0, D)
        pair = (
            d + D // 2
        ) % D  # rotate_half: x[d + D/2] negated for the first half, x[d - D/2] for the second
        sign = tl.where(d < D // 2, -1.0, 1.0)
        cos = tl.load(cos_ptr + row * stride_cos + d).to(tl.float32)
        sin = tl.load(sin_ptr + row * stride_sin + d).to(tl.float32)
        dtype = key_cache_ptr.dtype.element_ty

        # the new token's key (rotated) and value, written at the cursor by split 0
        k_row = k_ptr + row * stride_k + kv_head * D
        key = tl.load(k_row + d).to(tl.float32) * cos + sign * tl.load(k_row + pair).to(tl.float32) * sin
        key = key.to(dtype)
        value = tl.load(v_ptr + row * stride_v + kv_head * D + d).to(dtype)
        cursor = tl.load(cursor_ptr)
        cache_at = row * stride_cache_row + kv_head * stride_cache_head
        written = (d < D) & (split == 0)
        tl.store(key_cache_ptr + cache_at + cursor * D + d, key, mask=written)
        tl.store(value_cache_ptr + cache_at + cursor * D + d, value, mask=written)

        # the group's queries, rotated
        g = tl.arange(0, GROUP_P)
        in_group = g < GROUP
        q_rows = q_ptr + row * stride_q + (kv_head * GROUP + g)[:, None] * D
        query = tl.load(q_rows + d[None, :], mask=in_group[:, None], other=0.0).to(tl.float32)
        swapped = tl.load(q_rows + pair[None, :], mask=in_group[:, None], other=0.0).to(tl.float32)
        query = (query * cos[None, :] + sign[None, :] * swapped * sin[None, :]).to(dtype)

        # this split's slots from the cache (the cursor's slot excepted), online softmax in base 2
        best = tl.full((GROUP_P,), float("-inf"), dtype=tl.float32)
        total = tl.zeros((GROUP_P,), dtype=tl.float32)
        acc = tl.zeros((GROUP_P, D), dtype=tl.float32)
        first = split * SPLIT_L
        for start in range(first, first + SPLIT_L, BLOCK_L):
            slots = start + tl.arange(0, BLOCK_L)
            inside = slots < length
            keep = tl.load(mask_ptr + row * stride_mask + slots, mask=inside, other=0) != 0
            keep = keep & inside & (slots != cursor)
            keys = tl.load(
                key_cache_ptr + cache_at + slots[:, None] * D + d[None, :], mask=inside[:, None], other=0.0
            )
            scores = tl.dot(query, tl.trans(keys), input_precision=PRECISION) * scale
            scores = tl.where(keep[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))
            safe = tl.where(new_best == float("-inf"), 0.0, new_best)
            weights = tl.exp2(scores - safe[:, None])
            shrink = tl.exp2(best - safe)
            total = total * shrink + tl.sum(weights, axis=1)
            values = tl.load(
                value_cache_ptr + cache_at + slots[:, None] * D + d[None, :], mask=inside[:, None], other=0.0
            )
            acc = acc * shrink[:, None] + tl.dot(weights.to(dtype), values, input_precision=PRECISION)
            best = new_best

        # the new token itself, by the last split
        own = tl.sum(query.to(tl.float32) * key.to(tl.float32)[None, :], axis=1) * scale
        own = tl.where(split == SPLITS - 1, own, float("-inf"))
        new_best = tl.maximum(best, own)
        safe = tl.where(new_best == float("-inf"), 0.0, new_best)
        weight = tl.exp2(own - safe)
        shrink = tl.exp2(best - safe)
        total = total * shrink + weight
        acc = acc * shrink[:, None] + weight.to(dtype).to(tl.float32)[:, None] * value.to(tl.float32)[None, :]
        best = new_best

        heads = kv_head * GROUP + g
        if SPLITS == 1:
            out = acc / total[:, None]
            tl.store(
                out_ptr + row * (KV_HEADS * GROUP * D) + heads[:, None] * D + d[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=in_group[:, None],
            )
        else:
            at = (row * KV_HEADS * GROUP + heads) * SPLITS + split
            tl.store(part_m_ptr + at, best, mask=in_group)
            tl.store(part_l_ptr + at, total, mask=in_group)
            tl.store(part_acc_ptr + at[:, None] * D + d[None, :], acc, mask=in_group[:, None])

    @triton.jit
    def _combine_kernel(
        part_m_ptr,
        part_l_ptr,
        part_acc_ptr,
        out_ptr,
        D: tl.constexpr,
        SPLITS: tl.constexpr,
        SPLITS_P: tl.constexpr,
    ):
        row_head = tl.program_id(0)  # row x heads + head: the output's layout
        s = tl.arange(0, SPLITS_P)
        d = tl.arange(0, D)
        at = row_head * SPLITS + s
        present = s < SPLITS
        best = tl.load(part_m_ptr + at, mask=present, other=float("-inf"))
        top = tl.max(best, axis=0)  # finite: the last split holds the new token
        weight = tl.where(present, tl.exp2(best - top), 0.0)
        total = tl.sum(tl.load(part_l_ptr + at, mask=present, other=0.0) * weight, axis=0)
        acc = tl.load(part_acc_ptr + at[:, None] * D + d[None, :], mask=present[:, None], other=0.0)
        out = tl.sum(acc * weight[:, None], axis=0) / total
        tl.store(out_ptr + row_head * D + d, out.to(out_ptr.dtype.element_ty))


def launch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cursor: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
    *,
    split_l: int | None = None,
    block_l: int = BLOCK_L,
    num_warps: int = 4,
) -> torch.Tensor:
    """Attention output [rows, heads x dim] of one new token a row (see the module doc): `query` [rows,
    heads x dim], `key` and `value` [rows, kv heads x dim] (the projections, before rotary; rows may be
    strided), `cos` and `sin` [rows, dim], `key_cache` and `value_cache` [rows, kv heads, slots, dim]
    (written at slot `cursor`, a one-element tensor), `mask` [rows, slots] (True: attend). The keywords
    are Triton's launch settings (`bench/attention_kernel_tune.py` compares them); `split_l`, the slots a
    program owns, defaults to `split_slots`."""
    rows, kv_heads, length, dim = key_cache.shape
    heads = query.shape[1] // dim
    split_l = split_l or split_slots(rows * kv_heads, length, block_l)
    splits = triton.cdiv(length, split_l)
    out = query.new_empty(rows, heads * dim)
    if splits > 1:
        part_m = torch.empty(rows * heads * splits, device=query.device, dtype=torch.float32)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty(rows * heads * splits, dim, device=query.device, dtype=torch.float32)
    else:  # the first kernel writes the output
        part_m = part_l = part_acc = out
    _attend_kernel[(rows * kv_heads, splits)](
        query,
        key,
        value,
        cos,
        sin,
        key_cache,
        value_cache,
        cursor,
        mask,
        out,
        part_m,
        part_l,
        part_acc,
        length,
        scaling * math.log2(math.e),
        query.stride(0),
        key.stride(0),
        value.stride(0),
        cos.stride(0),
        sin.stride(0),
        key_cache.stride(0),
        key_cache.stride(1),
        mask.stride(0),
        KV_HEADS=kv_heads,
        GROUP=heads // kv_heads,
        GROUP_P=max(16, triton.next_power_of_2(heads // kv_heads)),
        D=dim,
        SPLITS=splits,
        SPLIT_L=split_l,
        BLOCK_L=block_l,
        PRECISION="ieee" if key_cache.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )
    if splits > 1:
        _combine_kernel[(rows * heads,)](
            part_m, part_l, part_acc, out, D=dim, SPLITS=splits, SPLITS_P=triton.next_power_of_2(splits)
        )
    return out


def split_slots(programs: int, length: int, block_l: int = BLOCK_L) -> int:
    """Cache slots a program owns, for `programs` (rows x KV heads) over `length` slots: `block_l`, doubled
    while the grid would pass `MAX_PROGRAMS` (and a split is shorter than the cache)."""
    split = block_l
    while split < length and programs * -(-length // split) > MAX_PROGRAMS:
        split *= 2
    return split


@torch.library.custom_op("qa::decode_attention", mutates_args=("key_cache", "value_cache"))
def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cursor: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """`launch` as the operator `qa::decode_attention`; call only where `fits`."""
    return launch(query, key, value, cos, sin, key_cache, value_cache, cursor, mask, scaling)


@decode_attention.register_fake
def _(query, key, value, cos, sin, key_cache, value_cache, cursor, mask, scaling) -> torch.Tensor:  # noqa: ANN001
    return query.new_empty(query.shape[0], query.shape[1])


def fits(
    heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    mask: torch.Tensor,
) -> bool:
    """Whether `decode_attention` serves a layer of `heads` query heads with these rotary tables, cache
    and mask (the shapes of `launch`'s arguments; the projections are any float rows with unit stride, as a
    linear layer's outputs are): CUDA (or Triton's interpreter), a power-of-two head size, whole groups of
    query heads, one cache dtype."""
    if triton is None or not (key_cache.is_cuda or INTERPRETED) or key_cache.dim() != 4:
        return False
    rows, kv_heads, length, dim = key_cache.shape
    return (
        16 <= dim <= 256
        and dim & (dim - 1) == 0
        and heads % kv_heads == 0
        and heads // kv_heads <= MAX_GROUP
        and cos.shape == sin.shape == (rows, dim)
        and cos.stride(-1) == sin.stride(-1) == 1
        and value_cache.shape == key_cache.shape
        and value_cache.dtype == key_cache.dtype
        and key_cache.stride()[2:] == value_cache.stride()[2:] == (dim, 1)
        and key_cache.stride()[:2] == value_cache.stride()[:2]
        and mask.shape == (rows, length)
        and mask.dtype == torch.bool
        and mask.stride(-1) == 1
    )
