"""A sibling group's stacked LoRA for a few rows (a decode step) in one kernel, instead of three to five.

With one token per row the stacked LoRA of a group (`models.adapters.multi_lora`) is an A matmul, a mask
multiply and a B matmul per member: tiny kernels of ~1.5-3 us each on an H100, ~310 a step of the 0.5B model
and a third of its time (`bench/step_profile.py`). `add_lora_` does all of it in one Triton kernel, in the
manner of Punica's and vLLM's multi-LoRA kernels: each program owns a tile of output columns, computes its
rows'
`h = (x @ A_m^T) * mask` for the member m those columns belong to (recomputing it per tile is cheaper than a
second launch: A is a few hundred KB, read from L2), and adds `h @ B[cols]^T` into the base output in place.
An input longer than `MAX_IN_FEATURES` (the MLP's down projection) takes two kernels, the first splitting
`x @ A^T` over the input. Rounding follows the three-kernel path: `h` rounded to the activation dtype before
the mask, float32 accumulation, one rounding of the sum.

It serves CUDA tensors of at most `MAX_ROWS` rows with one token each; `fits` says whether a call qualifies
and the caller (`SiblingGroup`) keeps its matmuls for everything else (prefill, CPUs, no Triton). It is a
`torch.library` operator that mutates `out`, so a compiled step (`QA_COMPILE`) keeps it as one call and a
CUDA graph replays it. `QA_LORA_KERNEL=false` (`Generator(lora_kernel=False)`) turns it off.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without Triton: the matmul path serves
    triton = None

MAX_ROWS = 64
"""Rows (one token each) up to which the kernel serves: every program recomputes its rows' `h`, which past
a decode step's batch costs more than the launches it saves."""
MAX_IN_FEATURES = 2048
"""Inputs up to which one kernel serves: each program reads its member's whole A, so a long input (the MLP's
down projection, 4,864 in the 0.5B model) took 13.8 us a call against 9.9 for the matmuls; q/k/v 4.7 against
12.9, gate/up 6.3 against 10.1, o 4.3 against 7.3 (H100, one row, `bench/lora_kernel_tune.py`). A longer input
takes two kernels: `_shrink_kernel` splits x @ A^T over `SPLIT_K`-long slices of the input (partial sums in
float32), `_expand_kernel` adds them up and goes on as the one kernel does."""
SPLIT_K = 256
"""Input features a program of `_shrink_kernel` sums over: 19 programs for 4,864."""
BLOCK_NS = (64, 32)
"""Output columns a program, the largest that every member's columns divide (`fits` checks one does)."""
BLOCK_K = 128


if triton is not None:

    @triton.jit
    def _x_at(
        x_ptr,
        a_ptr,
        a_rows,
        a_valid,
        rows,
        in_features,
        k_start,
        k_stop,
        stride_x,
        stride_a,
        BLOCK_M: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """`x @ A[a_rows]^T` over the inputs `k_start`..`k_stop`, in float32: [BLOCK_M, BLOCK_R]."""
        m = tl.arange(0, BLOCK_M)
        h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(k_start, k_stop, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + m[:, None] * stride_x + k[None, :],
                mask=(m[:, None] < rows) & (k[None, :] < in_features),
                other=0.0,
            )
            a = tl.load(
                a_ptr + a_rows[None, :] * stride_a + k[:, None],
                mask=a_valid[None, :] & (k[:, None] < in_features),
                other=0.0,
            )
            h += tl.dot(x, a, input_precision=PRECISION)
        return h

    @triton.jit
    def _mask_and_add(
        h,
        mask_ptr,
        b_ptr,
        out_ptr,
        col0,
        rows,
        rank,
        stride_mask,
        stride_b,
        stride_out,
        BLOCK_M: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """`out[:, col0:col0 + BLOCK_N] += (h * mask) @ B[those columns]^T` in place; `h` is rounded to the
        mask's dtype before the mask, the sum once."""
        m = tl.arange(0, BLOCK_M)
        r = tl.arange(0, BLOCK_R)
        row_mask = tl.load(
            mask_ptr + m[:, None] * stride_mask + r[None, :],
            mask=(m[:, None] < rows) & (r[None, :] < rank),
            other=0.0,
        )
        h = h.to(row_mask.dtype) * row_mask
        n = col0 + tl.arange(0, BLOCK_N)
        b = tl.load(b_ptr + n[None, :] * stride_b + r[:, None], mask=r[:, None] < rank, other=0.0)
        delta = tl.dot(h, b, input_precision=PRECISION)
        out_ptrs = out_ptr + m[:, None] * stride_out + n[None, :]
        in_rows = m[:, None] < rows
        base = tl.load(out_ptrs, mask=in_rows, other=0.0)
        tl.store(out_ptrs, (base.to(tl.float32) + delta).to(base.dtype), mask=in_rows)

    @triton.jit
    def _stacked_lora_kernel(
        x_ptr,
        a_ptr,
        mask_ptr,
        b_ptr,
        out_ptr,
        rows,
        in_features,
        rank,
        start1,
        start2,
        stride_x,
        stride_a,
        stride_mask,
        stride_b,
        stride_out,
        BLOCK_M: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        col0 = tl.program_id(0) * BLOCK_N
        member = (col0 >= start1).to(tl.int32) + (col0 >= start2).to(tl.int32)
        r = tl.arange(0, BLOCK_R)
        h = _x_at(
            x_ptr,
            a_ptr,
            member * rank + r,
            r < rank,
            rows,
            in_features,
            0,
            in_features,
            stride_x,
            stride_a,
            BLOCK_M,
            BLOCK_R,
            BLOCK_K,
            PRECISION,
        )
        _mask_and_add(
            h,
            mask_ptr,
            b_ptr,
            out_ptr,
            col0,
            rows,
            rank,
            stride_mask,
            stride_b,
            stride_out,
            BLOCK_M,
            BLOCK_R,
            BLOCK_N,
            PRECISION,
        )

    @triton.jit
    def _shrink_kernel(
        x_ptr,
        a_ptr,
        part_ptr,
        rows,
        in_features,
        a_rows,
        stride_x,
        stride_a,
        BLOCK_M: tl.constexpr,
        BLOCK_RA: tl.constexpr,
        SPLIT_K: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        split = tl.program_id(0)
        m = tl.arange(0, BLOCK_M)
        r = tl.arange(0, BLOCK_RA)
        h = _x_at(
            x_ptr,
            a_ptr,
            r,
            r < a_rows,
            rows,
            in_features,
            split * SPLIT_K,
            split * SPLIT_K + SPLIT_K,
            stride_x,
            stride_a,
            BLOCK_M,
            BLOCK_RA,
            BLOCK_K,
            PRECISION,
        )
        tl.store(part_ptr + split * BLOCK_M * BLOCK_RA + m[:, None] * BLOCK_RA + r[None, :], h)

    @triton.jit
    def _expand_kernel(
        part_ptr,
        mask_ptr,
        b_ptr,
        out_ptr,
        rows,
        rank,
        start1,
        start2,
        stride_mask,
        stride_b,
        stride_out,
        SPLITS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_RA: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        col0 = tl.program_id(0) * BLOCK_N
        member = (col0 >= start1).to(tl.int32) + (col0 >= start2).to(tl.int32)
        m = tl.arange(0, BLOCK_M)
        r = tl.arange(0, BLOCK_R)
        at = m[:, None] * BLOCK_RA + (member * rank + r)[None, :]
        h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for split in range(SPLITS):
            h += tl.load(part_ptr + split * BLOCK_M * BLOCK_RA + at, mask=r[None, :] < rank, other=0.0)
        _mask_and_add(
            h,
            mask_ptr,
            b_ptr,
            out_ptr,
            col0,
            rows,
            rank,
            stride_mask,
            stride_b,
            stride_out,
            BLOCK_M,
            BLOCK_R,
            BLOCK_N,
            PRECISION,
        )


def launch(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    mask: torch.Tensor,
    lora_b: torch.Tensor,
    out: torch.Tensor,
    starts: list[int],
    *,
    block_k: int = BLOCK_K,
    num_warps: int = 4,
    num_stages: int = 3,
) -> None:
    """`out[:, s_i:s_i+1] += ((x @ A_i^T) * mask) @ B[s_i:s_i+1]^T` for each member i (columns from
    `starts`, at most three members); x [rows, in], A [members x rank, in], mask [rows, rank],
    B [sum out, rank], out [rows, sum out]. The keywords are Triton's launch settings
    (`bench/lora_kernel_tune.py` compares them)."""
    rows, in_features = x.shape
    rank = mask.shape[1]
    far = out.shape[1]  # a start no column reaches: fewer than three members
    start1, start2 = ([*starts[1:], far, far])[:2]
    block_n = _block_n(starts, out.shape[1])
    block_m, block_r = max(16, triton.next_power_of_2(rows)), max(16, triton.next_power_of_2(rank))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # float32 stays float32 (tf32: bf16 only)
    if in_features > MAX_IN_FEATURES:  # x @ A^T split over the input, then the rest from the partial sums
        splits = triton.cdiv(in_features, SPLIT_K)
        block_ra = max(16, triton.next_power_of_2(lora_a.shape[0]))
        part = torch.empty(splits, block_m, block_ra, device=x.device, dtype=torch.float32)
        _shrink_kernel[(splits,)](
            x,
            lora_a,
            part,
            rows,
            in_features,
            lora_a.shape[0],
            x.stride(0),
            lora_a.stride(0),
            BLOCK_M=block_m,
            BLOCK_RA=block_ra,
            SPLIT_K=SPLIT_K,
            BLOCK_K=min(block_k, SPLIT_K),
            PRECISION=precision,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        _expand_kernel[(out.shape[1] // block_n,)](
            part,
            mask,
            lora_b,
            out,
            rows,
            rank,
            start1,
            start2,
            mask.stride(0),
            lora_b.stride(0),
            out.stride(0),
            SPLITS=splits,
            BLOCK_M=block_m,
            BLOCK_RA=block_ra,
            BLOCK_R=block_r,
            BLOCK_N=block_n,
            PRECISION=precision,
        )
        return
    _stacked_lora_kernel[(out.shape[1] // block_n,)](
        x,
        lora_a,
        mask,
        lora_b,
        out,
        rows,
        in_features,
        rank,
        start1,
        start2,
        x.stride(0),
        lora_a.stride(0),
        mask.stride(0),
        lora_b.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )


def _block_n(starts: list[int], columns: int) -> int:
    """The widest tile that no member boundary splits; 0 if none."""
    return next((n for n in BLOCK_NS if columns % n == 0 and all(s % n == 0 for s in starts)), 0)


@torch.library.custom_op("qa::stacked_lora_add_", mutates_args=("out",), device_types="cuda")
def add_lora_(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    mask: torch.Tensor,
    lora_b: torch.Tensor,
    out: torch.Tensor,
    starts: list[int],
) -> None:
    """The group's LoRA added into `out` in place (see `launch`), as the operator `qa::stacked_lora_add_`;
    call only where `fits`."""
    launch(x, lora_a, mask, lora_b, out, starts)


@add_lora_.register_fake
def _(x, lora_a, mask, lora_b, out, starts) -> None:  # noqa: ANN001 - shapes only: nothing to return
    return None


def fits(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    mask: torch.Tensor,
    lora_b: torch.Tensor,
    out: torch.Tensor,
    starts: list[int],
) -> bool:
    """Whether `add_lora_` serves this call: CUDA, one token per row, few rows, one dtype, whole tiles."""
    return (
        x.is_cuda
        and triton is not None
        and len(starts) <= 3
        and lora_b.stride(1) == 1
        and x.dim() == 2
        and x.shape[0] == mask.shape[0] <= MAX_ROWS
        and x.dtype == lora_a.dtype == mask.dtype == out.dtype
        and x.stride(1) == out.stride(1) == lora_a.stride(1) == mask.stride(1) == 1
        and _block_n(starts, out.shape[1]) > 0
    )
