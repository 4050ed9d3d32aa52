"""One matmul for sibling projections: the base weights of q/k/v (or gate/up) concatenated by output.

Projections that read the same input (q/k/v of an attention, gate/up of an MLP) are three (two) kernels a
layer where one would do: a small model's decode step costs about one launch per operator
(`bench/step_ops.py`), and the base projections are the one part of it `torch.compile` cannot fuse. `fuse`
concatenates their weights (and biases) along the output dimension and points each member's own parameters
at its rows of the result, so the fused layer costs no second copy of the weights and every member still
works on its own (peft, `generate`, saving).

A bitsandbytes 4-bit weight is packed blockwise over its flattened rows, so two such weights concatenate
exactly when no block straddles them (each member's size a multiple of the block size): the packed bytes
concatenate as they are, and so do the per-block scales once a double-quantised (nested) state's 8-bit
scales are expanded to float32, the one thing that cannot be concatenated (each member has its own offset).
That costs 4 bytes a block (64 weights): ~0.5 MB a layer of the 0.5B model. Layers of any other kind, or
that disagree on dtype, device, input size or quantisation, are not fused (`fuse` returns None), and their
members run their own base layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FusedLinear:
    """The concatenated base of sibling projections: `self(x)` is every member's base output, side by side."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], spans: list[tuple[int, int]]) -> None:
        self._forward = forward
        self.spans = spans
        """Each member's (start, end) columns of the output, in the members' order."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def fuse(layers: Sequence[nn.Module]) -> FusedLinear | None:
    """Concatenate `layers`' weights (members' parameters become views into the result), or None."""
    if len(layers) < 2 or len({getattr(layer, "in_features", None) for layer in layers}) != 1:
        return None
    if all(type(layer).__name__ == "Linear4bit" for layer in layers):
        return _fuse_4bit(layers)
    if all(type(layer) is nn.Linear for layer in layers):
        return _fuse_plain(layers)
    return None


def _spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    return spans


def _same(values: Sequence[object]) -> bool:
    return all(value == values[0] for value in values)


def _concat_into(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor holding `params` one after another along dim 0; each param's data becomes its view."""
    fused = torch.cat([p.data.reshape(p.shape[0], -1) for p in params])
    start = 0
    for p in params:
        p.data = fused[start : start + p.shape[0]].view(p.shape)
        start += p.shape[0]
    return fused


def _biases(layers: Sequence[nn.Module]) -> tuple[bool, torch.Tensor | None]:
    """(fusable, the concatenated bias): every member has a bias of one dtype, or none has."""
    biases = [layer.bias for layer in layers]
    if all(b is None for b in biases):
        return True, None
    if any(b is None for b in biases) or not _same([b.dtype for b in biases]):
        return False, None
    return True, _concat_into(biases).view(-1)


def _fuse_plain(layers: Sequence[nn.Module]) -> FusedLinear | None:
    weights = [layer.weight for layer in layers]
    if not _same([(w.dtype, w.device) for w in weights]):
        return None
    ok, bias = _biases(layers)
    if not ok:
        return None
    weight = _concat_into(weights)
    spans = _spans([w.shape[0] for w in weights])
    return FusedLinear(lambda x: F.linear(x, weight, bias), spans)


def _fuse_4bit(layers: Sequence[nn.Module]) -> FusedLinear | None:
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState

    weights = [layer.weight for layer in layers]
    states = [getattr(w, "quant_state", None) for w in weights]
    if any(s is None or getattr(s, "packing_format_for_cpu", False) for s in states):
        return None  # not quantised yet, or repacked for bitsandbytes' CPU kernel: not the blockwise layout
    first = states[0]
    if not (
        _same([(s.blocksize, s.quant_type, s.dtype, int(s.shape[1])) for s in states])
        and _same([(w.dtype, w.device) for w in weights])
        and weights[0].dtype == torch.uint8
        and all(torch.equal(s.code, first.code) for s in states)
        and all(s.shape[0] * s.shape[1] % s.blocksize == 0 for s in states)  # no block straddles two
        and _same([layer.compute_dtype for layer in layers])
    ):
        return None
    ok, bias = _biases(layers)
    if not ok:
        return None
    compute_dtype = layers[0].compute_dtype
    if bias is not None and compute_dtype is not None:
        bias = bias.to(compute_dtype)  # as Linear4bit casts it on every call
    absmax = torch.cat([_absmax(s) for s in states])
    packed = _concat_into(weights)
    sizes = [int(s.shape[0]) for s in states]
    state = QuantState(
        absmax=absmax,
        shape=torch.Size([sum(sizes), int(first.shape[1])]),
        code=first.code,
        blocksize=first.blocksize,
        quant_type=first.quant_type,
        dtype=first.dtype,
    )

    def forward(x: torch.Tensor) -> torch.Tensor:  # Linear4bit.forward's arithmetic, on the whole block
        dtype = x.dtype
        if compute_dtype is not None:
            x = x.to(compute_dtype)
        return bnb.matmul_4bit(x, packed.t(), quant_state=state, bias=bias).to(dtype)

    return FusedLinear(forward, _spans(sizes))


def _absmax(state: object) -> torch.Tensor:
    """A 4-bit state's per-block scales in float32 (a nested state's 8-bit scales expanded, as bitsandbytes
    does before dequantising)."""
    if not state.nested:
        return state.absmax.float()
    from bitsandbytes.functional import dequantize_blockwise

    absmax = dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset
    return absmax.float()
