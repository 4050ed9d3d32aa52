"""Training throughput of the two backends: the same member for N steps with unsloth, then with peft.

    python -m bench.train_backends --config recipes/korquad-qwen0.5b.toml [--member NAME] [--steps 40]
        [--warmup-steps 5] [--backends unsloth,peft] [--set train.batch_size=8] [--out bench/results]
    python -m bench.train_backends --dry-run      # CPU-safe check of the whole path on the tiny model

Each backend runs in its own process (unsloth patches transformers and peft when imported, so a peft run in
the same process would not be plain peft), trains with the recipe's settings, no validation, `max_steps` =
--steps, and reports tokens/s over the steps after the warmup, and peak GPU memory
(`torch.cuda.max_memory_allocated`). The table is printed; the JSON goes to bench/results/.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRY_RUN = [
    "train.base=tiny-random",
    "train.data=tests/fixtures/news_qa.json",
    "train.split=all",
    "train.device=cpu",
    "train.quantization=none",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.holdout_fraction=0.0",
    "members.r=4",
    "members.alpha=8",
]


def worker(args: argparse.Namespace) -> int:
    """One backend in this process; writes its measurements to --result."""
    from training.backends import prepare, software_versions
    from training.config import load_recipe

    overrides = [
        *args.overrides,
        f"train.backend={args.worker}",
        f"train.max_steps={args.steps}",
        "train.eval_at_start=false",
        "train.progress=false",
    ]
    run = load_recipe(args.config, overrides)
    run = run.select([args.member or run.members[0].name])
    config, member = run.train, run.members[0]
    device, backend = prepare(config)  # unsloth, when chosen, is imported before transformers

    import torch

    from training.backends import load_training_base
    from training.data import PromptEncoder, encode_examples, load_training_data
    from training.runner import resolve_base
    from training.trainer import JsonlLog, train_member

    resolved = resolve_base(config)
    started = time.perf_counter()
    base = load_training_base(backend, resolved, config, device)
    data = load_training_data(config)
    examples, _ = encode_examples(
        data.train,
        PromptEncoder(base.tokenizer),
        member.prompt_style,
        max_seq_len=config.max_seq_len,
        policy=config.length_policy,
    )
    model, _ = base.attach(member)
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "log.jsonl"
        result = train_member(
            model,
            examples,
            member,
            config,
            pad_id=base.tokenizer.pad_token_id,
            device=device,
            bf16=base.bf16,
            log=JsonlLog(log_path),
        )
        steps = [json.loads(line) for line in log_path.read_text().splitlines()]
    steady = [s for s in steps if s["step"] > args.warmup_steps] or steps
    report = {
        "backend": backend,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "member": member.name,
        "prompt_style": member.prompt_style,
        "quantization": base.quantization,
        "precision": "bf16" if base.bf16 else "fp32",
        "gradient_checkpointing": config.gradient_checkpointing,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "max_seq_len": config.max_seq_len,
        "r": member.r,
        "steps": result.steps,
        "warmup_steps_excluded": args.warmup_steps if steady is not steps else 0,
        "tokens_per_second": round(sum(s["tokens"] for s in steady) / sum(s["seconds"] for s in steady), 1),
        "tokens_per_second_all_steps": round(result.tokens_per_second, 1),
        "seconds_per_step": round(sum(s["seconds"] for s in steady) / len(steady), 4),
        "peak_gpu_memory_bytes": result.peak_memory_bytes,
        "load_seconds": round(load_seconds, 1),
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "software": software_versions(backend),
    }
    Path(args.result).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _table(reports: list[dict]) -> str:
    lines = [
        "| backend | device | steps | tokens/s | s/step | peak GPU memory | load s | loss first -> last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if "error" in r:
            lines.append(f"| {r['backend']} | - | - | - | - | - | - | failed: {r['error'][:60]} |")
            continue
        memory = (
            "-" if r["peak_gpu_memory_bytes"] is None else f"{r['peak_gpu_memory_bytes'] / 2**30:.2f} GiB"
        )
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['steps']} | {r['tokens_per_second']:.0f} | "
            f"{r['seconds_per_step']:.3f} | {memory} | {r['load_seconds']} | "
            f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "korquad-qwen0.5b.toml"))
    parser.add_argument("--member", help="the recipe member to train (default: the first)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of tokens/s")
    parser.add_argument("--backends", default="unsloth,peft")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the tiny model on the CPU, peft only, 3 steps, results in a temporary folder",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.overrides = [*DRY_RUN, *args.overrides]
        args.backends, args.steps, args.warmup_steps = "peft", 3, 1
        args.out = tempfile.mkdtemp(prefix="train-backends-")
    if args.worker:
        return worker(args)

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            result = Path(tmp) / f"{backend}.json"
            command = [
                sys.executable,
                "-m",
                "bench.train_backends",
                "--worker",
                backend,
                "--result",
                str(result),
                "--config",
                args.config,
                "--steps",
                str(args.steps),
                "--warmup-steps",
                str(args.warmup_steps),
            ]
            command += ["--member", args.member] if args.member else []
            command += [f"--set={o}" for o in args.overrides]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not result.is_file():
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                sys.stderr.write(done.stderr[-4000:])
                reports.append({"backend": backend, "error": tail[0]})
                continue
            reports.append(json.loads(result.read_text()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_backends-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {"config": args.config, "overrides": args.overrides, "steps": args.steps, "results": reports},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    sys.stdout.write(_table(reports) + f"wrote {path}\n")
    return 0 if all("error" not in r for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
