"""Numerical safety of training steps: which attention kernels may run, and what to say when a step goes NaN.

`attention_kernels` keeps PyTorch's cuDNN attention backend off while training on CUDA (unless the recipe
asks for it). On H100/H200 (torch >= 2.11) its backward returns NaN in grad_q, with a finite forward, for an
SDPA call with an explicit mask whose length is 64 mod 128 when a query row's logsumexp is below -88.7
(pytorch/pytorch#196678); Qwen2.5-0.5B has heads like that (huggingface/trl#7181). Our right-padded
micro-batches always pass a mask, and on the H200 the first NaN step of every member that went NaN was
exactly its first micro-batch of such a width. Without cuDNN, SDPA runs its memory-efficient kernel.

`find_nonfinite` reports the first micro-batch of a step whose loss or gradients were not finite: whether
its forward loss was finite, the parameter backward reached first among those with a non-finite gradient
(where the NaN entered), and the micro-batch's padded width. This module knows nothing about data or files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

NamedParameters = Sequence[tuple[str, torch.nn.Parameter]]


def sdpa_backends() -> dict[str, bool]:
    """Which backends `torch.nn.functional.scaled_dot_product_attention` may choose from right now."""
    cuda = torch.backends.cuda
    return {
        "cudnn": cuda.cudnn_sdp_enabled(),
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }


@contextmanager
def attention_kernels(*, cudnn: bool, device: str) -> Iterator[dict[str, bool] | None]:
    """Allow (or not) the cuDNN SDPA backend for the duration, on CUDA; yields the backends then allowed
    (None on the CPU, where the flag means nothing). The previous setting is restored on exit."""
    if device != "cuda":
        yield None
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    try:
        yield sdpa_backends()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def grads_finite(params: Sequence[torch.Tensor]) -> bool:
    """True when every gradient is finite; one reduction and one device sync for all of them."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)))


@dataclass(frozen=True)
class NonFinite:
    """The first micro-batch of an optimizer step whose loss or gradients were not finite."""

    step: int
    micro_batch: int
    """0-based, among the step's `micro_batches` (gradients accumulate, so later ones stay non-finite)."""
    micro_batches: int
    forward_finite: bool
    """Whether that micro-batch's loss was finite: True puts the fault in the backward pass."""
    first_nonfinite_grad: str | None
    """The trainable parameter backward reached first among those with a non-finite gradient: the last one
    in module order, as backward runs the layers in reverse. A NaN from attention's grad_q shows up as a
    `q_proj` LoRA weight, with the layers above it finite."""
    nonfinite_grads: int
    trainable: int
    rows: int
    width: int
    """Padded length of the micro-batch in tokens (pytorch/pytorch#196678 needs width % 128 == 64)."""
    width_mod_128: int
    sdpa_backends: dict[str, bool] | None
    """The SDPA backends allowed while it ran (None on the CPU)."""


def find_nonfinite(
    named: NamedParameters,
    *,
    step: int,
    micro_batch: int,
    micro_batches: int,
    forward_finite: bool,
    shape: tuple[int, int],
    backends: dict[str, bool] | None,
) -> NonFinite | None:
    """None when the loss and every gradient are finite, else what went wrong and where (call it after each
    micro-batch's backward; the per-parameter scan runs only when something is not finite)."""
    if forward_finite and grads_finite([p for _, p in named]):
        return None
    bad = [n for n, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    rows, width = shape
    return NonFinite(
        step=step,
        micro_batch=micro_batch,
        micro_batches=micro_batches,
        forward_finite=forward_finite,
        first_nonfinite_grad=bad[-1] if bad else None,
        nonfinite_grads=len(bad),
        trainable=len(named),
        rows=rows,
        width=width,
        width_mod_128=width % 128,
        sdpa_backends=backends,
    )
