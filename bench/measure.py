"""Timing and memory probes for bench/serving_speed.py: synchronised wall clock, bytes resident, bytes one
decode step must read, and the three workloads it times (the naive peft loop, the service pipeline, one
greedy row); and for the kernel tuners, a call's microseconds replayed from a CUDA graph, per launch setting.

It loads no model and chooses no settings (serving_speed.py does both). It talks to the service's generator
only through its public methods, so it measures whichever LoRA backend the generator uses; the naive loop
runs on its own plain peft model, the way the competition pipeline this service replaces did.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ensemble.datasets import QAExample
from ensemble.pipeline import EnsemblePipeline, QARequest
from ensemble.prompts import render_prompt

T = TypeVar("T")
BANDWIDTH_GBS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0))
"""Vendor HBM bandwidth in GB/s by card name (first match wins; "H100" alone is the SXM card)."""


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def graph_us(fn: Callable[[], Any]) -> float:
    """Microseconds a call of `fn`, replayed from a CUDA graph (Triton's `do_bench_cudagraph`), rounded."""
    from triton.testing import do_bench_cudagraph

    return round(do_bench_cudagraph(fn) * 1e3, 2)


def settings_us(
    launch: Callable[..., Any], names: Sequence[str], settings: Iterable[tuple], label: str
) -> dict[str, float]:
    """`graph_us` of `launch(**dict(zip(names, setting)))` per launch setting, keyed "a/b/c"; a setting that
    fails (too much shared memory, say) is skipped with a line on stderr naming `label`."""
    timings = {}
    for setting in settings:
        key = "/".join(map(str, setting))
        try:
            timings[key] = graph_us(lambda: launch(**dict(zip(names, setting, strict=True))))  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - a setting this card cannot run is left out
            sys.stderr.write(f"{label} {key}: {exc}\n")
    return timings


def timed(fn: Callable[[], T], device: str) -> tuple[T, float]:
    """`fn()` and its wall time, with the accelerator's queue drained before and after."""
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - started


def tensor_bytes(model: Any) -> int:
    """Bytes of every tensor the model's modules hold (parameters, buffers, plain tensor attributes such as
    stacked LoRA matrices), each storage counted once."""
    import torch

    seen: dict[int, int] = {}
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def allocated(device: str, model: Any) -> tuple[int, str]:
    """Bytes in use: the CUDA allocator's live bytes, or on the CPU the model's own tensors."""
    import torch

    if device.startswith("cuda"):
        sync(device)
        return int(torch.cuda.memory_allocated()), "torch.cuda.memory_allocated"
    return tensor_bytes(model), "tensors held by the model's modules"


def weight_bytes_per_step(model: Any) -> int:
    """Bytes of base weights one decode step reads: every weight once (4-bit packed weights with their
    quantization constants), the input embedding only when it is not also the output head (then one row)."""
    seen: set[int] = set()
    total = 0
    for name, param in model.named_parameters():
        if "lora" in name or param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        for tensor in (
            getattr(state, "absmax", None),
            getattr(getattr(state, "state2", None), "absmax", None),
        ):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V cached per token over all layers, in the compute dtype."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dtype_bytes = model.get_output_embeddings().weight.element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def card_bandwidth(device: str, given: float | None) -> float | None:
    """GB/s: the one given, else the vendor figure for the card's name, else None (no floor)."""
    import torch

    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(0)
    return next((gbs for key, gbs in BANDWIDTH_GBS if key in name), None)


def render_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text the generator feeds the model for `prompt` (chat messages through the chat template)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def naive_loop(
    model: Any,
    tokenizer: Any,
    questions: Sequence[QAExample],
    adapters: Sequence[str],
    prompts: Sequence[str],
    *,
    beams: int,
    new_tokens: int,
) -> int:
    """Per question, per adapter `set_adapter`, per prompt one beam-search generate on a peft model; returns
    the candidates decoded (no clean-up or vote)."""
    import torch

    chat, made = bool(getattr(tokenizer, "chat_template", None)), 0
    with torch.inference_mode():
        for example in questions:
            for adapter in adapters:
                model.set_adapter(adapter)
                for style in prompts:
                    prompt = render_prompt(style, example.context, example.question, chat=chat)
                    batch = tokenizer(
                        render_text(tokenizer, prompt), add_special_tokens=not chat, return_tensors="pt"
                    ).to(model.device)
                    out = model.generate(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        num_beams=beams,
                        num_return_sequences=beams,
                        do_sample=False,
                        length_penalty=1.0,
                        return_dict_in_generate=True,
                        output_scores=True,
                    )
                    width = batch["input_ids"].shape[1]
                    made += len(tokenizer.batch_decode(out.sequences[:, width:], skip_special_tokens=True))
    return made


def pipeline_run(pipeline: EnsemblePipeline, questions: Sequence[QAExample], chunk: int) -> int:
    """Every question through the service's `answer_many`, `chunk` at a time; returns the candidates voted."""
    requests = [QARequest(context=q.context, question=q.question) for q in questions]
    votes = [v for i in range(0, len(requests), chunk) for v in pipeline.answer_many(requests[i : i + chunk])]
    return sum(len(vote.candidates) for vote in votes)


def forced_decode(
    generator: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    adapters: Sequence[str | None],
    tokens: int,
    *,
    beams: int = 1,
) -> None:
    """One batch through the service's generator (one row per prompt, `beams` beams and outputs each), every
    output exactly `tokens` new tokens long (EOS masked until then), so that runs compare like with like."""
    loop = getattr(generator, "_loop", None)
    if loop is not None:  # each run prefills: the same batch again would decode on the kept prefill
        loop.kept = None
    config = generator.model.generation_config
    previous, config.min_new_tokens = config.min_new_tokens, tokens
    try:
        generator.generate(
            list(prompts),
            list(adapters),
            max_new_tokens=tokens,
            num_beams=beams,
            num_return_sequences=beams,
        )
    finally:
        config.min_new_tokens = previous


def ms_per_step(
    generator: Any, prompt: Any, batch: tuple[int, int], tokens: int, repeats: int, device: str
) -> float:
    """Milliseconds of one decode step of `batch` (prompt rows x beams) of `prompt`: a forced decode of
    `tokens` tokens minus one of 1, over tokens - 1, median of `repeats`, after one unmeasured pair (CUDA
    context, workspaces, allocator; compiled graphs and captures)."""

    def run(n: int) -> float:
        sync(device)
        started = time.perf_counter()
        forced_decode(generator, [prompt] * batch[0], ["probe"] * batch[0], n, beams=batch[1])
        sync(device)
        return time.perf_counter() - started

    run(tokens), run(1)
    return statistics.median((run(tokens) - run(1)) / (tokens - 1) * 1000 for _ in range(repeats))
