"""Batched candidate generation: one decoding pass for a whole list of (prompt, adapter) rows.

`Generator` implements the `CandidateGenerator` protocol of `ensemble/pipeline.py` (built-in types in and
out). Every LoRA adapter stays resident on the one base model and each row names its adapter: with the
default stacked backend (`models.adapters.multi_lora`) through a per-row mask over all resident adapters'
stacked matrices, with `lora_backend="peft"` through peft's `adapter_names` (mixed-adapter batch); no request
ever switches the shared model's active adapter. Prompts are
left-padded, generation stops at EOS and, by default, at the end of the answer's first non-empty line (answers
are one line; the rest would be thrown away by `ensemble.clean` anyway). A lock serialises generation and
adapter changes, because the server calls from threads. This module does not choose prompts, decoding plans or
answers: that is `ensemble/`. On CUDA out-of-memory a batch is split in halves and retried
(`_generate_split`). Which adapters rows may name, which are on the model, and loading them (their weights
checked first) is `models.adapters.served.ServedAdapters`, called under the lock. With `decoder="loop"` greedy
and beam requests run through `models.decode.loop` (our own loop over the model's forward: one prefill per
prompt, a static cache, CUDA graphs) instead of `generate`; sampled requests always use `generate`; `warm_up`
makes the loop's shapes (its CUDA graphs) ahead of requests.
"""

import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import StoppingCriteriaList

from models.adapters.multi_lora import StackedLora
from models.adapters.registry import AdapterSpec
from models.adapters.residency import AdapterResidency
from models.adapters.served import ServedAdapters
from models.decode.checks import check_decoding
from models.decode.fast_paths import NAME as GROUPED_SDPA
from models.decode.hf_generate import PAD_MULTIPLE, compile_config, static_cache
from models.decode.line_ends import FirstLineDone, LineEnds
from models.decode.loop import DecodeLoop, WarmUp
from models.decode.teacher_forcing import end_of_answer_id, pack_tails, packed_logprobs
from models.errors import GenerationOutOfMemoryError, PromptTooLongError

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed batch (see peft's `LoraLayer._mixed_batch_forward`)."""
Prompt = str | list[dict[str, str]]
SCORE_TOKENS = 16384
"""Most tokens (rows x padded width) of one scoring forward: its 4-D mask and the tail's logits stay small."""
KEPT_SCORE_TOKENS = 4 * SCORE_TOKENS
"""The same over kept prefills: their forward runs the tails alone, the prompts' KV is only copied."""
SCORE_ATTENTION = frozenset({"sdpa", "eager", GROUPED_SDPA})
"""Attention implementations that take `models.decode.teacher_forcing`'s custom 4-D mask as it is."""


@dataclass(frozen=True)
class GenerationStats:
    """Totals since the generator was built (a snapshot): what the metrics export as rates."""

    calls: int = 0
    sequences: int = 0
    """Output sequences decoded (rows x outputs per row)."""
    new_tokens: int = 0
    """Tokens generated up to each sequence's stop (EOS or the end of its first line)."""
    seconds: float = 0.0
    """Wall time inside `generate` calls."""


class Generator:
    """A base model (and its resident LoRA adapters) that turns prompts into scored candidate answers."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_input_tokens: int | None = None,
        stop_at_newline: bool = True,
        max_resident_adapters: int | None = None,
        pinned_adapters: Sequence[str] = (),
        lora_backend: Literal["stacked", "peft"] = "stacked",
        compile_backend: str | None = None,
        decoder: Literal["auto", "hf", "loop"] = "hf",
        cuda_graphs: bool = True,
        decode_cache_bytes: int | None = None,
        lora_kernel: bool = True,
        attention_kernel: bool = True,
    ):
        self._tokenizer = tokenizer
        self._max_input_tokens = max_input_tokens
        self._stop_at_newline = stop_at_newline
        residency = AdapterResidency(max_resident_adapters, pinned_adapters)
        if hasattr(model, "peft_config"):
            lora_backend = "peft"  # a peft model passed in (training attaches its adapter): peft serves it
        self.lora_backend = lora_backend
        # torch.compile of the decode step: the loop's (fused kernels in its CUDA graph), or generate's
        # forward over a static KV cache. Kernel launches, not weights, bound a small model's decode step.
        self.compile_backend = compile_backend
        if compile_backend is not None and lora_backend == "peft":
            raise ValueError("compile needs the stacked LoRA backend (peft's mixed batch loops in Python)")
        quantizer = getattr(model, "hf_quantizer", None)
        if (
            compile_backend is not None
            and decoder == "hf"
            and quantizer is not None
            and not quantizer.is_compileable
        ):
            # transformers then decodes eagerly over the static cache: measured no faster (docs/benchmarks.md)
            logger.warning("compile: %s is not compileable; decoding stays eager", type(quantizer).__name__)
        if decoder not in ("auto", "hf", "loop"):
            raise ValueError(f"decoder must be 'auto', 'hf' or 'loop', got {decoder!r}")
        if decoder == "auto":  # our loop where it runs (the stacked backend), else transformers' generate
            decoder = "loop" if lora_backend == "stacked" else "hf"
        if decoder == "loop" and lora_backend == "peft":
            raise ValueError(
                "decoder='loop' needs the stacked LoRA backend (peft's mixed batch loops in Python)"
            )
        self.decoder = decoder
        self._stacked: StackedLora | None = None
        if lora_backend == "stacked":  # `lora_kernel`: a decode step's LoRA as one kernel a group (CUDA)
            self._stacked = StackedLora(model, kernel=lora_kernel)
        self._served = ServedAdapters(model, self._stacked, residency)
        self._lock = threading.RLock()
        self._tables: LineEnds | None = None
        self._stats = GenerationStats()
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        self._eos_ids = torch.tensor(eos_ids, dtype=torch.long)
        self._end_id = end_of_answer_id(tokenizer)
        self._kept_batch: tuple[torch.Tensor, torch.Tensor, list[str | None]] | None = None
        """The loop's last batch (ids, padding mask, row adapters): what its kept prefill holds."""
        self._kept_version = -1
        self._kept_rows: dict[tuple[tuple[int, ...], str | None], int] | None = None
        """(prompt ids, adapter) -> row of the kept prefill, made from `_kept_batch` when `score` asks."""
        # Greedy and beams through our own loop (graphs captured on CUDA unless `cuda_graphs` is off).
        self._loop = (
            DecodeLoop(
                model,
                eos_ids=eos_ids,
                stacked=self._stacked,
                cuda_graphs=cuda_graphs,
                cache_bytes=decode_cache_bytes,
                compile_backend=compile_backend,
                attention_kernel=attention_kernel,
            )
            if decoder == "loop"
            else None
        )
        if stop_at_newline:
            self._line_ends(
                torch.zeros(1, 1, dtype=torch.long)
            )  # ~2 s for a 150k vocabulary: paid at startup

    @property
    def _generate_compiles(self) -> bool:
        """Does `generate` compile its forward (compiling, without the loop, which compiles its own step)?"""
        return self.compile_backend is not None and self._loop is None

    @property
    def model(self):
        """The current model: the base, or a peft model wrapping it once an adapter is loaded."""
        return self._served.model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0")."""
        return str(self.model.device)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    @property
    def adapter_names(self) -> list[str]:
        """Names rows may use: the loaded adapters and any attached with `attach_adapter`."""
        return self._served.names

    def attach_adapter(self, name: str) -> None:
        """Let rows name `name`, a LoRA adapter already on the peft model passed in (e.g. one being trained).

        Nothing is loaded and the generator does not own it: `unload_adapter` refuses it and its weights may
        change between calls (training evaluates its adapter through the server's own generation path).
        """
        with self._lock:
            self._served.attach(name)

    @property
    def stats(self) -> GenerationStats:
        return self._stats

    @property
    def resident_adapters(self) -> list[str]:
        """Adapters on the model now, least recently used first (all served ones when no capacity is set)."""
        with self._lock:
            return self._served.resident

    def load_adapter(self, spec: AdapterSpec) -> None:
        """Serve an adapter and make it resident now (idempotent by name), so a bad one fails here.

        Checking its manifest fits the base is the registry's job; its weights (readable, finite, shaped for
        this base) are checked here, before peft touches the shared model. With a capacity set, the least
        recently used unpinned adapters make room; they stay served and come back when a row names them.
        """
        self._served.check(spec)  # outside the lock: it reads files, and generation goes on meanwhile
        with self._lock:
            self._served.load(spec)

    def unload_adapter(self, name: str) -> None:
        """Stop serving an adapter; the last one out unwraps the base model again."""
        with self._lock:
            self._served.unload(name)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, prompt: Prompt) -> str:
        """The exact text fed to the model: chat messages through the chat template, strings as they are."""
        if isinstance(prompt, str):
            return prompt
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; pass plain-string prompts")
        return self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        prompts: Sequence[Prompt],
        adapters: Sequence[str | None],
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        num_return_sequences: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per prompt, `num_return_sequences` (text, score) pairs best first, from ONE mixed-adapter batch;
        by default greedy, one candidate a prompt (the sampling arguments matter only with `do_sample`).

        Beam search scores are the beams' length-normalised log-probabilities; greedy and sampled candidates
        score the mean log-probability of their tokens under the (un-tempered) model.
        """
        check_decoding(
            len(prompts), len(adapters), max_new_tokens, num_beams, num_return_sequences, do_sample
        )
        if not prompts:
            return []
        n = num_return_sequences
        with self._lock:
            self._served.prepare(adapters)
            rows, row_adapters = list(prompts), list(adapters)
            if num_beams == 1 and n > 1:
                # peft repeats adapter names per beam only; sampled copies are made here, one row each.
                rows = [p for p in prompts for _ in range(n)]
                row_adapters = [a for a in adapters for _ in range(n)]
            input_ids, attention_mask = self._encode(rows)
            kwargs = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "max_new_tokens": max_new_tokens,
                "num_beams": num_beams,
                "num_return_sequences": n if num_beams > 1 else 1,
                "do_sample": do_sample,
                "return_dict_in_generate": True,
                "output_scores": num_beams > 1,
                "output_logits": num_beams == 1,
            }
            if do_sample:
                kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
                if seed is not None:
                    torch.manual_seed(seed)
            if num_beams > 1:
                kwargs["length_penalty"] = 1.0
            if self._generate_compiles:
                kwargs["compile_config"] = compile_config(self.compile_backend)
            if self._stop_at_newline:
                kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [FirstLineDone(input_ids.shape[1], self._line_ends)]
                )
            if self._served.named_per_row:
                kwargs["adapter_names"] = [a or BASE_ADAPTER for a in row_adapters]
            started = time.perf_counter()
            with torch.inference_mode():
                try:
                    texts, scores, new_tokens = self._generate_split(kwargs, beams=num_beams > 1)
                except (GenerationOutOfMemoryError, PromptTooLongError):
                    raise
                except Exception as exc:  # noqa: BLE001 - maybe one adapter's fault: find it, isolate it
                    texts, scores, new_tokens = self._isolate(kwargs, row_adapters, exc, beams=num_beams > 1)
            old = self._stats
            self._stats = GenerationStats(
                calls=old.calls + 1,
                sequences=old.sequences + len(texts),
                new_tokens=old.new_tokens + new_tokens,
                seconds=old.seconds + time.perf_counter() - started,
            )
        pairs = list(zip(texts, scores, strict=True))
        results = [
            sorted(
                # None: the rows of an adapter that `_isolate` took out of service
                (pair for pair in pairs[i * n : (i + 1) * n] if pair[0] is not None),
                key=lambda c: -c[1],
            )
            for i in range(len(prompts))
        ]
        return results

    def score(
        self,
        prompts: Sequence[Prompt],
        adapters: Sequence[str | None],
        continuations: Sequence[Sequence[str]],
    ) -> list[list[tuple[float, int]]]:
        """Per prompt row, per continuation: (sum of log-probabilities, tokens scored) of the text's tokens
        and the end-of-answer token (`end_of_answer_id`), teacher-forced after the row's prompt under its
        adapter; the `CandidateScorer` protocol of `ensemble/pipeline.py`.

        Each prompt is in the batch once with all its continuations packed behind it
        (`models.decode.teacher_forcing`); rows run as mixed-adapter batches of at most `SCORE_TOKENS` tokens
        (halved on CUDA out-of-memory). A row whose prompt and adapter the decode loop prefilled last
        (the generate call just before, as the pipeline makes it) is not prefilled again: its tails run
        alone over that prefill's KV (`DecodeLoop.score_tails`). The sum is what `generate` reports as a
        greedy candidate's mean log-probability times its length, for the same tokens.
        """
        if not len(prompts) == len(adapters) == len(continuations):
            raise ValueError(
                f"{len(prompts)} prompts, {len(adapters)} adapters and {len(continuations)} lists of "
                "continuations"
            )
        if self._end_id is None:
            raise ValueError("this tokenizer has no end-of-answer token (no chat template and no EOS)")
        attention = self.model.config._attn_implementation
        if attention not in SCORE_ATTENTION:
            raise ValueError(
                f"scoring needs a custom 4-D attention mask, which attention {attention!r} does not take "
                f"(use one of {sorted(SCORE_ATTENTION)})"
            )
        prompt_ids = self._prompt_ids(prompts)
        tails = [
            [[*self._tokenizer(text, add_special_tokens=False)["input_ids"], self._end_id] for text in texts]
            for texts in continuations
        ]
        rows = [i for i, texts in enumerate(tails) if texts]
        sums: dict[int, list[float]] = {}
        with self._lock:
            self._served.prepare(adapters)
            kept = self._kept_prefill_rows(rows, prompt_ids, adapters)
            with torch.inference_mode():
                again = [i for i in rows if i not in kept]
                for chunk in self._score_chunks(again, prompt_ids, tails):
                    sums.update(self._score_rows(chunk, prompt_ids, tails, adapters))
                for chunk in self._score_chunks(list(kept), prompt_ids, tails, KEPT_SCORE_TOKENS):
                    sums.update(self._score_kept(chunk, kept, prompt_ids, tails, adapters))
        return [
            [(value, len(tail)) for value, tail in zip(sums.get(i, []), tails[i], strict=False)]
            for i in range(len(prompts))
        ]

    def _kept_prefill_rows(
        self, rows: list[int], prompt_ids: list[list[int]], adapters: Sequence[str | None]
    ) -> dict[int, int]:
        """Rows whose prompt and adapter were in the decode loop's last prefill, still kept: row -> its row
        there (the pipeline scores right after it generated, so normally every row)."""
        loop = self._loop
        if loop is None or loop.kept is None or loop.prefills != self._kept_version:
            return {}
        if self._kept_rows is None and self._kept_batch is not None:
            input_ids, mask, row_adapters = self._kept_batch
            self._kept_rows = {
                (tuple(ids[len(ids) - n :]), adapter): row
                for row, (ids, n, adapter) in enumerate(
                    zip(input_ids.tolist(), mask.sum(dim=1).tolist(), row_adapters, strict=True)
                )
            }
        found = {i: (self._kept_rows or {}).get((tuple(prompt_ids[i]), adapters[i])) for i in rows}
        return {i: row for i, row in found.items() if row is not None}

    def _score_kept(
        self,
        rows: list[int],
        kept: dict[int, int],
        prompt_ids: list[list[int]],
        tails: list[list[list[int]]],
        adapters: Sequence[str | None],
    ) -> dict[int, list[float]]:
        """`rows` scored on the kept prefill (`DecodeLoop.score_tails`); out of memory, prefilled again."""
        assert self._loop is not None
        try:
            sums = self._loop.score_tails(
                [kept[i] for i in rows],
                pack_tails([tails[i] for i in rows], pad_id=self._tokenizer.pad_token_id),
                [adapters[i] for i in rows],
            )
            return dict(zip(rows, sums, strict=True))
        except torch.cuda.OutOfMemoryError:
            pass
        finally:
            if self._stacked is not None:
                self._stacked.clear_rows()
        # Outside the except block: the traceback no longer pins the failed call's tensors.
        logger.warning(
            "out of accelerator memory scoring %d rows on kept prefills; prefilling again", len(rows)
        )
        self._loop.clear()
        gc.collect()
        torch.cuda.empty_cache()
        return self._score_rows(rows, prompt_ids, tails, adapters)

    @staticmethod
    def _score_chunks(
        rows: list[int],
        prompt_ids: list[list[int]],
        tails: list[list[list[int]]],
        budget: int | None = None,
    ) -> list[list[int]]:
        """Consecutive rows whose padded batch stays within `budget` tokens (default `SCORE_TOKENS`; a row
        alone may exceed it)."""
        budget = SCORE_TOKENS if budget is None else budget
        chunks: list[list[int]] = []
        current: list[int] = []
        prompt_width = tail_width = 0
        for row in rows:
            width_p, width_t = len(prompt_ids[row]), sum(len(t) for t in tails[row])
            wider_p, wider_t = max(prompt_width, width_p), max(tail_width, width_t)
            if current and (len(current) + 1) * (wider_p + wider_t) > budget:
                chunks.append(current)
                current, wider_p, wider_t = [], width_p, width_t
            current.append(row)
            prompt_width, tail_width = wider_p, wider_t
        if current:
            chunks.append(current)
        return chunks

    def _score_rows(
        self,
        rows: list[int],
        prompt_ids: list[list[int]],
        tails: list[list[list[int]]],
        adapters: Sequence[str | None],
    ) -> dict[int, list[float]]:
        names = [adapters[i] for i in rows]
        kwargs: dict[str, Any] = {}
        if self._served.named_per_row:
            kwargs["adapter_names"] = [a or BASE_ADAPTER for a in names]
        try:
            if self._stacked is not None:
                self._stacked.set_rows(names)
            sums = packed_logprobs(
                self.model,
                [prompt_ids[i] for i in rows],
                [tails[i] for i in rows],
                pad_id=self._tokenizer.pad_token_id,
                forward_kwargs=kwargs,
            )
            return dict(zip(rows, sums, strict=True))
        except torch.cuda.OutOfMemoryError as exc:
            failure = (str(exc).splitlines() or [""])[0]
        finally:
            if self._stacked is not None:
                self._stacked.clear_rows()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) == 1:
            raise GenerationOutOfMemoryError(f"out of accelerator memory scoring a single prompt ({failure})")
        logger.warning("out of accelerator memory scoring %d rows; retrying in halves", len(rows))
        half = len(rows) // 2
        return {
            **self._score_rows(rows[:half], prompt_ids, tails, adapters),
            **self._score_rows(rows[half:], prompt_ids, tails, adapters),
        }

    @property
    def faulty_adapters(self) -> dict[str, str]:
        """Adapters taken out of service at run time (their rows failed, the others' did not): name -> why."""
        with self._lock:
            return dict(self._served.faulty)

    def _isolate(
        self, kwargs: dict[str, Any], row_adapters: list[str | None], exc: Exception, *, beams: bool
    ) -> tuple[list[Any], list[Any], int]:
        """A batch failed, not for memory: run each adapter's rows alone. An adapter whose rows fail while
        other rows (another adapter's, the base's, or its own rows run on the base) succeed is the fault: it
        is taken out of service (`ServedAdapters.quarantine`, logged), and its rows come back with no outputs
        (None), so the rest of the batch is answered. When the base fails too, `exc` is raised as it was."""
        groups: dict[str | None, list[int]] = {}
        for row, adapter in enumerate(row_adapters):
            groups.setdefault(adapter, []).append(row)
        if None in groups and len(groups) == 1:
            raise exc
        per_row = kwargs["num_return_sequences"]
        texts: list[Any] = [None] * (len(row_adapters) * per_row)
        scores: list[Any] = [None] * len(texts)
        new_tokens, failed = 0, {}
        for adapter, rows in groups.items():
            try:
                part = self._generate_split(self._part(kwargs, rows), beams=beams)
            except GenerationOutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - this group's failure is the finding
                failed[adapter] = error
                continue
            new_tokens += part[2]
            for k, row in enumerate(rows):
                texts[row * per_row : (row + 1) * per_row] = part[0][k * per_row : (k + 1) * per_row]
                scores[row * per_row : (row + 1) * per_row] = part[1][k * per_row : (k + 1) * per_row]
        if None in failed or not failed:
            raise exc
        if len(failed) == len(groups):  # every group failed: is the base itself sound?
            probe = self._part(kwargs, groups[next(iter(groups))][:1], base=True)
            self._generate_split(probe, beams=beams)  # raises when the base fails too: not an adapter's fault
        for adapter, error in failed.items():
            assert adapter is not None
            logger.error("adapter %s failed at run time; taken out of service", adapter, exc_info=error)
            self._served.quarantine(adapter, f"failed at run time ({type(error).__name__}); see the log")
        return texts, scores, new_tokens

    def warm_up(self, batches: Sequence[tuple[Sequence[str | None], int]], *, max_length: int) -> WarmUp:
        """Make the decode loop's shapes for `batches` (each: every prompt row's adapter, and the beams) at
        every prompt width (on CUDA) or cache length bucket up to `max_length` tokens (`DecodeLoop.warm_up`),
        so that requests of those shapes find their CUDA graphs captured. Nothing to do with
        `decoder="hf"`. Out of accelerator memory ends it early (its shapes are dropped) and is logged, not
        raised: warm-up only saves time."""
        if self._loop is None:
            return WarmUp(shapes=0, captures=0, skipped=0, seconds=0.0)
        with self._lock:
            self._served.prepare([name for adapters, _ in batches for name in adapters])
            try:
                done = self._loop.warm_up(batches, max_length=max_length)
            except torch.cuda.OutOfMemoryError as exc:
                self._loop.clear()  # what did fit may crowd serving: requests make their shapes on demand
                failure = (str(exc).splitlines() or [""])[0]
                logger.warning("decode loop warm-up: out of accelerator memory, stopped (%s)", failure)
                return WarmUp(shapes=0, captures=0, skipped=0, seconds=0.0)
            finally:
                if self._stacked is not None:
                    self._stacked.clear_rows()
        logger.info(
            "decode loop warm-up: %d shapes (%d CUDA graphs captured) up to %d tokens in %.1f s%s",
            done.shapes,
            done.captures,
            max_length,
            done.seconds,
            f"; {done.skipped} left out, over the shape cache's bytes" if done.skipped else "",
        )
        return done

    def _generate_split(self, kwargs: dict[str, Any], *, beams: bool) -> tuple[list[str], list[float], int]:
        """Texts, scores and generated-token count of the batch in `kwargs`; on CUDA out-of-memory free the
        cache and run each half.

        Rows are independent (each left-padded, each naming its adapter), so the halves give what the whole
        would (sampled draws aside). A single row that still does not fit raises `GenerationOutOfMemoryError`.
        """
        try:
            if self._loop is not None and not kwargs["do_sample"]:
                return self._loop_generate(kwargs)
            return self._hf_generate(kwargs, beams=beams)
        except torch.cuda.OutOfMemoryError as exc:
            failure = (str(exc).splitlines() or [""])[0]
        finally:
            if self._stacked is not None:
                self._stacked.clear_rows()  # a later forward of another batch size must not meet this mask
        rows = kwargs["input_ids"].shape[0]
        if self._loop is not None:
            self._loop.clear()  # its cached shapes (KV buffers, CUDA graphs) are what may not fit now
        # Outside the except block: the traceback no longer pins the failed call's tensors.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if rows == 1:
            raise GenerationOutOfMemoryError(f"out of accelerator memory for a single prompt ({failure})")
        logger.warning("out of accelerator memory for %d rows; retrying in halves", rows)
        texts: list[str] = []
        scores: list[float] = []
        new_tokens = 0
        for part in (slice(0, rows // 2), slice(rows // 2, rows)):
            part_texts, part_scores, part_tokens = self._generate_split(self._part(kwargs, part), beams=beams)
            texts += part_texts
            scores += part_scores
            new_tokens += part_tokens
        return texts, scores, new_tokens

    def _hf_generate(self, kwargs: dict[str, Any], *, beams: bool) -> tuple[list[str], list[float], int]:
        call = dict(kwargs)
        if self._stacked is not None:
            # Stacked LoRA reads each row's adapter from a mask, not from generate's kwargs.
            self._stacked.set_rows(
                self._row_adapters(call.pop("adapter_names", None), len(call["input_ids"])),
                repeat=call["num_beams"] if beams else 1,
            )
        if "compile_config" in call:
            call["past_key_values"] = static_cache(
                self.model.config, call["input_ids"].shape[1] + call["max_new_tokens"]
            )
        out = self.model.generate(**call)
        return self._decode(out, kwargs["input_ids"].shape[1], beams=beams)

    def _loop_generate(self, kwargs: dict[str, Any]) -> tuple[list[str], list[float], int]:
        """The same batch through `DecodeLoop`; texts as `_decode` makes them (up to and including the stop,
        special tokens skipped)."""
        assert self._loop is not None
        input_ids = kwargs["input_ids"]
        decoded = self._loop.decode(
            input_ids,
            kwargs["attention_mask"],
            self._row_adapters(kwargs.get("adapter_names"), len(input_ids)),
            max_new_tokens=kwargs["max_new_tokens"],
            num_beams=kwargs["num_beams"],
            num_return_sequences=kwargs["num_return_sequences"],
            min_new_tokens=self.model.generation_config.min_new_tokens or 0,
            line_ends=self._tables if self._stop_at_newline else None,
        )
        texts = [self._tokenizer.decode(ids, skip_special_tokens=True) for ids in decoded.tokens]
        # which prompt under which adapter is which row of the prefill the loop keeps (mapped only if asked)
        adapters = self._row_adapters(kwargs.get("adapter_names"), len(input_ids))
        self._kept_batch = (input_ids, kwargs["attention_mask"], adapters)
        self._kept_rows, self._kept_version = None, self._loop.prefills
        return texts, decoded.scores, sum(len(ids) for ids in decoded.tokens)

    @staticmethod
    def _row_adapters(names: Sequence[str] | None, rows: int) -> list[str | None]:
        return [None if n == BASE_ADAPTER else n for n in names] if names else [None] * rows

    def _part(self, kwargs: dict[str, Any], rows: slice | list[int], *, base: bool = False) -> dict[str, Any]:
        """The same generate call for some rows only (on the base alone when `base`), without the padding
        columns none of them needs."""
        mask = kwargs["attention_mask"][rows]
        start = int(mask.any(dim=0).int().argmax())
        part = {**kwargs, "input_ids": kwargs["input_ids"][rows, start:], "attention_mask": mask[:, start:]}
        if "adapter_names" in kwargs:
            names = kwargs["adapter_names"]
            part["adapter_names"] = names[rows] if isinstance(rows, slice) else [names[i] for i in rows]
            if base:
                part["adapter_names"] = [BASE_ADAPTER] * len(part["adapter_names"])
        if "stopping_criteria" in kwargs:
            part["stopping_criteria"] = StoppingCriteriaList(
                [FirstLineDone(part["input_ids"].shape[1], self._line_ends)]
            )
        return part

    def _prompt_ids(self, rows: Sequence[Prompt]) -> list[list[int]]:
        """Each row's token ids. Chat-rendered rows already hold their special tokens; plain strings get the
        tokenizer's own (a BOS, for some models)."""
        encoded = []
        for i, prompt in enumerate(rows):
            ids = self._tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str))[
                "input_ids"
            ]
            if self._max_input_tokens is not None and len(ids) > self._max_input_tokens:
                raise PromptTooLongError(
                    f"prompt {i} has {len(ids)} tokens; max_input_tokens is {self._max_input_tokens}"
                )
            encoded.append(list(ids))
        return encoded

    def _encode(self, rows: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize each row (`_prompt_ids`) and left-pad them into one batch."""
        encoded = self._prompt_ids(rows)
        width, pad = max(len(ids) for ids in encoded), self._tokenizer.pad_token_id
        if self._generate_compiles:
            width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE  # fewer distinct shapes, fewer recompilations
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long)
        device = self.model.device
        return input_ids.to(device), mask.to(device)

    def _decode(self, out, prompt_len: int, *, beams: bool) -> tuple[list[str], list[float], int]:
        """Each row's text and score up to its stop (EOS or the answer line's end), and the tokens made."""
        generated = out.sequences[:, prompt_len:]
        stops = torch.isin(generated, self._eos_ids.to(generated.device))
        if self._stop_at_newline:
            stops |= self._line_ends(generated)
        width = generated.shape[1]
        has_stop = stops.any(dim=1)
        lengths = torch.where(
            has_stop, stops.int().argmax(dim=1) + 1, torch.full_like(has_stop, width, dtype=torch.long)
        )
        if beams:
            scores = out.sequences_scores.float().tolist()
        else:
            steps = self.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
            keep = (
                torch.arange(steps.shape[1], device=steps.device)[None, :] < lengths.to(steps.device)[:, None]
            )
            total = torch.where(keep, steps.float(), torch.zeros_like(steps, dtype=torch.float)).sum(dim=1)
            scores = (total / lengths.to(total.device).clamp(min=1)).tolist()
        texts = [
            self._tokenizer.decode(row[:length].tolist(), skip_special_tokens=True)
            for row, length in zip(generated, lengths.tolist(), strict=True)
        ]
        return texts, [float(s) for s in scores], int(lengths.sum())

    def _line_ends(self, generated: torch.Tensor) -> torch.Tensor:
        """Per generated position: does this token close the answer's first non-empty line?"""
        if self._tables is None:
            size = max(len(self._tokenizer), self.model.get_output_embeddings().weight.shape[0])
            self._tables = LineEnds(self._tokenizer, size, self.model.device)
        return self._tables(generated)
