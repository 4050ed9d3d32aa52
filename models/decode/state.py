"""The fixed buffers of one decode-loop shape: a decode state (KV slots, tokens, mask) and a prefill (padded
prompts), each with the CUDA graph `models.decode.loop.DecodeLoop` captures over them, and the KV cache a
step's forward writes through."""

from __future__ import annotations

from typing import Any

import torch
from transformers import StaticCache


class DecodeState:
    """The fixed buffers of one shape (rows x cache length) and, once captured, the CUDA graph of its step."""

    def __init__(
        self,
        config: Any,
        rows: int,
        length: int,
        generated: int,
        vocab: int,
        like: Any,
        beams: bool,
        attention_kernel: bool = False,
    ) -> None:
        keys, values = like.keys, like.values  # a prefill layer's [prompts, heads, width, dim]
        device, heads, layers = keys.device, keys.shape[1], config.num_hidden_layers
        self.beams, self.graph, self.nbytes, self.length = beams, None, 0, length
        # One tensor for every layer's keys (and one for values). Prompts fill the slots from 0, new
        # tokens the last `generated` ones: the beams of a prompt share its prompt slots, so a beam reorder
        # copies only the new tokens' slots (a fixed slice, in place), not the whole cache.
        self.keys = keys.new_zeros(layers, rows, heads, length, keys.shape[3])
        self.values = values.new_zeros(layers, rows, heads, length, values.shape[3])
        self.first_new = length - generated
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.source = torch.arange(rows, device=device)  # beams: the row each row continues
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.cursor = torch.zeros(1, dtype=torch.long, device=device)  # the cache slot this step writes
        self.cache = StepCache(config, self.keys, self.values, self.cursor, attention_kernel)
        self.log_probs = torch.zeros(rows, vocab, device=device)

    def load(self, prefill: Any, prompt_mask: torch.Tensor, beams: int) -> None:
        """The prompts' KV, mask and next positions, each prompt's row repeated for its beams; the padding
        prompts past the real ones copy prompt 0 (a real row's values: finite, never fully masked)."""
        real, width = prompt_mask.shape
        layers, rows, heads, length, _ = self.keys.shape
        prompts = rows // beams
        rows_of = torch.arange(prompts, device=prompt_mask.device)
        rows_of[real:] = 0
        for ours, key in ((self.keys, "keys"), (self.values, "values")):
            theirs = torch.stack([getattr(layer, key) for layer in prefill.layers])
            if prompts > real:
                theirs = theirs.index_select(1, rows_of)
            ours.view(layers, prompts, beams, heads, length, -1)[:, :, :, :, :width].copy_(theirs[:, :, None])
        prompt_mask = prompt_mask.bool().index_select(0, rows_of)
        self.mask.zero_()
        self.mask.view(prompts, beams, length)[:, :, :width].copy_(prompt_mask[:, None])
        self.positions.view(prompts, beams).copy_(prompt_mask.sum(dim=1)[:, None])
        self.cursor.fill_(self.first_new)


class PrefillState:
    """The fixed buffers of one prefill shape (prompt rows x width bucket) and, once captured, its CUDA graph.

    An eager forward of a 0.5B model costs ~40 ms of Python and launches whatever its length (a prefill of
    one 650-token prompt took 65 ms on an H200), so prompts are left-padded to a width bucket and the prompt
    rows to a row bucket, and on CUDA the forward is replayed from a graph like a step. The padding rows
    repeat row 0 (finite values; their candidates are dropped); the 4-D mask is causal over each row's real
    tokens, and every padding position also attends to itself, so that no row of SDPA is fully masked."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        self.rows, self.width, self.graph, self.nbytes = rows, width, None, 0
        self.ids = torch.zeros(rows, width, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, width, dtype=torch.long, device=device)
        self.causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        self.itself = torch.eye(width, dtype=torch.bool, device=device)
        self.log_probs: torch.Tensor | None = None
        self.cache: Any = None  # the forward's DynamicCache: in a graph, its tensors are the graph's outputs

    def fill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        real, width = input_ids.shape
        self.ids.zero_()
        self.mask.zero_()
        self.ids[:real, self.width - width :].copy_(input_ids)
        self.mask[:real, self.width - width :].copy_(attention_mask)
        if self.rows > real:
            self.ids[real:].copy_(self.ids[:1].expand(self.rows - real, -1))
            self.mask[real:].copy_(self.mask[:1].expand(self.rows - real, -1))


class StepCache(StaticCache):
    """The KV cache a decode step's forward sees: every layer writes its one new token's keys and values at
    `cursor` in the state's stacked tensors, and attends over its whole slice (the mask hides the unfilled
    slots). Two operators a layer instead of a static layer's five, and the stacked tensors are the only
    cache tensors a compiled step takes (transformers' layers would each hold a view of them: inputs that
    alias each other, which TorchDynamo's dynamic shapes do not take).

    `attention_kernel`: the attention modules `models.decode.fast_paths` prepared write the new token
    themselves, with rotary and attention, in `models.kernels.attention_kernel` (where it serves), instead of
    calling
    `update`."""

    def __init__(
        self,
        config: Any,
        keys: torch.Tensor,
        values: torch.Tensor,
        cursor: torch.Tensor,
        attention_kernel: bool = False,
    ) -> None:
        super().__init__(config=config, max_cache_len=keys.shape[3])
        self.keys, self.values, self.cursor = keys, values, cursor
        self.attention_kernel = attention_kernel

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.cursor, key_states)
        values.index_copy_(2, self.cursor, value_states)
        return keys, values
