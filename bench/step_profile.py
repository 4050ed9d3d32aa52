"""Where a decode step's GPU time goes: kernels per step by kind, from a CUDA profile of the decode loop.

    python -m bench.step_profile --random-init .gpu-meta --data .gpu-data/KorQuAD_v1.0_dev.json \
        [--variant 4bit] [--rows 1 --beams 1] [--tokens 32] [--graphs on,off]
    python -m bench.step_profile --smoke   # tiny-random on the CPU: CPU operators instead of kernels

`bench/step_ops.py` counts operators on the CPU; this measures them on the card. The service's generator
(decode loop, one resident adapter, a KorQuAD eval prompt) decodes exactly N new tokens and exactly 1 under
`torch.profiler` with CUDA activity; the difference / (N - 1) is one step: its kernels (count and summed
duration, by kind: bitsandbytes 4-bit, cuBLAS matmul, attention, norm, pointwise and copies, other) and
the step's wall time without the profiler. Kernel time near the wall time means the kernels themselves are
the cost (many short kernels: fuse or remove them); wall time well above it means launches or the host
(what a CUDA graph removes). `--graphs on` profiles the loop replaying its CUDA graphs, as served (CUPTI
reports the kernels a graph launches), `off` the same loop launching each kernel. Prints a table, writes
JSON under `bench/results/<date>-step-profile/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.compile_probe import probe_generator
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

logger = logging.getLogger("bench.step_profile")

KINDS = (  # the first pattern a kernel's name matches names its kind (cuDNN's SDPA names its arch: sm90)
    ("4-bit matmul (bitsandbytes)", r"4bit|kgemm|gemv_4|bnb|dequantize"),
    ("stacked LoRA (models.kernels.lora_kernel)", r"^_stacked_lora_kernel|^_shrink_kernel|^_expand_kernel"),
    ("attention (models.kernels.attention_kernel)", r"^_attend_kernel|^_combine_kernel"),
    ("attention (SDPA)", r"flash|fmha|attention|sdpa"),
    ("log-softmax of the logits", r"softmax"),
    ("matmul (cuBLAS / CUTLASS)", r"gemm|gemv|cutlass|nvjet|sm90_|sm80_|cublas|splitk|xmma"),
    ("RMSNorm (PyTorch's fused kernel)", r"rms_norm|rmsnorm|layer_norm"),
    ("pointwise, copies, reductions", r"elementwise|vectorized|reduce|copy|cat|index|fill|where|triton"),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def _kernels(gen: Any, prompt: Any, batch: tuple[int, int], tokens: int, device: str) -> dict[str, list]:
    """name -> [count, total us] of the device events of one forced decode of `tokens` tokens."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        forced_decode(gen, [prompt] * batch[0], ["probe"] * batch[0], tokens, beams=batch[1])
        sync(device)
    wanted = DeviceType.CUDA if device.startswith("cuda") else DeviceType.CPU
    found: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type != wanted:
            continue
        if wanted == DeviceType.CPU and (event.cpu_parent is not None or not event.name.startswith("aten::")):
            continue  # on the CPU: top-level ATen operators stand in for kernels
        found[event.name][0] += 1
        found[event.name][1] += event.time_range.elapsed_us()
    return found


def profile_step(gen: Any, prompt: Any, batch: tuple[int, int], tokens: int, device: str) -> dict[str, Any]:
    """One step's wall time (warming the loop up for this shape first), then its kernels, by name and kind."""
    wall_ms = ms_per_step(gen, prompt, batch, tokens, 3, device)
    many = _kernels(gen, prompt, batch, tokens, device)
    one = _kernels(gen, prompt, batch, 1, device)
    steps = tokens - 1
    per_name = {}
    for name, (count, us) in many.items():
        base_count, base_us = one.get(name, (0, 0.0))
        if count - base_count > 0:
            per_name[name] = ((count - base_count) / steps, (us - base_us) / steps)
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, (count, us) in per_name.items():
        by_kind[kind_of(name)][0] += count
        by_kind[kind_of(name)][1] += us
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "wall_ms": round(wall_ms, 3),
        "kernels": round(sum(c for c, _ in per_name.values()), 1),
        "kernel_ms": round(sum(us for _, us in per_name.values()) / 1e3, 3),
        "by_kind": {k: {"kernels": round(c, 1), "us": round(us, 1)} for k, (c, us) in by_kind.items()},
        "top": [{"name": n[:90], "kernels": round(c, 1), "us": round(us, 1)} for n, (c, us) in top],
        "all": [
            {"name": n, "kind": kind_of(n), "kernels": round(c, 2), "us": round(us, 2)}
            for n, (c, us) in sorted(per_name.items(), key=lambda kv: -kv[1][1])
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_base_args(parser)
    parser.add_argument("--variant", default="4bit", choices=("4bit", "bf16"))
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--graphs", default="on,off", help="comma-separated: on (as served), off")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--generator-kwargs", type=json.loads, default={}, help="JSON passed to Generator(...) too"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random_init, args.device, args.variant = "tiny-random", None, "cpu", "bf16"
        args.tokens, args.graphs = 4, "off"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    batch = (args.rows, args.beams)
    example = load_questions(args.data, split="eval", count=1)[0] if not args.smoke else None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = resolve_base(args.model, args.random_init, Path(scratch), args.cache_dir, device=args.device)
        (spec,) = make_lora_adapters(base, Path(scratch) / "adapters", ["probe"])
        for graphs in [g.strip() for g in args.graphs.split(",") if g.strip()]:
            loop = {"decoder": "loop", "cuda_graphs": graphs == "on", **args.generator_kwargs}
            gen = probe_generator(base, spec, args.variant, args.device, loop)
            context = example.context if example else "서울은 대한민국의 수도이다."
            question = example.question if example else "수도는?"
            prompt = render_prompt("zero-shot", context, question, chat=gen.has_chat_template)
            results[graphs] = profile_step(gen, prompt, batch, args.tokens, args.device)
            summary = {k: v for k, v in results[graphs].items() if k not in ("top", "all")}
            logger.info("graphs %s: %s", graphs, summary)
            del gen
    kinds = sorted({k for r in results.values() for k in r["by_kind"]})
    rows = []
    for graphs, r in results.items():
        for kind in kinds:
            entry = r["by_kind"].get(kind, {"kernels": 0, "us": 0})
            rows.append((graphs, kind, entry["kernels"], entry["us"]))
        rows.append((graphs, "**all kernels**", r["kernels"], round(r["kernel_ms"] * 1e3, 1)))
        rows.append((graphs, "**step wall time**", "", round(r["wall_ms"] * 1e3, 1)))
    unit = "kernels" if args.device.startswith("cuda") else "CPU operators"
    table = markdown_table(("CUDA graphs", "kind", f"{unit} per step", "us per step"), rows)
    title = (
        f"one decode step of the loop, {args.variant}, {args.rows} row(s) x {args.beams} beam(s), "
        f"1 adapter, on {args.device}"
    )
    top = "\n\n".join(
        f"top kernels, graphs {graphs}:\n\n"
        + markdown_table(("kernel", "per step", "us per step"), [tuple(t.values()) for t in r["top"]])
        for graphs, r in results.items()
    )
    text = f"{title}\n\n{table}\n\n{top}\n"
    sys.stdout.write(text)
    out = args.out or default_out("step-profile")
    report = {
        "environment": environment(args.device),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    write_json(out / "step_profile.json", report)
    (out / "step_profile.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
