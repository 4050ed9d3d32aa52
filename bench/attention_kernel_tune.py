"""The decode step's attention kernel (`models/kernels/attention_kernel.py`) per batch, cache length and
launch setting, against the path it replaces (transformers' rotary, the `StepCache` write, `grouped_sdpa` and
the output's reshape): microseconds a layer call, replayed from a CUDA graph
(triton.testing.do_bench_cudagraph).

    python -m bench.attention_kernel_tune [--rows 1,18,288] [--lengths 256,1024,2048] [--out DIR]

Shapes are the 0.5B model's attention (14 query heads, 2 KV heads of 64), bf16. CUDA only. Prints a table,
writes JSON under `bench/results/<date>-attention-kernel-tune/`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from bench.measure import graph_us, settings_us
from bench.workload import default_out, environment, markdown_table, write_json

HEADS, KV_HEADS, DIM = 14, 2, 64
SETTINGS = [  # (split_l, block_l, num_warps)
    *itertools.product((64, 128, 256, 512, 1024, 2048), (32, 64), (2, 4)),
]


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    from models.decode.fast_paths import grouped_sdpa
    from models.kernels import attention_kernel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,18,288")
    parser.add_argument("--lengths", default="256,1024,2048")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    dev, dt = "cuda", torch.bfloat16
    for rows, length in itertools.product(
        [int(r) for r in args.rows.split(",")], [int(n) for n in args.lengths.split(",")]
    ):
        fused = torch.randn(rows, (HEADS + 2 * KV_HEADS) * DIM, device=dev, dtype=dt)
        query, key, value = fused.split([HEADS * DIM, KV_HEADS * DIM, KV_HEADS * DIM], dim=1)
        angles = torch.rand(rows, DIM // 2, device=dev) * 100
        cos = torch.cat((angles.cos(), angles.cos()), -1).to(dt)
        sin = torch.cat((angles.sin(), angles.sin()), -1).to(dt)
        keys = torch.randn(rows, KV_HEADS, length, DIM, device=dev, dtype=dt)
        values = torch.randn_like(keys)
        mask = torch.ones(rows, length, device=dev, dtype=torch.bool)
        mask[:, length // 2 : length - 32] = (
            False  # a prompt's slots, then the new tokens' (the loop's layout)
        )
        cursor = torch.tensor([length - 16], device=dev)

        def transformers_path() -> None:  # timed right below, in this iteration
            q = query.view(rows, 1, HEADS, DIM).transpose(1, 2)  # noqa: B023
            k = key.view(rows, 1, KV_HEADS, DIM).transpose(1, 2)  # noqa: B023
            v = value.view(rows, 1, KV_HEADS, DIM).transpose(1, 2)  # noqa: B023
            q, k = apply_rotary_pos_emb(q, k, cos[:, None], sin[:, None])  # noqa: B023
            keys.index_copy_(2, cursor, k)  # noqa: B023
            values.index_copy_(2, cursor, v)  # noqa: B023
            out, _ = grouped_sdpa(None, q, keys, values, mask[:, None, None, :], scaling=DIM**-0.5)  # noqa: B023
            out.reshape(rows, 1, -1).contiguous()  # noqa: B023

        row = {
            "rows": rows,
            "length": length,
            "transformers_us": graph_us(transformers_path),
        }
        inputs = (query, key, value, cos, sin, keys, values, cursor, mask, DIM**-0.5)
        timings = settings_us(
            lambda **setting: attention_kernel.launch(*inputs, **setting),  # noqa: B023
            ("split_l", "block_l", "num_warps"),
            [(s, b, w) for s, b, w in SETTINGS if b <= s <= 2 * length],
            f"{rows} {length}",
        )
        best = min(timings, key=timings.get)
        default = f"{attention_kernel.split_slots(rows * KV_HEADS, length)}/{attention_kernel.BLOCK_L}/4"
        row.update(default=default, default_us=timings.get(default), best=best, best_us=timings[best])
        row["all"] = timings
        results.append(row)
        sys.stderr.write(
            f"rows {rows} length {length}: transformers {row['transformers_us']} us, default {default} "
            f"{row['default_us']} us, best {best} {row['best_us']} us\n"
        )
    table = markdown_table(
        (
            "rows",
            "cache slots",
            "transformers us",
            "default split/block/warps",
            "kernel us",
            "best",
            "best us",
        ),
        [
            (
                r["rows"],
                r["length"],
                r["transformers_us"],
                r["default"],
                r["default_us"],
                r["best"],
                r["best_us"],
            )
            for r in results
        ],
    )
    sys.stdout.write(table + "\n")
    out_dir = args.out or default_out("attention-kernel-tune")
    write_json(
        out_dir / "attention_kernel_tune.json", {"environment": environment("cuda"), "results": results}
    )
    (out_dir / "attention_kernel_tune.md").write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
