"""Our own decode loop for greedy and beam requests: one prefill per prompt, static shapes, CUDA graphs.

`model.generate` spends 20-40 ms of Python and kernel launches per token on a 0.5B model whose weights take a
tenth of a millisecond to read, and its beam search prefills every prompt once per beam. `DecodeLoop` runs
the model's own forward (so the stacked LoRA and 4-bit layers are used unchanged): one prefill of the B
left-padded prompt rows, their KV copied into a static cache of B x beams rows (the beams of a prompt share
its prefix), then one step per token over fixed buffers (token ids, positions, an attention mask filled in
place, the cache reordered in place), so that on CUDA a step is one replay of a CUDA graph captured per
(rows bucket, cache length bucket, beams or not, LoRA mask or not). Choosing tokens is `models.decode.search`
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
Off CUDA graphs the prefill runs the real rows, each prompt alone and unpadded on the CPU (`_prefill_each`:
padding and a mask cost more there than batching saves), and each padding row of the decode state copies
prompt 0's KV, mask and positions (nothing fully masked, so no NaN) and runs under no adapter. On CUDA the
prefill too is padded to a shape (prompt rows, width on the ladder from `MIN_PROMPT`: `PrefillState`) and
replayed from a graph (up to `PREFILL_GRAPH_TOKENS`; a larger one runs as it is), because an eager forward
costs ~40 ms of launches whatever its length (measured: a 650-token greedy prefill went from 65 to 9 ms). The
searches keep padding rows out of their stop logic and their results (`real`). `warm_up` decodes dummy
prompts through `decode` so that a server captures the shapes it will meet first before it says it is ready.

Within a state the prompts fill the cache from slot 0 and new tokens its last slots (`MIN_GENERATED` or
more), so that a beam reorder copies only the new tokens' slots: the beams of a prompt share its prompt
slots. The step's forward gets its 4-D mask ready made (one query token: the padding mask is all of it),
writes its KV through `models.decode.state.StepCache` (two operators a layer), and attends with
`models.decode.fast_paths.grouped_sdpa` (no copy of the cache per query head; RMSNorm runs as one operator
too). With `compile_backend` the step is compiled by torch.compile (inductor fuses each chain of small
operators into one kernel; the 4-bit matmul stays bitsandbytes' operator) and the CUDA graph captures the
compiled kernels; shapes after the first recompile once as dynamic (TorchDynamo's automatic dynamic shapes),
not once each.

The last decode's prefill (its KV, padding mask and next-token log-probabilities) is kept until the next one
(`kept`), so that a likelihood vote scores candidate answers behind those prompts with one forward of the
short candidates alone (`score_tails`) instead of prefilling the prompts again, and a decode of the very same
batch (the same ids, mask and adapters: a batch's greedy pass right after its beam pass) starts from it
instead of prefilling again (`reused` counts those); the KV is the same either way, so are the outputs.

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

from models.adapters.multi_lora import StackedLora
from models.decode.fast_paths import use_fast_paths
from models.decode.line_ends import LineEnds
from models.decode.search import BeamSearch, Decoded, Greedy, Stops
from models.decode.state import DecodeState, PrefillState
from models.decode.teacher_forcing import Tails, additive_mask, mask_dtype, sum_logprobs

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2
"""Eager steps on a side stream before a capture (PyTorch's recipe)."""
WARMUP_NEW_TOKENS = 2
"""New tokens of a warm-up decode: the second is the one step that builds (and on CUDA captures) the state."""
MIN_LENGTH = 256
"""The shortest cache length bucket: shorter prompts are rare for QA over a context, and free to pad."""
MIN_PROMPT = 64
"""The narrowest prefill width bucket."""
PREFILL_GRAPH_TOKENS = 16384
"""Largest prefill (rows x width) captured as a CUDA graph: above it the launches are amortised over enough
tokens, and a graph's activations would hold too much memory."""
MIN_CACHE_BYTES = 4 << 30
"""The least memory kept for shapes by default (a 16-question chunk of the 0.5B ensemble: 4-6 GB a shape)."""
MIN_GENERATED = 32
"""The fewest cache slots kept for new tokens (more on `bucket`'s ladder for longer budgets): every budget up
to it (the service's 24, warm-up's 2) meets the same shapes."""


def bucket(n: int, floor: int = 1) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3 x 2^(k-1)) that is >= `n` and `floor`."""
    n = max(n, floor, 1)
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    midpoint = power // 4 * 3  # 1.5 x the power of two below
    return midpoint if midpoint >= n else power


@dataclass(frozen=True)
class KeptPrefill:
    """The last decode's prefill, kept until the next one: what `DecodeLoop.score_tails` scores on."""

    cache: Any
    """The prompts' DynamicCache (under CUDA graphs the prefill shape's buffers: valid until reused)."""
    mask: torch.Tensor
    """[prompts, width] the padding mask of the real prompt rows."""
    log_probs: torch.Tensor
    """[prompts, vocab] each prompt's next-token log-probabilities (a copy: the search may not touch it)."""
    version: int
    """`DecodeLoop.prefills` when it was made: a later prefill may have overwritten the buffers."""
    ids: torch.Tensor | None = None
    """[prompts, width] the batch it was made of (ids, ``padding`` its 2-D mask as given, ``adapters`` the
    row adapters): a decode of the very same batch starts from it (`DecodeLoop.decode`)."""
    padding: torch.Tensor | None = None
    adapters: tuple[str | None, ...] = ()
    static: bool = False
    """Padded to a shape bucket (`PrefillState`): a decode that would pad it so too starts from it."""


@dataclass(frozen=True)
class WarmUp:
    """What `DecodeLoop.warm_up` did."""

    shapes: int
    """Decode states and prefills (buffers, and on CUDA a graph each) created."""
    captures: int
    """CUDA graphs captured (0 off CUDA or with graphs off)."""
    skipped: int
    """(batch, length) pairs left out because their state would not fit `cache_bytes` beside the others."""
    seconds: float
    """Wall time of the whole warm-up."""


class DecodeLoop:
    """Greedy and beam decoding of a left-padded batch with the model's own forward (see the module doc).

    `cuda_graphs`: on CUDA, capture each shape's step once and replay it (eager when off or elsewhere);
    `cache_bytes`: bytes of the shapes kept (KV buffers, the beam reorder's copy, log-probabilities), least
    recently used out first (a quarter of it for prefills); None: a fifth of the device's memory on CUDA, at
    least `MIN_CACHE_BYTES`, else `MIN_CACHE_BYTES`; `min_length`: the shortest cache length bucket (lengths
    and prompt rows are rounded up `bucket`'s ladder, so similar batches share a shape and its graph);
    `attention_kernel`: a step's rotary, cache write and attention in `models.kernels.attention_kernel` where
    it serves (CUDA). Not thread-safe: the generator's lock serialises calls.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: Sequence[int],
        stacked: StackedLora | None,
        cuda_graphs: bool = True,
        cache_bytes: int | None = None,
        min_length: int = MIN_LENGTH,
        compile_backend: str | None = None,
        attention_kernel: bool = True,
    ) -> None:
        layers = StaticCache(config=model.config, max_cache_len=1).layers
        if any(type(layer) is not StaticLayer for layer in layers):
            raise ValueError("the decode loop needs a model whose layers all use full attention")
        use_fast_paths(model)  # grouped SDPA, RMSNorm as one operator, the attention kernel (CUDA)
        self.model, self.stacked = model, stacked
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        if cache_bytes is None:
            device = model.device
            total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
            cache_bytes = max(MIN_CACHE_BYTES, total // 5)
        self.cuda_graphs, self.cache_bytes, self.min_length = cuda_graphs, cache_bytes, min_length
        self.attention_kernel = attention_kernel
        self._states: OrderedDict[tuple, DecodeState] = OrderedDict()
        self._prefills: OrderedDict[tuple, PrefillState] = OrderedDict()  # by (rows, width, LoRA or not)
        self._prefill_graphs, self._graph_pool = True, None
        self.static_prefill: bool | None = None
        """Prefill padded to shape buckets (a graph each on CUDA): None = where CUDA graphs are on."""
        self.prefill_alone: bool | None = None
        """Prefill each prompt of an unpadded (eager) batch alone, its KV then left-padded into the batch's:
        None = off CUDA (see `_prefill_each`)."""
        self._lora_version = stacked.version if stacked is not None else 0
        # torch.compile of the step (no CUDA graphs of its own: the graph captured here replays its kernels)
        # fuses each chain of small operators (RMSNorm, rotary, the LoRA mask, SiLU x up) into one kernel.
        self._run_step = (
            torch.compile(self._step, backend=compile_backend, dynamic=None)
            if compile_backend is not None
            else self._step
        )
        self.captures = 0
        """CUDA graphs captured so far (one per new shape)."""
        self.prefills = 0
        """Prefills run so far (warm-up's too): the version of `kept`."""
        self.kept: KeptPrefill | None = None
        self.reused = 0
        """Decodes that started from the kept prefill instead of prefilling again."""

    def clear(self) -> None:
        """Drop every shape's buffers and graph (out of memory, or the LoRA stacks changed)."""
        self._states.clear()
        self._prefills.clear()
        self.kept = None

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
        static = self._static_prefill(bucket(prompts), input_ids.shape[1], device)
        rows = bucket(prompts) if width > 1 or static else prompts  # prompts in the state, padding included
        with torch.inference_mode():
            self._check_lora_version()
            kept = self._same_batch(input_ids, attention_mask, adapters, static)
            if kept is not None:  # the very batch just prefilled: its KV as it is
                self._set_rows(adapters, 1)
                prefill, prompt_mask, log_probs = kept.cache, kept.mask, kept.log_probs.clone()
                if rows > prompts:
                    log_probs = torch.cat((log_probs, log_probs[:1].expand(rows - prompts, -1)))
                self.reused += 1
            elif static:  # padded to a shape bucket; on CUDA replayed from a graph
                self._set_rows([*adapters, *[None] * (rows - prompts)], 1)
                pre = self._prefill(input_ids, attention_mask, rows)
                prefill, log_probs, prompt_mask = pre.cache, pre.log_probs, pre.mask
            else:
                if prompts > 1 and self._alone(device):
                    prefill, log_probs = self._prefill_each(input_ids, attention_mask, adapters)
                    self._set_rows(adapters, 1)
                else:
                    self._set_rows(adapters, 1)
                    prefill, log_probs = self._prefill_forward(input_ids, attention_mask)
                prompt_mask = attention_mask
                # padding prompts start as copies of prompt 0, as `DecodeState.load` makes them
                if rows > prompts:
                    log_probs = torch.cat((log_probs, log_probs[:1].expand(rows - prompts, -1)))
            if kept is None:
                self.prefills += 1
                self.kept = KeptPrefill(
                    prefill,
                    prompt_mask[:prompts],
                    log_probs[:prompts].clone(),
                    self.prefills,
                    input_ids,
                    attention_mask,
                    tuple(adapters),
                    static,
                )
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
                state = self._state(
                    rows * k, prompt_mask.shape[1], width, log_probs.shape[-1], prefill, k > 1
                )
                state.load(prefill, prompt_mask, k)
                del prefill
                self._steps(state, search, tokens, source, width, min_new_tokens)
            return search.result(num_return_sequences)

    def _same_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        adapters: Sequence[str | None],
        static: bool,
    ) -> KeptPrefill | None:
        """The kept prefill, when it was made of exactly this batch (ids, padding, row adapters, padded to a
        shape or not) and nothing has been prefilled since (the LoRA stacks unchanged: `_check_lora_version`
        drops it otherwise)."""
        kept = self.kept
        if kept is None or kept.ids is None or kept.padding is None or kept.version != self.prefills:
            return None
        if kept.static != static:
            return None
        if tuple(adapters) != kept.adapters or kept.ids.shape != input_ids.shape:
            return None
        if not (torch.equal(kept.ids, input_ids) and torch.equal(kept.padding, attention_mask)):
            return None
        return kept

    def score_tails(
        self, rows: Sequence[int], tails: Tails, adapters: Sequence[str | None]
    ) -> list[list[float]]:
        """`models.decode.teacher_forcing`'s sums for continuations behind prompts of the last decode (`kept`;
        `rows` index its prompts, `adapters` are theirs), without a second prefill: one forward of the tails
        alone over a copy of those rows' prompt KV, the first tokens scored from the kept log-probabilities.
        """
        kept = self.kept
        if kept is None:
            raise RuntimeError("no prefill is kept (nothing decoded since the last clear)")
        device = kept.mask.device
        index = torch.tensor(list(rows), device=device)
        mask = kept.mask.index_select(0, index).bool()
        count, width = mask.shape
        cache = DynamicCache(config=self.model.config)
        for layer_idx, layer in enumerate(kept.cache.layers):
            cache.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
        allowed = torch.cat(
            (mask[:, None, :].expand(count, tails.width, width), tails.allowed.to(device)), dim=2
        )
        with torch.inference_mode():
            self._set_rows(adapters, 1)
            logits = self.model(
                input_ids=tails.ids.to(device),
                attention_mask=additive_mask(allowed, mask_dtype(self.model)),
                position_ids=mask.sum(dim=1, keepdim=True) + tails.offsets.to(device),
                past_key_values=cache,
                use_cache=True,
            ).logits
        return sum_logprobs(tails, kept.log_probs.index_select(0, index), logits)

    def warm_up(
        self, batches: Sequence[tuple[Sequence[str | None], int]], *, max_length: int, token_id: int = 0
    ) -> WarmUp:
        """Create the shapes of `batches` (each: every prompt row's adapter, and the beams) for every prompt
        width bucket (prefills padded to shapes: on CUDA) or else every cache length bucket up to the one of
        `max_length` tokens, by decoding dummy prompts of `token_id` through `decode`, the path requests
        take. Shortest first; from its second length on, a batch stops
        where its state (its last one's bytes per position x the length) would push another out of
        `cache_bytes`."""
        started, captures = time.perf_counter(), self.captures
        before = {*self._states, *(("prefill", *key) for key in self._prefills)}
        generated = bucket(WARMUP_NEW_TOKENS, MIN_GENERATED)
        static = (
            self.static_prefill if self.static_prefill is not None else self._graphs_on(self.model.device)
        )
        if static:  # every prefill width bucket (each decides its cache length)
            prompts, width = [], MIN_PROMPT
            while width <= bucket(max_length - 1, MIN_PROMPT):
                prompts.append(width)
                width = bucket(width + 1, MIN_PROMPT)
        else:  # the shortest prompt of each cache length bucket (a request has at least one new token)
            lengths = self.lengths(max_length - 1 + generated)
            prompts = [max(1, shorter + 1 - generated) for shorter in [0, *lengths[:-1]]]
        per_position: dict[int, float] = {}  # batch -> bytes per cache position of its last state
        skipped = 0
        for prompt in prompts:
            length = bucket(bucket(prompt, MIN_PROMPT if static else 1) + generated, self.min_length)
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
        after = {*self._states, *(("prefill", *key) for key in self._prefills)}
        return WarmUp(
            shapes=len(after - before),
            captures=self.captures - captures,
            skipped=skipped,
            seconds=time.perf_counter() - started,
        )

    def _prefill_forward(
        self, input_ids: torch.Tensor, padding: torch.Tensor, ready: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor]:
        """The prompts' forward: their KV cache and each row's next-token log-probabilities. `padding` is
        the 2-D mask of real tokens (it gives the positions); `ready`, a 4-D mask built for this forward
        (else transformers builds one from `padding`)."""
        cache = DynamicCache(config=self.model.config)
        positions = (padding.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=padding if ready is None else {"full_attention": ready},
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        return cache, torch.log_softmax(logits[:, -1].float(), dim=-1)

    def _prefill_each(
        self, input_ids: torch.Tensor, padding: torch.Tensor, adapters: Sequence[str | None]
    ) -> tuple[Any, torch.Tensor]:
        """`_prefill_forward` of a padded batch, one prompt at a time: each prompt's real tokens alone (no
        padding, no mask: the causal fast path), under its own adapter, and their KV put back at the
        batch's real slots (zeros at the padding slots, which every later mask hides). Measured on a 2-core
        CPU (docs/benchmarks.md, "CPU path"): a padded prefill of 8 prompts ran at 58 tokens/s against 67
        for one prompt alone, and padding to the longest adds tokens besides; a QA prompt is hundreds of
        tokens, so one prompt is already a full matmul and batching the prefill buys nothing there. The
        positions are each real token's index among its row's, as in the padded forward: the same KV."""
        real = padding.bool()
        caches, log_probs = [], []
        for row, name in enumerate(adapters):
            ids = input_ids[row][real[row]][None]
            self._set_rows([name], 1)
            cache, row_log_probs = self._prefill_forward(ids, torch.ones_like(ids))
            caches.append(cache)
            log_probs.append(row_log_probs)
        batch = DynamicCache(config=self.model.config)
        for layer_idx in range(len(caches[0].layers)):
            like = caches[0].layers[layer_idx]
            keys, values = (
                t.new_zeros(len(caches), t.shape[1], input_ids.shape[1], t.shape[3])
                for t in (like.keys, like.values)
            )
            for row, cache in enumerate(caches):
                layer = cache.layers[layer_idx]
                keys[row][:, real[row]] = layer.keys[0]
                values[row][:, real[row]] = layer.values[0]
            batch.update(keys, values, layer_idx)
        return batch, torch.cat(log_probs)

    def _alone(self, device: torch.device) -> bool:
        return self.prefill_alone if self.prefill_alone is not None else device.type != "cuda"

    def _static_forward(self, pre: PrefillState) -> None:
        keep = (pre.mask[:, None, None, :] != 0) & pre.causal | pre.itself
        pre.cache, log_probs = self._prefill_forward(pre.ids, pre.mask, keep)
        if pre.log_probs is None:
            pre.log_probs = torch.empty_like(log_probs)
        pre.log_probs.copy_(log_probs)

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int) -> PrefillState:
        """The prompts through the prefill of their shape (made, and on CUDA captured, on first use)."""
        width = bucket(input_ids.shape[1], MIN_PROMPT)
        with_lora = self.stacked is not None and self.stacked.rows.mask is not None
        key = (rows, width, with_lora)
        pre = self._prefills.pop(key, None)
        new = pre is None
        if pre is None:
            pre = PrefillState(rows, width, input_ids.device)
        pre.fill(input_ids, attention_mask)  # a forward only reads them: a capture's warm-up runs on them too
        if new and self._prefill_graph_fits(rows, width, input_ids.device):
            if not self._capture(pre, lambda: self._static_forward(pre), shared_pool=True):
                self._prefill_graphs = False  # prefills run eagerly from now on
        if pre.graph is not None:
            pre.graph.replay()
        else:
            self._static_forward(pre)
        if not pre.nbytes:  # KV and log-probabilities it holds between calls
            assert pre.cache is not None and pre.log_probs is not None
            pre.nbytes = pre.log_probs.numel() * 4 + sum(
                t.numel() * t.element_size() for layer in pre.cache.layers for t in (layer.keys, layer.values)
            )
            while self._prefills and sum(p.nbytes for p in self._prefills.values()) + pre.nbytes > (
                self.cache_bytes // 4
            ):
                self._prefills.popitem(last=False)
        self._prefills[key] = pre
        return pre

    def _pool(self) -> Any:
        """One memory pool for every prefill graph: they never run at once, so their activations can share."""
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        return self._graph_pool

    def _static_prefill(self, rows: int, width: int, device: torch.device) -> bool:
        """Pad the prefill to its shape bucket? Where it is captured: a larger prefill is bound by compute,
        which padding would only add to."""
        if self.static_prefill is not None:
            return self.static_prefill
        return self._prefill_graph_fits(rows, bucket(width, MIN_PROMPT), device)

    def _prefill_graph_fits(self, rows: int, width: int, device: torch.device) -> bool:
        """Is a prefill of `rows` x `width` (a bucket) captured? CUDA graphs on, prefill captures not failed,
        at most `PREFILL_GRAPH_TOKENS`."""
        return self._graphs_on(device) and self._prefill_graphs and rows * width <= PREFILL_GRAPH_TOKENS

    def _graphs_on(self, device: torch.device) -> bool:
        return self.cuda_graphs and device.type == "cuda"

    def _check_lora_version(self) -> None:
        version = self.stacked.version if self.stacked is not None else 0
        if version != self._lora_version:  # new LoRA stacks: the graphs read the old ones' memory
            self.clear()
            self._lora_version = version

    def _steps(
        self, state: DecodeState, search: Any, tokens: Any, source: Any, width: int, min_new: int
    ) -> None:
        flag = LateFlag(state.tokens.device)
        flag.push(search.halted)
        for t in range(1, width):
            state.tokens.copy_(tokens.view(-1, 1))
            if source is not None:
                state.source.copy_(source)
            if state.graph is not None:
                state.graph.replay()
            else:
                self._run_step(state)
            if flag.pop():  # the search had already ended before this step
                return
            tokens, source = search.choose(t, state.log_probs, t < min_new)
            flag.push(search.halted)

    def _step(self, state: DecodeState) -> None:
        """One decode step over the state's buffers: what a CUDA graph captures (no host syncs, no branches
        on tensor values, every input and output at a fixed address)."""
        if state.beams:  # (views made here: a compiled step must not take inputs that alias each other)
            for stacked in (state.keys, state.values):
                slots = stacked[:, :, :, state.first_new :]
                slots.copy_(slots.index_select(1, state.source))
        state.mask.index_fill_(1, state.cursor, True)
        logits = self.model(
            input_ids=state.tokens,
            # One query token attends to every filled slot: the padding mask is the whole 4-D mask.
            attention_mask={"full_attention": state.mask[:, None, None, :]},
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

    def _state(self, rows: int, width: int, new: int, vocab: int, prefill: Any, beams: bool) -> DecodeState:
        generated = bucket(new, MIN_GENERATED)
        length = bucket(width + generated, self.min_length)
        with_lora = self.stacked is not None and self.stacked.rows.mask is not None
        key = (rows, length, generated, beams, with_lora)
        state = self._states.pop(key, None)
        if state is None:
            started, evicted = time.perf_counter(), 0
            first = prefill.layers[0]
            per_token = sum(t.shape[1] * t.shape[3] * t.element_size() for t in (first.keys, first.values))
            slots = length + (generated if beams else 0)  # + the beam reorder's copy of the new slots
            nbytes = len(prefill.layers) * per_token * rows * slots
            nbytes += 2 * rows * vocab * 4  # the log-probabilities, and the float logits of a captured step
            while self._states and sum(s.nbytes for s in self._states.values()) + nbytes > self.cache_bytes:
                self._states.popitem(last=False)
                evicted += 1
            state = DecodeState(
                self.model.config, rows, length, generated, vocab, first, beams, self.attention_kernel
            )
            state.nbytes = nbytes
            if self._graphs_on(state.keys.device):
                captured = self._capture(state, lambda: self._run_step(state))
                if not captured and self._run_step != self._step:  # first without torch.compile
                    logger.warning("decode loop: the compiled step failed to capture; stepping uncompiled")
                    self._run_step = self._step
                    captured = self._capture(state, lambda: self._run_step(state))
                if not captured:
                    self.cuda_graphs = False  # steps run eagerly from now on
            logger.info(  # a new shape costs a capture on CUDA: many of these under load mean thrashing
                "decode loop: new step shape, %d rows x %d slots%s, %.0f MB, %.2f s; %d evicted, %d kept "
                "(%.0f of %.0f MB)",
                rows,
                length,
                " (beams)" if beams else "",
                nbytes / 2**20,
                time.perf_counter() - started,
                evicted,
                len(self._states) + 1,
                (sum(s.nbytes for s in self._states.values()) + nbytes) / 2**20,
                self.cache_bytes / 2**20,
            )
        self._states[key] = state
        return state

    def _capture(self, target: DecodeState | PrefillState, run: Any, shared_pool: bool = False) -> bool:
        """Warm `run` up on a side stream, then capture it as `target.graph` (PyTorch's recipe); False when
        it cannot be captured (e.g. a layer that syncs with the host). The target's buffers hold garbage
        afterwards: a caller sets everything a replay reads."""
        try:
            pool = self._pool() if shared_pool else None
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                run()
        except torch.cuda.OutOfMemoryError:
            raise  # the generator frees what it can and splits the batch
        except Exception as exc:  # noqa: BLE001 - any failure to capture: run eagerly instead
            logger.warning("decode loop: CUDA graph capture of a %s failed (%s)", type(target).__name__, exc)
            return False
        target.graph = graph
        self.captures += 1
        return True


class LateFlag:
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
