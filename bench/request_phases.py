"""Where one `/answer`'s time goes, phase by phase, on the service's own path (no HTTP).

    python -m bench.request_phases --random-init .gpu-meta --data .gpu-data/KorQuAD_v1.0_dev.json \
        [--variant 4bit] [--generator-kwargs '{"compile_backend": "inductor"}'] [--requests 8]
    python -m bench.request_phases --model qwen2.5-coder-1.5b --adapters-dir adapters/qwen2.5-coder-1.5b \
        --data .gpu-data/KorQuAD_v1.0_dev.json --variant bf16 --rule likelihood [--profile DIR]
    python -m bench.request_phases --smoke     # tiny-random on the CPU

The pipeline (3 random adapters x 2 prompts x 3 beams, or one greedy row with `--kind greedy`) answers
KorQuAD eval questions one at a time, as `/answer` at concurrency 1 does, after answering them all once (so
the decode loop's shapes exist, as a warmed server's do). Each phase is timed by wrapping the method that runs
it, with the device synchronised at its edges, so GPU work is charged to the phase that queued it:
tokenize (`Generator._encode`), prefill (the forward over the prompts, `DecodeLoop.decode` less its steps),
steps (`DecodeLoop._steps`: every decode step and the token choice), detokenize (the loop's texts), and the
rest of `answer` (planning, rendering prompts, cleaning and voting candidates). Prints a table of
milliseconds per request (median) and writes JSON under `bench/results/<date>-request-phases/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import sync
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

logger = logging.getLogger("bench.request_phases")
PHASES = ("tokenize", "prefill", "steps", "detokenize", "score", "score-tails", "score-prefill", "rest")


class PhaseClock:
    """Milliseconds per phase of the current request, each phase's edges synchronised with the device."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.current: dict[str, float] = defaultdict(float)
        self._wrapped: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Time `owner.name` (a method) as `phase`; a nested timed call is subtracted from its caller."""
        inner: Callable[..., Any] = getattr(owner, name)
        self._wrapped.append((owner, name, owner.__dict__.get(name, inner)))

        def timed(*args: Any, **kwargs: Any) -> Any:
            import torch

            sync(self.device)
            before = dict(self.current)
            started = time.perf_counter()
            try:
                with torch.profiler.record_function(f"phase:{phase}"):
                    return inner(*args, **kwargs)
            finally:
                sync(self.device)
                nested = sum(self.current[p] - before.get(p, 0.0) for p in self.current)
                self.current[phase] += (time.perf_counter() - started) * 1000 - nested

        setattr(owner, name, timed)

    def restore(self) -> None:
        """Put every wrapped method back (the classes are shared: a later caller in this process, a test,
        must not run inside this clock's profiler ranges)."""
        for owner, name, original in reversed(self._wrapped):
            setattr(owner, name, original)
        self._wrapped.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_base_args(parser)
    parser.add_argument("--variant", default="4bit", choices=("4bit", "bf16"))
    parser.add_argument("--kind", default="ensemble", choices=("ensemble", "greedy"))
    parser.add_argument("--generator-kwargs", default="{}", help="JSON: Generator arguments (decoder: auto)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--adapters-dir", type=Path, help="real members: the service's engine over this folder"
    )
    parser.add_argument(
        "--rule",
        choices=("count", "likelihood", "file"),
        default="count",
        help="the vote's rule; file: the adapters folder's vote.json (needs --adapters-dir)",
    )
    parser.add_argument("--profile", type=Path, help="folder for a torch.profiler run of the same requests")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU, two requests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random_init, args.device, args.variant, args.requests = (
            "tiny-random",
            None,
            "cpu",
            "bf16",
            2,
        )
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from ensemble.pipeline import EnsemblePipeline, PipelineConfig, QARequest
    from ensemble.plan import Decoding, Member
    from ensemble.vote import VoteConfig
    from models.base.loading import LoadConfig, load_base
    from models.decode.generator import Generator
    from models.decode.loop import DecodeLoop

    out = args.out or default_out("request-phases")
    if args.smoke:
        questions = [("서울은 대한민국의 수도이다.", "수도는?"), ("비가 왔다.", "무엇이 왔나?")]
    else:
        questions = [
            (q.context, q.question) for q in load_questions(args.data, split="eval", count=args.requests)
        ]
    clock = PhaseClock(args.device)
    vote = None if args.rule == "file" else VoteConfig(rule=args.rule)
    if args.rule == "file" and args.adapters_dir is None:
        parser.error("--rule file needs --adapters-dir")
    prompts = ("zero-shot", "principled") if args.kind == "ensemble" else ("zero-shot",)
    strategy = {"strategy": "beam", "num_beams": 3} if args.kind == "ensemble" else {"strategy": "greedy"}
    decoding = Decoding(max_new_tokens=args.new_tokens, **strategy)
    with tempfile.TemporaryDirectory() as scratch:
        quantization = "4bit" if args.variant == "4bit" else "none"
        dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
        if args.adapters_dir is not None:
            from engine.builder import EngineConfig, build_engine

            engine = build_engine(
                EngineConfig(
                    model=args.model,
                    cache_dir=args.cache_dir,
                    adapters_dir=args.adapters_dir,
                    device=args.device,  # type: ignore[arg-type]  # checked by LoadConfig
                    quantization=quantization,
                    dtype=dtype,
                    decoder="auto",  # the service's default (app.settings)
                    default_prompts=prompts,
                    default_decoding=decoding,
                )
            )
            pipeline, tokenizer = engine.pipeline, engine.generator._tokenizer
            members = engine.members() if args.kind == "ensemble" else engine.members()[:1]
        else:
            base = resolve_base(
                args.model, args.random_init, Path(scratch), args.cache_dir, device=args.device
            )
            names = [f"bench-lora-{i:02d}" for i in range(1, 4)]
            specs = make_lora_adapters(base, Path(scratch) / "adapters", names)
            model, tokenizer = load_base(
                base.path, LoadConfig(device=args.device, quantization=quantization, dtype=dtype)
            )
            kwargs = {"decoder": "auto", **json.loads(args.generator_kwargs)}  # the service's default decoder
            generator = Generator(model, tokenizer, **kwargs)
            for spec in specs:
                generator.load_adapter(spec)
            members = [Member(adapter=n) for n in (names if args.kind == "ensemble" else names[:1])]
            pipeline = EnsemblePipeline(
                generator,
                PipelineConfig(default_prompts=prompts, default_decoding=decoding),
                default_members=lambda: members,
            )
            # random weights: every answer runs its budget
            model.generation_config.min_new_tokens = args.new_tokens
        requests = [QARequest(context=c, question=q, members=tuple(members), vote=vote) for c, q in questions]
        for request in requests:  # warm: every shape these requests meet exists (compiled, captured)
            pipeline.answer_many([request])
        clock.wrap(Generator, "_encode", "tokenize")
        clock.wrap(DecodeLoop, "decode", "prefill")
        clock.wrap(DecodeLoop, "_steps", "steps")
        clock.wrap(tokenizer, "decode", "detokenize")
        clock.wrap(Generator, "score", "score")
        clock.wrap(DecodeLoop, "score_tails", "score-tails")
        clock.wrap(Generator, "_score_rows", "score-prefill")
        rows: list[dict[str, float]] = []
        for request in requests:
            clock.current.clear()
            sync(args.device)
            started = time.perf_counter()
            pipeline.answer_many([request])
            sync(args.device)
            total = (time.perf_counter() - started) * 1000
            phases = {p: clock.current.get(p, 0.0) for p in PHASES if p != "rest"}
            phases["rest"] = total - sum(phases.values())
            rows.append({**phases, "total": total})
        try:
            if args.profile is not None:
                profile(args.profile, args.device, lambda: [pipeline.answer_many([r]) for r in requests[:3]])
        finally:
            clock.restore()
    summary = {key: round(statistics.median(r[key] for r in rows), 2) for key in (*PHASES, "total")}
    report = {
        "environment": environment(args.device),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "median_ms": summary,
        "requests": rows,
    }
    table = markdown_table(
        ("phase", "ms per request (median)", "share"),
        [(p, summary[p], f"{summary[p] / summary['total']:.0%}") for p in (*PHASES, "total")],
    )
    write_json(out / "request_phases.json", report)
    (out / "request_phases.md").write_text(table + "\n", encoding="utf-8")
    sys.stdout.write(table + "\n")
    return 0


def profile(folder: Path, device: str, work: Callable[[], Any]) -> None:
    """`work` under torch.profiler: operator tables by device and by host time, and a Chrome trace."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    folder.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        work()
        sync(device)
    averages = prof.key_averages()
    by_device = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    for name, key, limit in (("device", by_device, 40), ("host", "cpu_time_total", 60)):
        (folder / f"ops_by_{name}_time.txt").write_text(averages.table(sort_by=key, row_limit=limit), "utf-8")
    prof.export_chrome_trace(str(folder / "trace.json.gz"))  # gzipped by torch


if __name__ == "__main__":
    raise SystemExit(main())
