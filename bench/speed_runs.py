"""The measurements of bench/serving_speed.py for one way of loading the base (a variant): the naive peft
loop, then the service path (decode step, memory per resident adapter, pipeline throughput), each on a fresh
load of the base.

It composes the probes of bench/measure.py with the project's loading, generator and pipeline, and returns
plain dicts; the command line, the workload and the report are serving_speed.py's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.measure import (
    allocated,
    card_bandwidth,
    forced_decode,
    kv_bytes_per_token,
    naive_loop,
    pipeline_run,
    render_text,
    timed,
    weight_bytes_per_step,
)
from bench.workload import median, percentile
from ensemble.datasets import QAExample
from ensemble.pipeline import EnsemblePipeline, PipelineConfig
from ensemble.plan import Decoding, Member
from ensemble.prompts import render_prompt
from models.adapters.registry import ADAPTER_WEIGHTS, AdapterSpec
from models.base.sources import ResolvedModel

logger = logging.getLogger(__name__)
VARIANTS = {
    "4bit": ("4bit", "auto"),
    "bf16": ("none", "bfloat16"),
    "fp16": ("none", "float16"),
    "fp32": ("none", "float32"),
}
"""Variant name -> (LoadConfig.quantization, LoadConfig.dtype)."""
MEMORY_TARGET = 1.10


@dataclass(frozen=True)
class SpeedConfig:
    """One run's settings (the command line, resolved)."""

    device: str
    questions: int
    """Questions the pipeline answers (timed)."""
    naive_questions: int
    """Questions the naive loop answers (timed; reported per question); 0 skips it."""
    chunk: int
    """Questions per `answer_many` call."""
    adapters: int
    """Adapters in the ensemble (each x every prompt x beams candidates)."""
    prompts: tuple[str, ...]
    beams: int
    new_tokens: int
    memory_counts: tuple[int, ...]
    decode_tokens: int
    """New tokens of the long greedy run of (c); the short one makes 1."""
    repeats: int
    """Timed repeats of each greedy run (the median counts)."""
    bandwidth_gbs: float | None


def _load(base: ResolvedModel, variant: str, device: str) -> tuple[Any, Any, float]:
    from models.base.loading import LoadConfig, load_base

    quantization, dtype = VARIANTS[variant]
    config = LoadConfig(device=device, quantization=quantization, dtype=dtype)  # type: ignore[arg-type]
    (model, tokenizer), seconds = timed(lambda: load_base(base.path, config), device)
    return model, tokenizer, seconds


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _seconds(run: Callable[[], object], cfg: SpeedConfig) -> list[float]:
    """The wall times of --repeats calls of `run`, after one unmeasured call."""
    run()
    return [timed(run, cfg.device)[1] for _ in range(cfg.repeats)]


def run_naive(
    variant: str, base: ResolvedModel, specs: list[AdapterSpec], questions: list[QAExample], cfg: SpeedConfig
) -> dict[str, Any]:
    """(a), the naive side: a fresh base, the adapters through peft, a warm-up call, then the timed loop."""
    from peft import PeftModel

    model, tokenizer, _ = _load(base, variant, cfg.device)
    model = PeftModel.from_pretrained(
        model, str(specs[0].path), adapter_name=specs[0].name, is_trainable=False
    )
    for spec in specs[1:]:
        model.load_adapter(str(spec.path), adapter_name=spec.name, is_trainable=False)
    model.eval()
    names = [s.name for s in specs]

    def loop(subset: list[QAExample], adapters: list[str], prompts: tuple[str, ...]) -> int:
        return naive_loop(
            model, tokenizer, subset, adapters, prompts, beams=cfg.beams, new_tokens=cfg.new_tokens
        )

    subset = questions[: cfg.naive_questions]
    loop(subset[:1], names[:1], cfg.prompts[:1])  # warm-up: one generate call
    candidates, seconds = timed(lambda: loop(subset, names, cfg.prompts), cfg.device)
    return {
        "questions": len(subset),
        "seconds": round(seconds, 3),
        "questions_per_s": round(len(subset) / seconds, 3),
        "candidates": candidates,
        "generate_calls": len(subset) * len(names) * len(cfg.prompts),
    }


def run_service(
    variant: str,
    generator_kwargs: dict[str, Any],
    base: ResolvedModel,
    specs: list[AdapterSpec],
    questions: list[QAExample],
    cfg: SpeedConfig,
) -> dict[str, Any]:
    """(c) on the base alone, (b) adapters loaded one by one, (c) with one resident, (a) with --adapters."""
    from models.decode.generator import Generator

    model, tokenizer, load_s = _load(base, variant, cfg.device)
    model.generation_config.min_new_tokens = cfg.new_tokens  # fixed lengths: EOS masked until the last token
    # decoder "auto" as the service has it (Generator's own default is transformers' generate)
    options = {"stop_at_newline": False, "decoder": "auto", **generator_kwargs}
    generator = Generator(model, tokenizer, **options)
    bandwidth = card_bandwidth(cfg.device, cfg.bandwidth_gbs)
    first = questions[0]
    probe = render_prompt(cfg.prompts[0], first.context, first.question, chat=generator.has_chat_template)
    context = generator.count_tokens(render_text(tokenizer, probe)) + cfg.decode_tokens // 2
    step_bytes = weight_bytes_per_step(model) + kv_bytes_per_token(model) * context

    def decode(adapter: str | None, label: str, extra_bytes: int) -> dict[str, Any]:
        short, long = (
            _seconds(lambda t=tokens: forced_decode(generator, [probe], [adapter], t), cfg)
            for tokens in (1, cfg.decode_tokens)
        )
        one_token = median(short) or 0.0
        # One estimate per long run, so the spread between repeats is reported next to the median.
        estimates = [max(t - one_token, 0.0) / (cfg.decode_tokens - 1) for t in long]
        per_token = median(estimates) or 0.0
        floor = (step_bytes + extra_bytes) / (bandwidth * 1e9) if bandwidth else None
        return {
            "row": label,
            "ms_per_token": round(per_token * 1e3, 4),
            "ms_per_token_range": [round(min(estimates) * 1e3, 4), round(max(estimates) * 1e3, 4)],
            "one_token_call_ms": round(one_token * 1e3, 3),
            "bytes_per_step": step_bytes + extra_bytes,
            "floor_ms": round(floor * 1e3, 4) if floor is not None else None,
            "floor_over_measured": round(floor / per_token, 4) if floor and per_token > 0 else None,
        }

    logger.info("decode step, base alone")
    rows = [decode(None, "base alone", 0)]
    # After a first generate: the BLAS workspace it allocates once (32 MiB on CUDA) is the base's, not an
    # adapter's.
    base_bytes, source = allocated(cfg.device, generator.model)
    memory: list[dict[str, Any]] = []
    pipeline: dict[str, Any] = {}
    loaded: list[AdapterSpec] = []
    adapter_bytes = 0  # what loading adapters added, summed over the loads only: the pipeline run between
    # two loads may leave allocations of its own (a second BLAS workspace), which are not an adapter's
    for count in sorted({1, cfg.adapters, *cfg.memory_counts}):
        before, _ = allocated(cfg.device, generator.model)
        for spec in specs[len(loaded) : count]:
            generator.load_adapter(spec)
            loaded.append(spec)
        now, _ = allocated(cfg.device, generator.model)
        adapter_bytes += now - before
        measured = base_bytes + adapter_bytes
        files = sum((s.path / ADAPTER_WEIGHTS).stat().st_size for s in loaded)
        if count in cfg.memory_counts:
            memory.append(
                {
                    "adapters": count,
                    "measured_bytes": measured,
                    "allocated_now_bytes": now,
                    "base_plus_files_bytes": base_bytes + files,
                    "adapter_file_bytes": files,
                    "adapter_measured_bytes": adapter_bytes,
                    "ratio": round(measured / (base_bytes + files), 4),
                    "within_target": measured <= MEMORY_TARGET * (base_bytes + files),
                }
            )
        if count == 1:
            rows.append(decode(None, "base row, 1 adapter resident", adapter_bytes))
            rows.append(decode(loaded[0].name, "adapter row", adapter_bytes))
        if count == cfg.adapters:
            logger.info("pipeline with %d adapters", count)
            pipeline = _pipeline(generator, [s.name for s in loaded], questions, cfg)
    prompt_tokens = [
        generator.count_tokens(
            render_text(
                tokenizer, render_prompt(style, q.context, q.question, chat=generator.has_chat_template)
            )
        )
        for q in questions[: cfg.questions]
        for style in cfg.prompts
    ]
    return {
        "load_seconds": round(load_s, 2),
        "base_bytes": base_bytes,
        "memory_source": source,
        "bandwidth_gbs": bandwidth,
        "prompt_tokens": {"median": median(prompt_tokens), "p95": percentile(prompt_tokens, 95)},
        "pipeline": pipeline,
        "memory": memory,
        "decode": rows,
    }


def _pipeline(generator: Any, adapters: list[str], questions: list[QAExample], cfg: SpeedConfig) -> dict:
    """(a), the service side: a warm-up pass, then every question in chunks; the peak memory of the run."""
    import torch

    members = [Member(adapter=name) for name in adapters]
    decoding = Decoding(strategy="beam", num_beams=cfg.beams, max_new_tokens=cfg.new_tokens)
    pipeline = EnsemblePipeline(
        generator,
        PipelineConfig(default_prompts=cfg.prompts, default_decoding=decoding),
        default_members=lambda: members,
    )
    subset = questions[: cfg.questions]
    pipeline_run(pipeline, subset, cfg.chunk)  # warm-up: the same work (a server's shapes are warm too)
    calls = pipeline.stats.generate_calls
    stats = getattr(generator, "stats", None)  # newer generators count the tokens they make
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    candidates, seconds = timed(lambda: pipeline_run(pipeline, subset, cfg.chunk), cfg.device)
    after = getattr(generator, "stats", None)
    tokens = None
    if stats is not None and after is not None and after.sequences > stats.sequences:
        tokens = round((after.new_tokens - stats.new_tokens) / (after.sequences - stats.sequences), 2)
    return {
        "questions": len(subset),
        "chunk": cfg.chunk,
        "seconds": round(seconds, 3),
        "questions_per_s": round(len(subset) / seconds, 3),
        "candidates": candidates,
        "generate_calls": pipeline.stats.generate_calls - calls,
        "new_tokens_per_sequence": tokens,
        "peak_bytes": int(torch.cuda.max_memory_allocated()) if cfg.device.startswith("cuda") else None,
    }


def run_all(
    variants: list[str],
    kwargs_sets: list[dict[str, Any]],
    base: ResolvedModel,
    specs: list[AdapterSpec],
    questions: list[QAExample],
    cfg: SpeedConfig,
) -> list[dict[str, Any]]:
    """One row per variant x generator options; the naive loop once per variant. A row that fails (e.g. an
    unknown generator option) records its error and the others still run."""
    rows: list[dict[str, Any]] = []
    for variant in variants:
        naive = None
        for kwargs in kwargs_sets:
            label = variant + "".join(f" {k}={v}" for k, v in kwargs.items())
            started = time.perf_counter()
            try:
                if naive is None and cfg.naive_questions > 0:
                    logger.info("%s: naive loop", variant)
                    naive = run_naive(variant, base, specs[: cfg.adapters], questions, cfg)
                    _free(cfg.device)  # the naive model is gone once run_naive returns
                logger.info("%s: service path", label)
                result = run_service(variant, kwargs, base, specs, questions, cfg)
            except Exception as exc:  # noqa: BLE001 - recorded in the table and the JSON
                logger.exception("%s failed", label)
                rows.append(
                    {
                        "label": label,
                        "variant": variant,
                        "generator_kwargs": kwargs,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
                continue
            finally:
                _free(cfg.device)
            qps = result["pipeline"]["questions_per_s"]
            rows.append(
                {
                    "label": label,
                    "variant": variant,
                    "quantization": VARIANTS[variant][0],
                    "dtype": VARIANTS[variant][1],
                    "generator_kwargs": kwargs,
                    **result,
                    "naive": naive,
                    "speedup": round(qps / naive["questions_per_s"], 2) if naive else None,
                    "wall_seconds": round(time.perf_counter() - started, 1),
                }
            )
    return rows
