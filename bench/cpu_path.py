"""The CPU path (issue #23): prefill and decode tokens/s, and seconds per question of `/answer` one at a time
against `/batch` at several chunk limits, the same questions side by side.

    nice python -m bench.cpu_path --model qwen2.5-coder-1.5b [--adapters-dir DIR] [--questions 40] \
        [--cells default,rows16,tokens3072,tokens12288,beam] [--out DIR]
    python -m bench.cpu_path --smoke       # the tiny random model, two questions

The service runs in this process (`app.main.build_app` behind a `TestClient`: its admission, micro-batcher,
pipeline and the `/answer` and `/batch` routes, no socket) with the CPU's default plan (`ensemble.plan`:
the best member, zero-shot, greedy) unless a cell says otherwise. First `/answer` asks every question once,
one request at a time; then each cell sends all of them as one inline `POST /batch` with its chunk limits
(the service's `chunk_limits`, set per cell):
  default:     the CPU's limits (`ensemble.chunks.CHUNK_LIMITS["cpu"]`: padded tokens and a padding margin);
  rowsN:       N questions a chunk in length order, no token limit or margin (how batches ran before #23);
  tokensN:     the CPU's limits with a budget of N padded tokens a chunk;
  beam:        the CPU's limits, 3 beams instead of greedy (the first --beam-questions): its main pass, and
               the greedy pass for the `greedy:*` strategies decoded on the beam pass's prefill
               (`DecodeLoop.reused`).
Each row's answer is compared with the same question's `/answer` (same plan). Before the cells, the engine's
generator alone times a prefill (one new token) of 1 and of 8 questions of similar length and their decode on
that kept prefill (the same batch again, more new tokens): tokens/s of each. Prints a table and writes JSON
and the table under `bench/results/<date>-cpu-path/`. What it does NOT measure: HTTP and JSON over a socket
(milliseconds next to seconds here), concurrent clients (bench/http_latency.py), the GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workload import (
    DEFAULT_DATA,
    default_cache_dir,
    default_out,
    environment,
    load_questions,
    markdown_table,
    write_json,
)
from ensemble.chunks import CHUNK_LIMITS, ChunkLimits
from ensemble.datasets import QAExample

logger = logging.getLogger("bench.cpu_path")
SMOKE = {"model": "tiny-random", "questions": 2, "cells": "default,rows16,beam", "new_tokens": 4}
"""--smoke: the tiny random model, two questions, three cells."""


def cell_limits(name: str) -> ChunkLimits:
    """The chunk limits a cell name stands for (see the module doc)."""
    cpu = CHUNK_LIMITS["cpu"]
    if name in ("default", "beam"):
        return cpu
    if name.startswith("rows") and name[4:].isdigit():
        return ChunkLimits(rows=int(name[4:]))
    if name.startswith("tokens") and name[6:].isdigit():
        return cpu.overridden(tokens=int(name[6:]))
    raise ValueError(f"unknown cell {name!r}; known: default, beam, rowsN, tokensN")


def row_of(example: QAExample) -> dict[str, Any]:
    return {"id": example.id, "context": example.context, "question": example.question,
            "answers": list(example.answers)}  # fmt: skip


def time_generator(generator: Any, prompts: Sequence[Any], adapter: str | None, new_tokens: int) -> dict:
    """A prefill (one new token) of `prompts` under `adapter`, then the same batch decoded on that kept
    prefill with `new_tokens`: tokens/s of each (prompt tokens counted as given, padding not)."""
    adapters = [adapter] * len(prompts)
    tokens = sum(generator.count_tokens(generator.render(p)) for p in prompts)
    started = time.perf_counter()
    generator.generate(prompts, adapters, max_new_tokens=1)
    prefill = time.perf_counter() - started
    before = generator.stats.new_tokens
    started = time.perf_counter()
    generator.generate(prompts, adapters, max_new_tokens=new_tokens)
    decode = time.perf_counter() - started
    made = generator.stats.new_tokens - before
    return {
        "rows": len(prompts),
        "prompt_tokens": tokens,
        "prefill_seconds": round(prefill, 3),
        "prefill_tokens_per_s": round(tokens / prefill, 1),
        "decode_tokens": made,
        "decode_seconds": round(decode, 3),
        "decode_tokens_per_s": round(made / decode, 2) if decode > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    from fastapi.testclient import TestClient

    from app.main import build_app
    from app.settings import ServiceSettings
    from ensemble.prompts import render_prompt

    started_at = datetime.now(UTC)
    out = args.out or default_out("cpu-path")
    questions = load_questions(args.data, split=args.split, count=args.questions)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for name in cells:
        cell_limits(name)  # a bad name fails before the model loads
    with tempfile.TemporaryDirectory(prefix="cpu-path-") as tmp:
        settings = ServiceSettings(
            model=args.model,
            cache_dir=Path(tmp) / "cache" if args.smoke else args.cache_dir,
            jobs_dir=Path(tmp) / "jobs",
            device="cpu",
            load_in_background=False,
            request_timeout_s=7200.0,
            batch_sync_max_rows=max(len(questions), 1),
            **({"adapters_dir": args.adapters_dir} if args.adapters_dir is not None else {}),
            **({"default_prompts": tuple(args.prompts.split(","))} if args.prompts else {}),
        )
        t0 = time.perf_counter()
        with TestClient(build_app(settings)) as client:
            load_seconds = time.perf_counter() - t0
            service = client.app.state.service
            engine = service.engine()
            generator = engine.generator
            member = engine.members()[0].name  # the default plan's first (on the CPU its only) member
            prompts = list(engine.pipeline.config.default_prompts)
            chat = generator.has_chat_template
            adapter = None if member == "base" else member
            logger.info("loaded %s in %.1f s; plan: %s, %s", args.model, load_seconds, member, prompts)

            # prefill and decode alone: 1 question, then 8 of similar length (the middle of the sample)
            by_length = sorted(questions, key=lambda ex: len(ex.context) + len(ex.question))
            middle = by_length[max(0, len(by_length) // 2 - 4) :][:8]
            rendered = [render_prompt(prompts[0], ex.context, ex.question, chat=chat) for ex in middle]
            kernels = [time_generator(generator, rendered[:1], adapter, args.new_tokens)]
            if len(rendered) > 1:
                kernels.append(time_generator(generator, rendered, adapter, args.new_tokens))

            alone: dict[str, str | None] = {}
            alone_beam: dict[str, str | None] = {}
            t0 = time.perf_counter()
            for ex in questions:
                body = {"context": ex.context, "question": ex.question}
                response = client.post("/answer", json=body)
                response.raise_for_status()
                alone[ex.id] = response.json()["answer"]
            answer_seconds = time.perf_counter() - t0
            logger.info("/answer: %.1f s for %d questions", answer_seconds, len(questions))

            beam_decoding = {"strategy": "beam", "num_beams": 3}
            beam_questions = questions[: args.beam_questions or None]
            if "beam" in cells:
                t0 = time.perf_counter()
                for ex in beam_questions:
                    body = {"context": ex.context, "question": ex.question, "decoding": beam_decoding}
                    response = client.post("/answer", json=body)
                    response.raise_for_status()
                    alone_beam[ex.id] = response.json()["answer"]
                beam_answer_seconds = time.perf_counter() - t0
                logger.info("/answer beams: %.1f s", beam_answer_seconds)

            results = []
            loop = generator._loop
            for name in cells:
                limits = cell_limits(name)
                service.chunk_limits = lambda limits=limits: limits  # this cell's chunks
                if loop is not None:  # a cell starts cold: no chunk decodes on the last cell's prefill
                    loop.kept = None
                asked = beam_questions if name == "beam" else questions
                body: dict[str, Any] = {"rows": [row_of(ex) for ex in asked]}
                if name == "beam":
                    body["decoding"] = beam_decoding
                calls, reused = engine.pipeline.stats.generate_calls, loop.reused if loop else 0
                t0 = time.perf_counter()
                response = client.post("/batch", json=body)
                wall = time.perf_counter() - t0
                response.raise_for_status()
                batch = response.json()
                want = alone_beam if name == "beam" else alone
                same = sum(row["answer"] == want[row["id"]] for row in batch["rows"])
                seconds = batch["seconds"]
                n = len(asked)
                results.append(
                    {
                        "cell": name,
                        "limits": {
                            "rows": limits.rows,
                            "tokens": limits.tokens,
                            "margin": limits.margin,
                            "slack": limits.slack,
                        },  # fmt: skip
                        "decoding": "beam x3" if name == "beam" else "greedy",
                        "questions": n,
                        "generate_calls": engine.pipeline.stats.generate_calls - calls,
                        "prefills_reused": (loop.reused - reused) if loop else None,
                        "wall_seconds": round(wall, 2),
                        "main_seconds": seconds["main"],
                        "greedy_seconds": seconds["greedy"],
                        "main_seconds_per_question": round(seconds["main"] / n, 3),
                        "total_seconds_per_question": round(seconds["total"] / n, 3),
                        "whole_over_main": round(seconds["total"] / seconds["main"], 3),
                        "same_answers_as_alone": same,
                        "passes": batch.get("passes"),
                        "failed_rows": batch["failed_rows"],
                    }
                )
                logger.info("%s: %s", name, results[-1])
    n = max(len(questions), 1)
    report = {
        "environment": environment("cpu", started_at),
        "command": " ".join(["python -m bench.cpu_path", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "member": member,
        "prompts": prompts,
        "questions": len(questions),
        "split": args.split,
        "data": str(args.data),
        "load_seconds": round(load_seconds, 2),
        "prefill_decode": kernels,
        "answer": {"seconds": round(answer_seconds, 2), "seconds_per_question": round(answer_seconds / n, 3)},
        "answer_beam": (
            {
                "seconds": round(beam_answer_seconds, 2),
                "seconds_per_question": round(beam_answer_seconds / max(len(beam_questions), 1), 3),
                "questions": len(beam_questions),
            }
            if "beam" in cells
            else None
        ),
        "cells": results,
    }
    table = render(report)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cpu_path.json", report)
    (out / "cpu_path.md").write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    return 0


def render(report: dict[str, Any]) -> str:
    kernels = markdown_table(
        ["rows", "prompt tokens", "prefill s", "prefill tok/s", "decode tokens", "decode s", "decode tok/s"],
        [
            [k[key] for key in ("rows", "prompt_tokens", "prefill_seconds", "prefill_tokens_per_s",
                                "decode_tokens", "decode_seconds", "decode_tokens_per_s")]
            for k in report["prefill_decode"]
        ],
    )  # fmt: skip
    answer = report["answer"]
    rows = [[f"/answer one at a time ({report['questions']} q)", "greedy", "-",
             answer["seconds_per_question"], "-", "-", "-", "-"]]  # fmt: skip
    if report["answer_beam"]:
        beam = report["answer_beam"]
        rows.append([f"/answer one at a time ({beam['questions']} q)", "beam x3", "-",
                     beam["seconds_per_question"], "-", "-", "-", "-"])  # fmt: skip
    for c in report["cells"]:
        limits = c["limits"]
        cut = f"{limits['rows']} q" + (f", {limits['tokens']} tok" if limits["tokens"] else "")
        cut += f", {100 * limits['margin']:.0f}% + {limits['slack']}" if limits["margin"] is not None else ""
        rows.append([f"/batch {c['cell']} ({c['questions']} q)", c["decoding"], cut,
                     c["main_seconds_per_question"],
                     c["total_seconds_per_question"], c["whole_over_main"], c["generate_calls"],
                     f"{c['same_answers_as_alone']}/{c['questions']}"])  # fmt: skip
    cells = markdown_table(
        [
            "path",
            "decoding",
            "chunks",
            "main s/q",
            "whole s/q",
            "whole/main",
            "generate calls",
            "same as alone",
        ],
        rows,
    )
    return (
        f"CPU path: {report['model']} ({report['member']}, {', '.join(report['prompts'])}), "
        f"{report['questions']} {report['split']} questions, {report['environment']['date']}\n\n"
        f"{kernels}\n{cells}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="qwen2.5-coder-1.5b", help="model key, folder or hub id (QA_MODEL)"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="$QA_CACHE_DIR")
    parser.add_argument("--adapters-dir", type=Path, help="QA_ADAPTERS_DIR (default: the service's)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="KorQuAD 1.0 JSON")
    parser.add_argument("--split", default="eval", choices=("eval", "train", "all"))
    parser.add_argument("--questions", type=int, default=40, help="a fixed random sample of this many")
    parser.add_argument("--prompts", help="QA_DEFAULT_PROMPTS (default: the device's)")
    parser.add_argument("--cells", default="default,rows16,tokens3072,tokens12288,beam")
    parser.add_argument(
        "--beam-questions",
        type=int,
        help="the beam cell (and its /answer) on the first N only (default: all)",
    )
    parser.add_argument("--new-tokens", type=int, default=24, help="new tokens of the decode timing")
    parser.add_argument("--out", type=Path, help="default bench/results/<date>-cpu-path/")
    parser.add_argument("--smoke", action="store_true", help="the tiny random model, a few questions")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if key == "model" and args.model != parser.get_default("model"):
                continue  # a test passes its own tiny model folder
            setattr(args, key, value)
    return args


if __name__ == "__main__":
    raise SystemExit(main())
