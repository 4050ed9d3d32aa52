"""Our own decode loop for greedy and beam requests: one prefill per prompt, static shapes, CUDA graphs.

`model.generate` spends 20-40 ms of Python and kernel launches per token on a 0.5B model whose weights take a
tenth of a millisecond to read, and its beam search prefills every prompt once per beam. `DecodeLoop` runs
the model's own forward (so the stacked LoRA and 4-bit layers are used unchanged): one prefill of the B
left-padded prompt rows, their KV copied into a static cache of B x beams rows (the beams of a prompt share
its prefix), then one step per token over fixed buffers (token ids, positions, an attention mask filled in
place, the cache reordered in place), so that on CUDA a step is one replay of a CUDA graph captured per
(rows bucket, cache length bucket, beams or not, LoRA mask or not). Choosing tokens is `models.search`
(greedy, and transformers' beam search on the device); a line end (`LineEnds`) finishes a hypothesis just as
EOS does. The host reads one flag per step, a step late, so it never waits for the step it has just queued.

Shapes are bucketed, because on CUDA a new shape costs a capture (0.3-0.4 s on an H200: 50-80 replayed steps)
while a longer cache or a few more rows cost a launch-bound step on a small model next to nothing. The cache
length and the prompt rows are each rounded up to `bucket`'s ladder of powers of two and their midpoints (1,
2, 3, 4, 6, 8, 12, ...; lengths from `min_length`, 256): prompts of 257 to 8192 tokens meet 10 lengths
instead of 124 multiples of 64, and batches of 1 to 16 questions of 6 prompt rows meet 7 row counts instead
of 16. Plain powers of two would make a few shapes fewer but overshoot each dimension by up to 2x instead of
1.5x, and every step reads (with beams, copies) its whole cache: for a large batch (96 prompt rows x 3 beams
at ~1.1k tokens, ~4 GB of KV in a 0.5B model) up to 4x instead of 2.25x the memory and traffic.
Only the decode state is padded: the prefill runs the real rows, each padding row copies prompt 0's KV, mask
and positions (nothing fully masked, so no NaN) and runs under no adapter, and the searches keep padding rows
out of their stop logic and their results (`real`). `warm_up` decodes dummy prompts through `decode` so that
a server captures the shapes it will meet first before it says it is ready.

It does not sample (sampled requests stay on `generate`), tokenize, or choose adapters: the generator does,
and this loop only asks its `StackedLora` for the rows' mask (`set_rows`, a persistent buffer per row count).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

from models.decoding import LineEnds
from models.multi_lora import StackedLora
from models.search import BeamSearch, Decoded, Greedy, Stops

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2
"""Eager steps on a side stream before a capture (PyTorch's recipe)."""
WARMUP_NEW_TOKENS = 2
"""New tokens of a warm-up decode: the second is the one step that builds (and on CUDA captures) the state."""
MIN_LENGTH = 256
"""The shortest cache length bucket: shorter prompts are rare for QA over a context, and free to pad."""


def bucket(n: int, floor: int = 1) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3 x 2^(k-1)) that is >= `n` and `floor`."""
    n = max(n, floor, 1)
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    midpoint = power // 4 * 3  # 1.5 x the power of two below
    return midpoint if midpoint >= n else power


@dataclass(frozen=True)
class WarmUp:
    """What `DecodeLoop.warm_up` did."""

    shapes: int
    """Decode states (buffers, and on CUDA a graph each) created."""
    captures: int
    """CUDA graphs captured (0 off CUDA or with graphs off)."""
    skipped: int
    """(batch, length) pairs left out because their state would not fit `cache_bytes` beside the others."""
    seconds: float
    """Wall time of the whole warm-up."""


class _State:
    """The fixed buffers of one shape (rows x cache length) and, once captured, the CUDA graph of its step."""

    def __init__(self, config: Any, rows: int, length: int, vocab: int, like: Any, beams: bool) -> None:
        keys, values = like.keys, like.values  # a prefill layer's [prompts, heads, width, dim]
        device, heads = keys.device, keys.shape[1]
        self.beams, self.graph, self.nbytes, self.length = beams, None, 0, length
        self.cache = StaticCache(config=config, max_cache_len=length)
        layers = len(self.cache.layers)
        # One tensor for every layer's keys (and one for values): a beam reorder is one copy, in place.
        self.keys = keys.new_zeros(layers, rows, heads, length, keys.shape[3])
        self.values = values.new_zeros(layers, rows, heads, length, values.shape[3])
        self.filled = torch.zeros(layers, dtype=torch.long, device=device)  # per layer: tokens cached
        for i, layer in enumerate(self.cache.layers):  # transformers' StaticLayer over our storage
            layer.keys, layer.values, layer.cumulative_length = self.keys[i], self.values[i], self.filled[i]
            layer.dtype, layer.device, layer.batch_size, layer.num_heads = keys.dtype, device, rows, heads
            layer.k_head_dim, layer.v_head_dim, layer.is_initialized = keys.shape[3], values.shape[3], True
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.source = torch.arange(rows, device=device)  # beams: the row each row continues
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.cursor = torch.zeros(1, dtype=torch.long, device=device)
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
        self.cursor.fill_(width)
        self.filled.fill_(width)


class DecodeLoop:
    """Greedy and beam decoding of a left-padded batch with the model's own forward (see the module doc).

    `cuda_graphs`: on CUDA, capture each shape's step once and replay it (eager when off or elsewhere);
    `cache_bytes`: bytes of the shapes kept (KV buffers, the beam reorder's copy, log-probabilities), least
    recently used out first; `min_length`: the shortest cache length bucket (lengths and prompt rows are
    rounded up `bucket`'s ladder, so similar batches share a shape and its graph).
    Not thread-safe: the generator's lock serialises calls.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: Sequence[int],
        stacked: StackedLora | None,
        cuda_graphs: bool = True,
        cache_bytes: int = 4 << 30,
        min_length: int = MIN_LENGTH,
    ) -> None:
        layers = StaticCache(config=model.config, max_cache_len=1).layers
        if any(type(layer) is not StaticLayer for layer in layers):
            raise ValueError("the decode loop needs a model whose layers all use full attention")
        self.model, self.stacked = model, stacked
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        self.cuda_graphs, self.cache_bytes, self.min_length = cuda_graphs, cache_bytes, min_length
        self._states: OrderedDict[tuple, _State] = OrderedDict()
        self._lora_version = stacked.version if stacked is not None else 0
        self.captures = 0
        """CUDA graphs captured so far (one per new shape)."""

    def clear(self) -> None:
        """Drop every shape's buffers and graph (out of memory, or the LoRA stacks changed)."""
        self._states.clear()

    def lengths(self, up_to: int) -> list[int]:
        """The cache length buckets, shortest first, up to the one that holds `up_to` tokens."""
        last, found = bucket(up_to, self.min_length), [bucket(1, self.min_length)]
        while found[-1] < last:
            found.append(bucket(found[-1] + 1, self.min_length))
        return found

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        adapters: Sequence[str | None],
        *,
        max_new_tokens: int,
        num_beams: int,
        num_return_sequences: int,
        min_new_tokens: int = 0,
        line_ends: LineEnds | None = None,
    ) -> Decoded:
        """Per prompt row `num_return_sequences` outputs (1 when greedy); `line_ends` also stops at the end
        of the answer's first non-empty line; EOS is impossible before `min_new_tokens` tokens."""
        prompts, k, width, device = input_ids.shape[0], num_beams, max_new_tokens, input_ids.device
        rows = bucket(prompts) if width > 1 else prompts  # the decode state's prompts, padding included
        with torch.inference_mode():
            self._set_rows(adapters, 1)
            prefill = DynamicCache(config=self.model.config)
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=prefill,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)
            del logits
            if rows > prompts:  # padding prompts start as copies of prompt 0, as `_State.load` makes them
                log_probs = torch.cat((log_probs, log_probs[:1].expand(rows - prompts, -1)))
            stops = Stops(self.eos, log_probs.shape[-1], line_ends, device)
            if k > 1:
                keep = max(2, 1 + len(self.eos)) * k  # as transformers: enough for k to run on past EOS
                search: Greedy | BeamSearch = BeamSearch(rows, k, keep, width, stops, device, real=prompts)
                log_probs = log_probs.repeat_interleave(k, dim=0)
            else:
                search = Greedy(rows, width, stops, device, real=prompts)
            tokens, source = search.choose(0, log_probs, min_new_tokens > 0)
            if width > 1:
                if k > 1 or rows > prompts:  # padding prompts run under no adapter
                    self._set_rows([*adapters, *[None] * (rows - prompts)], k)
                state = self._state(rows * k, input_ids.shape[1] + width, log_probs.shape[-1], prefill, k > 1)
                state.load(prefill, attention_mask, k)
                del prefill
                self._steps(state, search, tokens, source, width, min_new_tokens)
            return search.result(num_return_sequences)

    def warm_up(
        self, batches: Sequence[tuple[Sequence[str | None], int]], *, max_length: int, token_id: int = 0
    ) -> WarmUp:
        """Create the shapes of `batches` (each: every prompt row's adapter, and the beams) for every cache
        length bucket up to the one of `max_length` tokens, by decoding dummy prompts of `token_id` through
        `decode`, the path requests take. Shortest lengths first; from its second length on, a batch stops
        where its state (its last one's bytes per position x the length) would push another out of
        `cache_bytes`."""
        started, captures, before = time.perf_counter(), self.captures, set(self._states)
        lengths = self.lengths(max_length)
        per_position: dict[int, float] = {}  # batch -> bytes per cache position of its last state
        skipped = 0
        for length, shorter in zip(lengths, [0, *lengths[:-1]], strict=True):
            prompt = max(1, shorter + 1 - WARMUP_NEW_TOKENS)  # the shortest prompt this bucket holds
            for i, (adapters, beams) in enumerate(batches):
                held = sum(s.nbytes for s in self._states.values())
                if i in per_position and held + per_position[i] * length > self.cache_bytes:
                    skipped += 1
                    continue
                ids = torch.full(
                    (len(adapters), prompt), token_id, dtype=torch.long, device=self.model.device
                )
                self.decode(
                    ids,
                    torch.ones_like(ids),
                    adapters,
                    max_new_tokens=WARMUP_NEW_TOKENS,
                    num_beams=beams,
                    num_return_sequences=1,
                )
                state = next(reversed(self._states.values()))  # the one this decode used
                per_position[i] = state.nbytes / state.length
        return WarmUp(
            shapes=len(set(self._states) - before),
            captures=self.captures - captures,
            skipped=skipped,
            seconds=time.perf_counter() - started,
        )

    def _steps(self, state: _State, search: Any, tokens: Any, source: Any, width: int, min_new: int) -> None:
        flag = _LateFlag(state.tokens.device)
        flag.push(search.halted)
        for t in range(1, width):
            state.tokens.copy_(tokens.view(-1, 1))
            if source is not None:
                state.source.copy_(source)
            if state.graph is not None:
                state.graph.replay()
            else:
                self._step(state)
            if flag.pop():  # the search had already ended before this step
                return
            tokens, source = search.choose(t, state.log_probs, t < min_new)
            flag.push(search.halted)

    def _step(self, state: _State) -> None:
        """One decode step over the state's buffers: what a CUDA graph captures (no host syncs, no branches
        on tensor values, every input and output at a fixed address)."""
        if state.beams:
            state.keys.copy_(state.keys.index_select(1, state.source))
            state.values.copy_(state.values.index_select(1, state.source))
        state.mask.index_fill_(1, state.cursor, True)
        logits = self.model(
            input_ids=state.tokens,
            attention_mask=state.mask,
            position_ids=state.positions,
            past_key_values=state.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        state.log_probs.copy_(torch.log_softmax(logits[:, -1].float(), dim=-1))
        state.cursor.add_(1)
        state.positions.add_(1)

    def _set_rows(self, adapters: Sequence[str | None], repeat: int) -> None:
        if self.stacked is not None:
            self.stacked.set_rows(adapters, repeat=repeat)

    def _state(self, rows: int, needed: int, vocab: int, prefill: Any, beams: bool) -> _State:
        version = self.stacked.version if self.stacked is not None else 0
        if version != self._lora_version:  # new LoRA stacks: the graphs read the old ones' memory
            self.clear()
            self._lora_version = version
        length = bucket(needed, self.min_length)
        with_lora = self.stacked is not None and self.stacked.rows.mask is not None
        key = (rows, length, beams, with_lora)
        state = self._states.pop(key, None)
        if state is None:
            first = prefill.layers[0]
            per_token = sum(t.shape[1] * t.shape[3] * t.element_size() for t in (first.keys, first.values))
            nbytes = len(prefill.layers) * per_token * rows * length * (2 if beams else 1)  # + reorder copy
            nbytes += 2 * rows * vocab * 4  # the log-probabilities, and the float logits of a captured step
            while self._states and sum(s.nbytes for s in self._states.values()) + nbytes > self.cache_bytes:
                self._states.popitem(last=False)
            state = _State(self.model.config, rows, length, vocab, first, beams)
            state.nbytes = nbytes
            if self.cuda_graphs and state.keys.device.type == "cuda":
                self._capture(state)
        self._states[key] = state
        return state

    def _capture(self, state: _State) -> None:
        """Warm up on a side stream, then capture one step (PyTorch's recipe). The state's contents are
        garbage afterwards; `load` sets everything a step reads."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._step(state)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._step(state)
        except torch.cuda.OutOfMemoryError:
            raise  # the generator frees what it can and splits the batch
        except Exception as exc:  # noqa: BLE001 - e.g. a layer that syncs with the host: step eagerly
            logger.warning("decode loop: CUDA graph capture failed, stepping eagerly (%s)", exc)
            self.cuda_graphs = False
            return
        state.graph = graph
        self.captures += 1


class _LateFlag:
    """A device flag read one step late: the host waits for the step before the one it has just queued."""

    def __init__(self, device: torch.device) -> None:
        self.event = torch.cuda.Event() if device.type == "cuda" else None
        self.host = torch.zeros((), dtype=torch.bool, pin_memory=self.event is not None)

    def push(self, flag: torch.Tensor) -> None:
        self.host.copy_(flag, non_blocking=self.event is not None)
        if self.event is not None:
            self.event.record()

    def pop(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return bool(self.host)
