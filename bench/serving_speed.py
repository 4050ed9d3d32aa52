"""Serving speed of the ensemble on one accelerator (issue 5): batched pipeline vs a naive loop, memory per
resident adapter, the batch-1 decode step against the memory-bandwidth floor, 4-bit NF4 vs bf16.

    python -m bench.serving_speed --model qwen2.5-coder-0.5b --cache-dir /tmp/cache \\
        [--random-init CONFIG_DIR] [--adapters-dir adapters] [--variants 4bit,bf16] [--questions 32] \\
        [--naive-questions 6] [--chunk 16] [--new-tokens 12] [--generator-kwargs '{...}' ...] [--out DIR]
    python -m bench.serving_speed --smoke      # tiny random model on the CPU, seconds; proves the path works

Per variant (how the base is loaded: 4bit = NF4 with bf16 compute, bf16 = no quantization), in one process:
  a. questions/s of the service path, `EnsemblePipeline.answer_many` over chunks of --chunk questions on
     `models.decode.generator.Generator` (ONE mixed-adapter generate per chunk), against a NAIVE LOOP on a
     plain peft model of its own (per question, per adapter `set_adapter`, per prompt one
     `generate(num_beams=3, num_return_sequences=3)`): the same adapters x prompts x beams candidates, 3 x 2 x
     3 = 18 by default.
  b. accelerator memory after the base load (and a first generate) plus what loading 1, 3 and 8 adapters
     added, against base + the adapters' file bytes (target: within +10%); the peak during the pipeline run.
  c. time per generated token of ONE greedy row through the generator ((64-token run - 1-token run) / 63):
     base alone, a base row with an adapter resident, an adapter row; and the floor = bytes read per step
     (weights, KV cache of the prompt, resident LoRA) / the card's bandwidth (by name, or --bandwidth-gbs).
Each --generator-kwargs JSON object (repeatable) is passed to `Generator(...)` over the service's defaults
(`decoder="auto"`: our decode loop with the stacked backend; '{"decoder": "hf"}' is `generate`) and gives
its own rows, so generator options (a LoRA backend, compilation, the decoder) can be compared in one run;
the naive loop runs once per variant. Every generation makes exactly --new-tokens tokens: min_new_tokens =
max_new_tokens on the model's generation config and `stop_at_newline=False` (random weights rarely end a
line, a real model does; fixed lengths keep both sides' work equal). Timings are wall clock between
torch.cuda.synchronize() calls, each after a warm-up of the same work.
Run it twice before trusting a difference: on the lent H200 the per-token time of the same row varied by up
to 2x between runs (the decode step is bound by kernel launches and Python, not by the GPU), and the table
gives each row's min - max over --repeats.
What it does NOT measure: HTTP, queueing and micro-batching (bench/http_latency.py), answer quality (qa-eval),
early stopping at the end of the answer line, the naive loop's clean-up and vote (the pipeline's time includes
its own, so the speed-up is, if anything, understated), activations in the floor.
The measurements live in bench/speed_runs.py (one variant) and bench/measure.py (probes); the base folder,
adapters and questions in bench/workload.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.speed_runs import VARIANTS, SpeedConfig, run_all
from bench.workload import (
    adapter_specs,
    add_base_args,
    default_out,
    environment,
    load_questions,
    markdown_table,
    resolve_base,
    write_json,
)

logger = logging.getLogger(__name__)
SMOKE = {
    "model": "tiny-random",
    "device": "cpu",
    "variants": "fp32",
    "questions": 2,
    "naive_questions": 1,
    "chunk": 2,
    "new_tokens": 2,
    "decode_tokens": 4,
    "repeats": 1,
    "lora_r": 4,
    "lora_alpha": 8,
    "memory_adapters": "1,3",
}
"""--smoke: the tiny random model on the CPU, a few questions, seconds."""


def _mib(value: int | None) -> str | None:
    return None if value is None else f"{value / 2**20:,.1f}"


def tables(report: dict[str, Any]) -> str:
    ok = [r for r in report["rows"] if "error" not in r]
    speed = [
        (
            r["label"],
            r["load_seconds"],
            r["pipeline"]["questions_per_s"],
            (r["naive"] or {}).get("questions_per_s"),
            f"{r['speedup']}x" if r["speedup"] else None,
            r["pipeline"]["generate_calls"],
            _mib(r["pipeline"]["peak_bytes"]),
        )
        for r in ok
    ]
    memory = [
        (
            r["label"],
            m["adapters"],
            _mib(m["measured_bytes"]),
            _mib(m["base_plus_files_bytes"]),
            _mib(m["adapter_measured_bytes"]),
            m["ratio"],
            "yes" if m["within_target"] else "NO",
        )
        for r in ok
        for m in r["memory"]
    ]
    decode = [
        (
            r["label"],
            d["row"],
            d["ms_per_token"],
            "{} - {}".format(*d["ms_per_token_range"]),
            d["floor_ms"],
            d["floor_over_measured"],
        )
        for r in ok
        for d in r["decode"]
    ]
    failed = "".join(f"{r['label']} failed: {r['error']}\n" for r in report["rows"] if "error" in r)
    env, config = report["environment"], report["config"]
    return (
        f"serving speed on {env['card']} ({env['device']}), torch {env['torch']}, transformers "
        f"{env['transformers']}, peft {env['peft']}, {env['date']}: {report['candidates_per_question']} "
        f"candidates/question ({config['adapters']} adapters x {len(config['prompts'])} prompts x "
        f"{config['beams']} beams), {config['new_tokens']} new tokens each\n\n"
        + markdown_table(
            ("variant", "load s", "pipeline q/s", "naive q/s", "speed-up", "generate calls", "peak MiB"),
            speed,
        )
        + "\n"
        + markdown_table(
            ("variant", "adapters", "measured MiB", "base + files MiB", "adapters MiB", "ratio", "<= +10%"),
            memory,
        )
        + "\n"
        + markdown_table(
            ("variant", "greedy row", "ms/token", "min - max", "floor ms", "floor/measured"), decode
        )
        + failed
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_base_args(parser)
    parser.add_argument("--adapters-dir", type=Path, help="real adapters (random ones make up the number)")
    parser.add_argument("--split", default="eval", choices=("eval", "train", "all"))
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--variants", default="4bit,bf16", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--naive-questions", type=int, default=6)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--prompts", default="zero-shot,principled")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--memory-adapters", default="1,3,8")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument(
        "--generator-kwargs",
        action="append",
        default=None,
        metavar="JSON",
        help="a JSON object passed to Generator(...); repeat it to compare settings",
    )
    parser.add_argument("--bandwidth-gbs", type=float, help="the card's memory bandwidth (default: by name)")
    parser.add_argument("--out", type=Path, help="default: bench/results/<date>-serving-speed/")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU, a few questions")
    args = parser.parse_args(argv)
    if args.smoke:  # smoke defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if not logging.getLogger().handlers:  # progress on stderr when run as a script
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    kwargs_sets = [json.loads(text) for text in (args.generator_kwargs or ["{}"])]
    if not all(isinstance(k, dict) for k in kwargs_sets):
        raise SystemExit("--generator-kwargs must be a JSON object")
    cfg = SpeedConfig(
        device=device,
        questions=args.questions,
        naive_questions=args.naive_questions,
        chunk=args.chunk,
        adapters=args.adapters,
        prompts=tuple(p.strip() for p in args.prompts.split(",") if p.strip()),
        beams=args.beams,
        new_tokens=args.new_tokens,
        memory_counts=tuple(int(n) for n in args.memory_adapters.split(",") if n.strip()),
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        bandwidth_gbs=args.bandwidth_gbs,
    )
    out = args.out or default_out("serving-speed")
    questions = load_questions(args.data, split=args.split, count=max(cfg.questions, cfg.naive_questions))
    env = environment(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving-speed-") as tmp:
        scratch = Path(tmp)
        cache = scratch / "cache" if args.smoke else args.cache_dir
        base = resolve_base(args.model, args.random_init, scratch, cache, device=device)
        logger.info("base %s ready in %s", base.key, base.path)
        specs, synthetic = adapter_specs(
            base,
            args.adapters_dir,
            max(cfg.adapters, *cfg.memory_counts),
            scratch,
            r=args.lora_r,
            alpha=args.lora_alpha,
        )
        logger.info("%d adapters ready (%d random)", len(specs), len(synthetic))
        rows = run_all(variants, kwargs_sets, base, specs, questions, cfg)
    report = {
        "environment": env,
        "total_seconds": round(time.perf_counter() - started, 1),
        "config": asdict(cfg),
        "model": args.model if args.random_init is None else f"random init of {args.random_init}",
        "base_key": base.key,
        "data": {"path": str(args.data), "split": args.split, "questions": len(questions)},
        "adapters": [s.name for s in specs],
        "synthetic_adapters": synthetic,
        "candidates_per_question": cfg.adapters * len(cfg.prompts) * cfg.beams,
        "rows": rows,
    }
    text = tables(report)
    write_json(out / "serving_speed.json", report)
    (out / "serving_speed.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"wrote {out / 'serving_speed.json'}\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
