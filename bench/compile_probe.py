"""Decode step per decoding mode: `generate` eager or compiled (`QA_COMPILE`), our loop (`QA_DECODER=loop`).

    python -m bench.compile_probe --random-init .gpu-meta --data .gpu-data/KorQuAD_v1.0_dev.json \
        [--variants bf16,4bit] [--modes eager,compiled,loop,loop-graphs] [--batches 1x1,6x3] \
        [--generator-kwargs '{"attention_kernel": false}']
    python -m bench.compile_probe --smoke   # tiny model on the CPU, TorchDynamo's trace-only "eager" backend

Per variant (4-bit NF4 or bf16 base) and batch (ROWSxBEAMS: 1x1 is one greedy row, 6x3 the ensemble's shape, 2
prompts x 3 adapters with 3 beams each, here all of one adapter), a KorQuAD eval prompt through the service's
generator with one resident adapter: ms per decode step ((N-token run - 1-token run) / (N - 1), median of
repeats) in each mode - eager: `generate`; compiled: `generate` over a static KV cache with torch.compile (on
CUDA inductor with CUDA graphs); loop: `Generator(decoder="loop")` stepping eagerly; loop-graphs: the same
loop replaying a CUDA graph per step (CUDA only, skipped elsewhere) - with the first call's time (compilation
or graph capture) and the speed-up over eager; loop-compiled: the loop with its step compiled by
torch.compile (inductor without its own CUDA graphs: the loop's graph replays the fused kernels). Each mode
loads its own copy of the base (the stacked LoRA wraps the model's layers in place). Every run makes
exactly N tokens (EOS masked, no stop at line ends). Whole requests (prompts, voting, HTTP) are
`bench/serving_speed.py` and `bench/http_latency.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import forced_decode, ms_per_step, sync
from bench.workload import (
    add_base_args,
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


MODES = ("eager", "compiled", "loop", "loop-graphs", "loop-compiled")


def _generator_kwargs(mode: str, compile_backend: str) -> dict[str, Any]:
    return {
        "eager": {},
        "compiled": {"compile_backend": compile_backend},
        "loop": {"decoder": "loop", "cuda_graphs": False},
        "loop-graphs": {"decoder": "loop", "cuda_graphs": True},
        "loop-compiled": {"decoder": "loop", "cuda_graphs": True, "compile_backend": compile_backend},
    }[mode]


def probe_generator(base: Any, spec: Any, variant: str, device: str, kwargs: dict[str, Any]) -> Any:
    """The service's generator on a fresh load of `base` (4-bit or not, bf16 on CUDA), `spec` loaded, no stop
    at line ends."""
    from models.base.loading import LoadConfig, load_base
    from models.decode.generator import Generator

    quantization = "4bit" if variant == "4bit" else "none"
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model, tokenizer = load_base(base.path, LoadConfig(device=device, quantization=quantization, dtype=dtype))
    gen = Generator(model, tokenizer, stop_at_newline=False, **kwargs)
    gen.load_adapter(spec)
    return gen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_base_args(parser)
    parser.add_argument("--variants", default="bf16,4bit")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--batches", default="1x1", help="comma-separated ROWSxBEAMS, e.g. 1x1,6x3")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument(
        "--generator-kwargs",
        type=json.loads,
        default={},
        help="JSON passed to every mode's Generator(...), e.g. '{\"attention_kernel\": false}'",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU with the eager backend")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random_init, args.device, args.compile_backend = "tiny-random", None, "cpu", "eager"
        args.variants, args.tokens, args.repeats = "bf16", 4, 1
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := sorted(set(modes) - set(MODES)):
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; known: {', '.join(MODES)}")
    if not args.device.startswith("cuda") and "loop-graphs" in modes:
        modes.remove("loop-graphs")  # CUDA graphs need CUDA; elsewhere it would just repeat "loop"
    batches = [tuple(int(n) for n in b.split("x")) for b in args.batches.split(",") if b.strip()]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    out = args.out or default_out("compile-probe")
    example = load_questions(args.data, split="eval", count=1)[0] if not args.smoke else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        base = resolve_base(args.model, args.random_init, Path(scratch), args.cache_dir, device=args.device)
        (spec,) = make_lora_adapters(base, Path(scratch) / "adapters", ["probe"])
        for variant in args.variants.split(","):
            eager_ms: dict[tuple[int, int], float] = {}
            for mode in modes:
                kwargs = {**_generator_kwargs(mode, args.compile_backend), **args.generator_kwargs}
                gen = probe_generator(base, spec, variant, args.device, kwargs)
                context = example.context if example else "서울은 대한민국의 수도이다."
                question = example.question if example else "수도는?"
                prompt = render_prompt("zero-shot", context, question, chat=gen.has_chat_template)
                for batch in batches:
                    sync(args.device)
                    started = time.perf_counter()
                    forced_decode(gen, [prompt] * batch[0], ["probe"] * batch[0], args.tokens, beams=batch[1])
                    sync(args.device)
                    first_s = time.perf_counter() - started
                    ms = ms_per_step(gen, prompt, batch, args.tokens, args.repeats, args.device)
                    if mode == "eager":
                        eager_ms[batch] = ms
                    rows.append(
                        {
                            "variant": variant,
                            "batch": "{}x{}".format(*batch),
                            "mode": mode,
                            "ms_per_token": round(ms, 3),
                            "speedup": round(eager_ms[batch] / ms, 2)
                            if batch in eager_ms and ms > 0
                            else None,
                            "first_call_s": round(first_s, 2),
                        }
                    )
                    logger.info("%s", rows[-1])
                del gen
    report = {
        "environment": environment(args.device),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    table = markdown_table(
        ("variant", "rows x beams", "mode", "ms/step", "speed-up over eager", "first call s"),
        [tuple(r.values()) for r in rows],
    )
    write_json(out / "compile_probe.json", report)
    (out / "compile_probe.md").write_text(table + "\n", encoding="utf-8")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
