"""Decode step with and without compiled decoding (`Generator(compile_backend=...)`, `QA_COMPILE`).

    python -m bench.compile_probe --random-init .gpu-meta --data .gpu-data/KorQuAD_v1.0_dev.json \
        [--variants bf16,4bit]
    python -m bench.compile_probe --smoke   # tiny model on the CPU, TorchDynamo's trace-only "eager" backend

Per variant (4-bit NF4 or bf16 base), one greedy row of a KorQuAD eval prompt through the service's generator
with one resident adapter: ms per generated token ((N-token run - 1-token run) / (N - 1), median of repeats)
eagerly and compiled (static KV cache + torch.compile; on CUDA inductor with CUDA graphs), the first compiled
call's time (compilation), and the ratio. Each side loads its own copy of the base (the stacked LoRA wraps the
model's layers in place). It measures one row only: batching, beams and HTTP are `bench/serving_speed.py` and
`bench/http_latency.py`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import greedy_row, sync
from bench.workload import (
    default_cache_dir,
    default_out,
    environment,
    load_questions,
    make_lora_adapters,
    markdown_table,
    resolve_base,
    write_json,
)
from ensemble.prompts import render_prompt

logger = logging.getLogger("bench.compile_probe")


def _generator(base: Any, spec: Any, variant: str, device: str, compile_backend: str | None) -> Any:
    from models.generator import Generator
    from models.loading import LoadConfig, load_base

    quantization = "4bit" if variant == "4bit" else "none"
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model, tokenizer = load_base(base.path, LoadConfig(device=device, quantization=quantization, dtype=dtype))
    gen = Generator(model, tokenizer, stop_at_newline=False, compile_backend=compile_backend)
    gen.load_adapter(spec)
    return gen


def _ms_per_token(gen: Any, prompt: Any, adapter: str, tokens: int, repeats: int, device: str) -> float:
    def run(n: int) -> float:
        sync(device)
        started = time.perf_counter()
        greedy_row(gen, gen.model.generation_config, prompt, adapter, n)
        sync(device)
        return time.perf_counter() - started

    run(tokens), run(1)  # warm-up: CUDA context, cuBLAS workspaces, allocator (and, compiled, the graphs)
    per_token = [(run(tokens) - run(1)) / (tokens - 1) * 1000 for _ in range(repeats)]
    return statistics.median(per_token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--random-init", type=Path, help="config.json + tokenizer folder: random weights")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--data", type=Path, default=Path("../shared/data/korquad/KorQuAD_v1.0_dev.json"))
    parser.add_argument("--variants", default="bf16,4bit")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU with the eager backend")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random_init, args.device, args.compile_backend = "tiny-random", None, "cpu", "eager"
        args.variants, args.tokens, args.repeats = "bf16", 4, 1
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    out = args.out or default_out("compile-probe")
    example = load_questions(args.data, split="eval", count=1)[0] if not args.smoke else None
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = resolve_base(args.model, args.random_init, Path(scratch), args.cache_dir, device=args.device)
        (spec,) = make_lora_adapters(base, Path(scratch) / "adapters", ["probe"])
        for variant in args.variants.split(","):
            eager = _generator(base, spec, variant, args.device, None)
            context = example.context if example else "서울은 대한민국의 수도이다."
            question = example.question if example else "수도는?"
            prompt = render_prompt("zero-shot", context, question, chat=eager.has_chat_template)
            eager_ms = _ms_per_token(eager, prompt, "probe", args.tokens, args.repeats, args.device)
            del eager
            compiled = _generator(base, spec, variant, args.device, args.compile_backend)
            started = time.perf_counter()
            greedy_row(compiled, compiled.model.generation_config, prompt, "probe", args.tokens)
            first_s = time.perf_counter() - started
            compiled_ms = _ms_per_token(compiled, prompt, "probe", args.tokens, args.repeats, args.device)
            del compiled
            rows.append(
                {
                    "variant": variant,
                    "eager_ms_per_token": round(eager_ms, 3),
                    "compiled_ms_per_token": round(compiled_ms, 3),
                    "speedup": round(eager_ms / compiled_ms, 2) if compiled_ms > 0 else None,
                    "first_compiled_call_s": round(first_s, 1),
                }
            )
            logger.info("%s", rows[-1])
    report = {
        "environment": environment(args.device),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    table = markdown_table(
        ("variant", "eager ms/token", "compiled ms/token", "speed-up", "first compiled call s"),
        [tuple(r.values()) for r in rows],
    )
    write_json(out / "compile_probe.json", report)
    (out / "compile_probe.md").write_text(table + "\n", encoding="utf-8")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
