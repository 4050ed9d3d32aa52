"""The one-kernel stacked LoRA (`models/kernels/lora_kernel.py`) per group shape and launch setting, against
the matmul path it replaces: microseconds a call, replayed from a CUDA graph
(triton.testing.do_bench_cudagraph).

    python -m bench.lora_kernel_tune [--rows 1,18] [--rank 48] [--out DIR]

Shapes are the 0.5B model's groups: q/k/v (896 -> 896 + 128 + 128), gate/up (896 -> 2 x 4,864), o (896 ->
896) and down (4,864 -> 896). CUDA only. Prints a table, writes JSON under
`bench/results/<date>-lora-kernel-tune/`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from bench.measure import graph_us, settings_us
from bench.workload import default_out, environment, markdown_table, write_json

GROUPS = {
    "q/k/v": ((896, 128, 128), 896),
    "gate/up": ((4864, 4864), 896),
    "o": ((896,), 896),
    "down": ((896,), 4864),
}
SETTINGS = [  # (block_k, num_warps, num_stages)
    *itertools.product((64, 128, 256), (4, 8), (2, 3)),
]


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from models.kernels import lora_kernel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,18")
    parser.add_argument("--rank", type=int, default=48)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    for (group, (outs, in_features)), rows in itertools.product(
        GROUPS.items(), [int(r) for r in args.rows.split(",")]
    ):
        rank, dev, dt = args.rank, "cuda", torch.bfloat16
        starts = [sum(outs[:i]) for i in range(len(outs))]
        x = torch.randn(rows, in_features, device=dev, dtype=dt)
        a = torch.randn(len(outs) * rank, in_features, device=dev, dtype=dt) * 0.05
        mask = torch.ones(rows, rank, device=dev, dtype=dt)
        b = torch.randn(sum(outs), rank, device=dev, dtype=dt) * 0.05
        out = torch.zeros(rows, sum(outs), device=dev, dtype=dt)

        def matmuls() -> None:  # timed right below, in this iteration
            h = (F.linear(x, a).view(rows, len(outs), rank) * mask[:, None, :]).view(rows, -1)  # noqa: B023
            for i, (start, size) in enumerate(zip(starts, outs, strict=True)):  # noqa: B023
                cols = out[:, start : start + size]  # noqa: B023
                cols.addmm_(h[:, i * rank : (i + 1) * rank], b[start : start + size].t())  # noqa: B023

        row = {"group": group, "rows": rows, "matmuls_us": graph_us(matmuls)}
        timings = settings_us(
            lambda **setting: lora_kernel.launch(x, a, mask, b, out, starts, **setting),  # noqa: B023
            ("block_k", "num_warps", "num_stages"),
            SETTINGS,
            f"{group} {rows}",
        )
        best = min(timings, key=timings.get)
        row.update(default_us=timings.get("128/4/3"), best=best, best_us=timings[best], all=timings)
        results.append(row)
        sys.stderr.write(
            f"{row['group']} rows {rows}: matmuls {row['matmuls_us']} us, default "
            f"{row['default_us']} us, best {best} {row['best_us']} us\n"
        )
    table = markdown_table(
        ("group", "rows", "matmul path us", "kernel us (128/4/3)", "best block_k/warps/stages", "best us"),
        [(r["group"], r["rows"], r["matmuls_us"], r["default_us"], r["best"], r["best_us"]) for r in results],
    )
    sys.stdout.write(table + "\n")
    out_dir = args.out or default_out("lora-kernel-tune")
    write_json(out_dir / "lora_kernel_tune.json", {"environment": environment("cuda"), "results": results})
    (out_dir / "lora_kernel_tune.md").write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
