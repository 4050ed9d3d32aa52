"""Decoding helpers of the generator: stopping at the answer line's end, compiled decoding, checks, totals.

`LineEnds` and `FirstLineDone` stop a row once its answer line is complete (answers are one line); the compile
helpers give `generate` a static KV cache whose beam reordering keeps tensor addresses (CUDA graphs) and the
`CompileConfig`; `check_decoding` refuses impossible decoding options; `GenerationStats` are the totals the
metrics export. Nothing here holds the model or its adapters: that is `models.generator`.
"""

import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria

PAD_MULTIPLE = 64
"""With compilation on, prompts are left-padded to a multiple of this many tokens (shapes repeat)."""


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


class FirstLineDone(StoppingCriteria):
    """Per row: True once the generated text holds a line break after some non-blank text."""

    def __init__(self, prompt_len: int, line_ends) -> None:
        self.prompt_len, self.line_ends = prompt_len, line_ends

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return self.line_ends(input_ids[:, self.prompt_len :]).any(dim=1)


class LineEnds:
    """Per generated position: does this token close the answer's first non-empty line?

    Built once per tokenizer (about 2 s for a 150k vocabulary): per vocabulary id, whether it holds a newline,
    whether it has non-blank text before its first newline, and whether it is non-blank.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, device: Any) -> None:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        pieces += [""] * (vocab_size - len(pieces))
        has_newline = ["\n" in p for p in pieces]
        text_first = [
            nl and bool(p.split("\n", 1)[0].strip()) for p, nl in zip(pieces, has_newline, strict=True)
        ]
        non_blank = [bool(p.strip()) for p in pieces]
        self.has_newline, self.text_before_newline, self.non_blank = (
            torch.tensor(t, device=device) for t in (has_newline, text_first, non_blank)
        )

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        device = generated.device
        tokens_seen = self.non_blank.to(device)[generated].int()
        seen_before = (tokens_seen.cumsum(dim=1) - tokens_seen) > 0
        return self.has_newline.to(device)[generated] & (
            seen_before | self.text_before_newline.to(device)[generated]
        )


def compile_config(backend: str) -> Any:
    """How `generate` compiles its forward: inductor with CUDA graphs, or a test backend (also on the CPU)."""
    from transformers import CompileConfig

    config = CompileConfig(backend=backend, mode="reduce-overhead" if backend == "inductor" else None)
    config._compile_all_devices = True  # the CPU tests run the same path with a trace-only backend
    return config


def static_cache(model_config: Any, max_cache_len: int) -> Any:
    """A static KV cache for one generate call whose beam reordering stays in place.

    transformers' static layers reorder beams by `index_select` into new tensors, so the compiled step's
    cache inputs change address every step and CUDA graphs copy them; copying the reordered rows back into
    the same storage keeps the addresses static.
    """
    from transformers import StaticCache

    cache = StaticCache(config=model_config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        layer.reorder_cache = types.MethodType(reorder_in_place, layer)
    return cache


def reorder_in_place(layer: Any, beam_idx: torch.Tensor) -> None:
    if layer.is_initialized:
        index = beam_idx.to(layer.keys.device)
        layer.keys.copy_(layer.keys.index_select(0, index))
        layer.values.copy_(layer.values.index_select(0, index))


def check_decoding(
    n_prompts: int, n_adapters: int, max_new_tokens: int, num_beams: int, n: int, do_sample: bool
) -> None:
    if n_prompts != n_adapters:
        raise ValueError(
            f"got {n_prompts} prompts but {n_adapters} adapters; pass one adapter (or None) per prompt"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_beams < 1 or n < 1:
        raise ValueError(f"num_beams and num_return_sequences must be at least 1, got {num_beams} and {n}")
    if num_beams > 1 and n > num_beams:
        raise ValueError(f"num_return_sequences ({n}) cannot exceed num_beams ({num_beams})")
    if num_beams == 1 and not do_sample and n > 1:
        raise ValueError("greedy decoding returns one sequence per prompt; use beams or sampling for more")
