"""What transformers' `generate` needs from us: shapes that repeat, a compile config, a static KV cache.

With compilation on, prompts are left-padded to a multiple of `PAD_MULTIPLE` tokens so shapes repeat;
`compile_config` is the `CompileConfig` (inductor with CUDA graphs, or a test backend on the CPU);
`static_cache` is a static KV cache whose beam reordering keeps tensor addresses (CUDA graphs). The project's
own decode loop (`models.decode.loop`) needs none of this.
"""

from __future__ import annotations

import types
from typing import Any

import torch

PAD_MULTIPLE = 64
"""With compilation on, prompts are left-padded to a multiple of this many tokens (shapes repeat)."""


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
