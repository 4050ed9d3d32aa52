"""Training throughput of the backends and trainers: the same member, the same examples, N steps each.

    python -m bench.train_backends --config recipes/korquad-qwen0.5b.toml [--member NAME] [--steps 30]
        [--warmup-steps 5] [--variants peft:loop,unsloth:sft:padding_free@batch_size=16;grad_accum=1]
        [--timeout 180] [--set train.batch_size=8] [--flops-per-second 7.9e14] [--out DIR]
    python -m bench.train_backends --dry-run      # CPU check of the whole path: tiny model, peft, 3 steps

A variant is `BACKEND[:TRAINER[:BATCHING]][@KEY=VALUE;...]`: backend peft or unsloth, trainer `loop` (the
hand-written loop, `training.trainer`) or `sft` (TRL's SFTTrainer, `training.sft`), batching `padded`,
`padding_free` or `packed` (sft only), and `train.KEY` overrides of that variant alone (for example
`unsloth:sft:padding_free@batch_size=16;grad_accum=1`: the same global batch in one micro-batch).

This process tokenizes the examples once (the member's prompt style, the recipe's length policy, twice as
many as the steps use: 2 x steps x batch_size x grad_accum, a seeded sample of the training split) and
writes them to a file. Each variant then runs in a process of its own, so unsloth's patches of transformers
and peft never reach another run, under a time limit (`--timeout`): it loads the base, trains the member for
--steps optimizer steps with the recipe's settings and no validation, and reports tokens/s over the steps
after --warmup-steps (real tokens, padding not counted), the FLOP share (6 x parameters x tokens/s over
--flops-per-second, the card's dense bf16 rate), peak GPU memory (`torch.cuda.max_memory_allocated`), load
time, losses and any skipped non-finite steps. A packed variant's steps hold more sequences (rows of
`batch_size x max_seq_len` tokens), so it trains on more of the examples file than the others. A variant
that fails or runs out of time is recorded with its error and the others still run. Everything goes to
`DIR/train_backends-<UTC time>/`: `report.json` (rewritten after each variant), `report.md` (the table, also
printed), and per variant its output (`<variant>.log`) and step log (`<variant>.train_log.jsonl`). Exit
status 0 when at least one variant was measured. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
TRAINERS, BATCHING = ("loop", "sft"), ("padded", "padding_free", "packed")
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*|^qa-train: error: .*")


def parse_variant(text: str) -> list[str]:
    """`BACKEND[:TRAINER[:BATCHING]][@KEY=VALUE;...]` -> its `train.*` overrides (see the module doc)."""
    head, _, extra = text.partition("@")
    parts = head.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError(f"variant {text!r}: expected BACKEND[:TRAINER[:BATCHING]][@KEY=VALUE;...]")
    overrides = [f"train.backend={parts[0]}"]
    if len(parts) > 1:
        if parts[1] not in TRAINERS:
            raise ValueError(f"variant {text!r}: trainer must be one of {', '.join(TRAINERS)}")
        overrides.append(f"train.trainer={parts[1]}")
    if len(parts) > 2:
        if parts[2] not in BATCHING:
            raise ValueError(f"variant {text!r}: batching must be one of {', '.join(BATCHING)}")
        overrides.append(f"train.batching={parts[2]}")
    for item in filter(None, extra.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {item!r} is not KEY=VALUE")
        overrides.append(f"train.{key}={value}")
    return overrides


def file_name(variant: str) -> str:
    """A variant as a file name (letters, digits, '.', '_' and '-')."""
    return re.sub(r"[^\w.-]+", "-", variant).strip("-")


def _load_run(args: argparse.Namespace, variant: str | None = None) -> Any:
    """The recipe with the bench's overrides (and the variant's), restricted to the one member measured."""
    from training.config import load_recipe

    overrides = [*args.overrides, f"train.max_steps={args.steps}", "train.eval_at_start=false"]
    overrides += ["train.progress=false", *(parse_variant(variant) if variant else [])]
    run = load_recipe(args.config, overrides)
    return run.select([args.member or run.members[0].name])


def write_examples(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Tokenize the examples every variant trains on, once; returns what was written."""
    from models.base.loading import load_tokenizer
    from training.data import PromptEncoder, encode_examples, load_training_data
    from training.runner import resolve_base

    run = _load_run(args)
    config, member = run.train, run.members[0]
    resolved = resolve_base(config)
    questions = list(load_training_data(config).train)
    random.Random(member.order_seed).shuffle(questions)
    needed = 2 * args.steps * config.batch_size * config.grad_accum  # twice: a packed step holds more
    examples, report = encode_examples(
        questions[:needed],
        PromptEncoder(load_tokenizer(resolved.path)),
        member.prompt_style,
        max_seq_len=config.max_seq_len,
        policy=config.length_policy,
    )
    rows = [{"id": e.id, "input_ids": list(e.input_ids), "prompt_len": e.prompt_len} for e in examples]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return {"examples": len(rows), "shortened": len(report.shortened), "dropped": len(report.dropped)}


def full_parameters(model: Any) -> int:
    """Parameters of the model as trained (base and LoRA), a 4-bit weight counted by its unpacked shape."""
    total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        total += state.shape.numel() if state is not None else param.numel()
    return total


def worker(args: argparse.Namespace) -> int:
    """One variant in this process: train on the examples file, write the measurements to --result."""
    from training.backends import batching_for, prepare, software_versions

    run = _load_run(args, args.worker)
    config, member = run.train, run.members[0]
    device, backend = prepare(config)  # unsloth, when chosen, is imported before transformers
    config = dataclasses.replace(config, batching=batching_for(config, backend, device))

    import torch

    from training.backends import load_training_base
    from training.data import TrainExample
    from training.runner import resolve_base
    from training.trainer import JsonlLog, train_member

    rows = json.loads(Path(args.examples).read_text(encoding="utf-8"))
    examples = [TrainExample(r["id"], tuple(r["input_ids"]), r["prompt_len"]) for r in rows]
    started = time.perf_counter()
    base = load_training_base(backend, resolve_base(config), config, device)
    model, _ = base.attach(member)
    load_seconds = time.perf_counter() - started
    log_path = Path(args.step_log)
    log_path.unlink(missing_ok=True)
    if config.trainer == "sft":
        from training.sft import fused_head_for, train_member_sft

        with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as checkpoints:
            result = train_member_sft(
                model,
                examples,
                member,
                config,
                tokenizer=base.tokenizer,
                device=device,
                bf16=base.bf16,
                checkpoints=Path(checkpoints),
                log=JsonlLog(log_path),
                fused_head=fused_head_for(backend, device),
            )
    else:
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
    steps = [r for r in map(json.loads, log_path.read_text().splitlines()) if r["event"] == "step"]
    steady = [s for s in steps if s["step"] > args.warmup_steps] or steps
    cuda = device == "cuda"
    tokens_per_second = sum(s["tokens"] for s in steady) / sum(s["seconds"] for s in steady)
    parameters = full_parameters(model)
    report = {
        "variant": args.worker,
        "backend": backend,
        "trainer": config.trainer,
        "batching": config.batching,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "member": member.name,
        "prompt_style": member.prompt_style,
        "quantization": base.quantization,
        "precision": "bf16" if base.bf16 else "fp32",
        "attention": base.attention(),
        "gradient_checkpointing": config.gradient_checkpointing,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "max_seq_len": config.max_seq_len,
        "r": member.r,
        "examples": len(examples),
        "steps": result.steps,
        "warmup_steps_excluded": args.warmup_steps if steady is not steps else 0,
        "tokens_per_second": round(tokens_per_second, 1),
        "parameters": parameters,
        "flop_share": round(6 * parameters * tokens_per_second / args.flops_per_second, 4) if cuda else None,
        "tokens_per_second_all_steps": round(result.tokens_per_second, 1),
        "seconds_per_step": round(sum(s["seconds"] for s in steady) / len(steady), 4),
        "peak_gpu_memory_bytes": result.peak_memory_bytes,
        "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved()) if cuda else None,
        "load_seconds": round(load_seconds, 1),
        "step_losses": [round(x, 4) for x in result.losses],
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "skipped_steps": result.skipped_steps,
        "software": software_versions(backend),
    }
    Path(args.result).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def run_variant(args: argparse.Namespace, variant: str, examples: Path, folder: Path) -> dict[str, Any]:
    """Run one variant's worker process under the time limit; its measurements, or its error."""
    name = file_name(variant)
    result = folder / f".{name}.result.json"
    command = [
        sys.executable,
        "-m",
        "bench.train_backends",
        *("--worker", variant, "--result", str(result), "--examples", str(examples)),
        *("--step-log", str(folder / f"{name}.train_log.jsonl"), "--config", args.config),
        *("--flops-per-second", str(args.flops_per_second)),
        *("--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)),
        *(["--member", args.member] if args.member else []),
        *(f"--set={o}" for o in args.overrides),
    ]
    log = folder / f"{name}.log"
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        # A session of its own, so that its whole process group (compile workers included) can be stopped.
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        code: int | None = None
        try:
            code = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # past its time, or this process interrupted: the worker's whole group goes
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    seconds = round(time.perf_counter() - started, 1)
    if code == 0 and result.is_file():
        report = json.loads(result.read_text(encoding="utf-8"))
        result.unlink()
        return {**report, "wall_seconds": seconds}
    error = f"timed out after {args.timeout} s" if code is None else _error_line(log, code)
    sys.stderr.write(f"{variant} failed ({error}); its output: {log}\n")
    return {"variant": variant, "error": error, "wall_seconds": seconds, "log": log.name}


def _error_line(log: Path, code: int) -> str:
    """The exception a failed worker ended with (its last such line), else its last line of output."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    last = errors[-1] if errors else next((line for line in reversed(lines) if line), "no output")
    return f"exit {code}: {last[:400]}"


def table(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | device | steps | tokens/s | x first | FLOP share | s/step | peak GPU memory | load s | "
        "loss first -> last | skipped steps |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    first = next((r["tokens_per_second"] for r in reports if "error" not in r), None)
    for r in reports:
        if "error" in r:
            lines.append(
                f"| {r['variant']} | - | - | - | - | - | - | - | - | failed: {r['error'][:80]} | - |"
            )
            continue
        memory, share = r["peak_gpu_memory_bytes"], r["flop_share"]
        lines.append(
            f"| {r['variant']} | {r['device']} | {r['steps']} | {r['tokens_per_second']:.0f} | "
            f"{r['tokens_per_second'] / first:.2f} | {'-' if share is None else f'{share:.1%}'} | "
            f"{r['seconds_per_step']:.3f} | {'-' if memory is None else f'{memory / 2**30:.2f} GiB'} | "
            f"{r['load_seconds']} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
            f"{len(r['skipped_steps'])} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "korquad-qwen0.5b.toml"))
    parser.add_argument("--member", help="the recipe member to train (default: the first)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of tokens/s")
    parser.add_argument(
        "--variants",
        help="comma-separated BACKEND[:TRAINER[:BATCHING]][@KEY=VALUE;...], run in this order (default: "
        "peft:loop,unsloth:loop,unsloth:sft:padding_free)",
    )
    parser.add_argument(
        "--flops-per-second",
        type=float,
        default=7.9e14,
        help="the card's dense bf16 rate for the FLOP share (default 7.9e14, an H200's measured matmul rate)",
    )
    parser.add_argument("--timeout", type=int, default=180, help="seconds per variant, load included")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--out", help="folder for the results (default: bench/results; --dry-run: a temp dir)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the tiny model on the CPU, 3 steps (peft: loop and sft unless --variants)",
    )
    for hidden in ("--worker", "--result", "--examples", "--step-log"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    if args.dry_run:
        args.overrides = [*DRY_RUN, *args.overrides]
        args.variants, args.steps, args.warmup_steps = (
            args.variants or "peft:loop,peft:sft:padding_free",
            3,
            1,
        )
        args.out = args.out or tempfile.mkdtemp(prefix="train-backends-")
    default = "peft:loop,unsloth:loop,unsloth:sft:padding_free"
    variants = [v.strip() for v in (args.variants or default).split(",") if v.strip()]
    for variant in variants:
        parse_variant(variant)  # a bad one fails before any run
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(args.out or ROOT / "bench" / "results") / f"train_backends-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    examples = folder / ".examples.json"
    report: dict[str, Any] = {
        "date": stamp,
        "config": args.config,
        "member": args.member,
        "overrides": args.overrides,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "data": write_examples(args, examples),
        "results": [],
    }
    for variant in variants:
        report["results"].append(run_variant(args, variant, examples, folder))
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    examples.unlink()
    text = table(report["results"])
    (folder / "report.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"wrote {folder}\n")
    return 0 if any("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
