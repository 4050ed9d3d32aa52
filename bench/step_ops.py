"""Operators per decode step, by the module that runs them: what a CUDA graph of one step replays.

    python -m bench.step_ops --random-init .gpu-meta [--adapters 1] [--rows 1 --beams 1] [--tokens 8]
    python -m bench.step_ops --smoke     # tiny-random, a few tokens (the CPU test)

On a small model a decode step is bound by the number of kernels it launches, not by bytes
(docs/benchmarks.md: 4.4 ms a step on an H200 against a 0.1 ms bandwidth floor). This counts them without
a GPU: the decode loop (`Generator(decoder="loop")`, eager, fp32 on the CPU) decodes one batch of a
KorQuAD-sized prompt under a `TorchDispatchMode` that counts every ATen operator that computes (views,
reshapes and other metadata-only operators are left out: they launch nothing), once for N new tokens and
once for 1; the difference / (N - 1) is one step. Each operator is charged to the innermost module running
it (RMSNorm, attention, MLP, a stacked LoRA linear, ...); operators outside every module are the token
choice (`models.decode.search`) and the loop's own bookkeeping. On CUDA each counted operator is about one
kernel (bitsandbytes' 4-bit matmul is a few), so the table says where a step's launches go and what fusing
would remove. The weights never matter, so `--random-init` (a config.json + tokenizer folder) is enough.
Prints a table, writes JSON under `bench/results/<date>-step-ops/`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.measure import forced_decode
from bench.workload import (
    add_base_args,
    default_out,
    environment,
    make_lora_adapters,
    markdown_table,
    resolve_base,
    write_json,
)

logger = logging.getLogger("bench.step_ops")

METADATA_ONLY = {
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "slice",
    "select",
    "transpose",
    "t",
    "permute",
    "unsqueeze",
    "squeeze",
    "as_strided",
    "alias",
    "detach",
    "detach_",
    "lift_fresh",
    "unbind",
    "split",
    "split_with_sizes",
    "chunk",
    "narrow",
    "flatten",
    "unflatten",
    "_reshape_alias",
    "view_as",
    "expand_as",
    "empty",
    "empty_like",
    "empty_strided",
    "_local_scalar_dense",
    "is_nonzero",
    "item",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "size",
    "stride",
    "dim",
}


class _Counter(TorchDispatchMode):
    """Counts computing operators, charged to the innermost module on `stack`."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        no_op = bool(args) and out is args[0] and not func.overloadpacket.__name__.endswith("_")
        if func.overloadpacket.__name__ not in METADATA_ONLY and not no_op:  # e.g. `.to` its own dtype
            self.counts[self.stack[-1] if self.stack else "token choice and loop bookkeeping"] += 1
        return out


def _attach_module_names(model: torch.nn.Module, stack: list[str]) -> list[Any]:
    """Forward hooks that keep the innermost running module's class on `stack`."""
    handles = []
    for module in model.modules():
        label = type(module).__name__

        def push(_module, _args, label=label):  # noqa: ANN001
            stack.append(label)

        def pop(_module, _args, _out):  # noqa: ANN001
            stack.pop()

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    return handles


def count_ops(gen: Any, prompt: Any, adapters: list[str | None], beams: int, tokens: int) -> Counter[str]:
    """Operators of one batch decoding exactly `tokens` new tokens (EOS masked), by module."""
    stack: list[str] = []
    handles = _attach_module_names(gen.model, stack)
    try:
        with _Counter(stack) as counter:
            forced_decode(gen, [prompt] * len(adapters), adapters, tokens, beams=beams)
    finally:
        for handle in handles:
            handle.remove()
    return counter.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_base_args(parser, data=False)
    parser.add_argument("--adapters", type=int, default=1, help="resident adapters; rows cycle through them")
    parser.add_argument("--rows", type=int, default=1, help="prompt rows in the batch")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=600, help="about the KorQuAD median prompt")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny-random, a few tokens")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random_init, args.tokens, args.prompt_tokens = "tiny-random", None, 3, 20
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from models.base.loading import LoadConfig, load_base
    from models.decode.generator import Generator

    with tempfile.TemporaryDirectory() as scratch:
        base = resolve_base(args.model, args.random_init, Path(scratch), args.cache_dir)
        model, tokenizer = load_base(
            base.path, LoadConfig(device="cpu", quantization="none", dtype="float32")
        )
        gen = Generator(model, tokenizer, stop_at_newline=False, decoder="loop")
        names = [f"a{i}" for i in range(args.adapters)]
        for spec in make_lora_adapters(base, Path(scratch) / "adapters", names, r=8, alpha=16):
            gen.load_adapter(spec)
        adapters: list[str | None] = [names[i % len(names)] if names else None for i in range(args.rows)]
        prompt = " ".join(["뉴스"] * args.prompt_tokens)
        many = count_ops(gen, prompt, adapters, args.beams, args.tokens)
        one = count_ops(gen, prompt, adapters, args.beams, 1)
    steps = args.tokens - 1
    per_step = {k: (many[k] - one.get(k, 0)) / steps for k in many}
    per_step = {k: round(v, 1) for k, v in sorted(per_step.items(), key=lambda kv: -kv[1]) if v > 0}
    total = round(sum(per_step.values()), 1)
    table = markdown_table(
        ["module", "operators per step", "share"],
        [*[(k, v, f"{v / total:.0%}") for k, v in per_step.items()], ("**total**", f"**{total}**", "100%")],
    )
    title = (
        f"operators per decode step: {args.rows} row(s) x {args.beams} beam(s), {args.adapters} adapter(s) "
        "resident, the decode loop (eager, CPU, fp32); views and other metadata-only operators not counted"
    )
    sys.stdout.write(f"{title}\n\n{table}\n")
    out = args.out or default_out("step-ops")
    report = {
        **environment("cpu"),
        "model": args.model if args.random_init is None else f"random init of {args.random_init}",
        "rows": args.rows,
        "beams": args.beams,
        "adapters": args.adapters,
        "tokens": args.tokens,
        "per_step": per_step,
        "total": total,
    }
    write_json(out / "step_ops.json", report)
    (out / "step_ops.md").write_text(f"{title}\n\n{table}\n", encoding="utf-8")
    logger.info("wrote %s", out / "step_ops.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
