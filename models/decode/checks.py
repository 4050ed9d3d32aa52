"""The decoding options every decoder refuses alike (`Generator.generate` checks them before any work)."""

from __future__ import annotations


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
