"""`qa-eval run`: build the engine once, answer the chosen questions with `run_batch`, write a report folder.

The folder holds report.md, report.json, predictions.csv (`id,answer`, a submission file), predictions.json
(`{id: answer}`, the ensemble's answers), candidates.jsonl (per question its gold answers, the answer and
every candidate with its provenance and likelihoods: what `qa-eval revote` / `fit-vote` read) and the
plots (F1 by strategy, prompt lengths, the reliability of the confidence). The pipeline is the service's
own (built by `engine.build_engine`), so the numbers describe what users get. Scoring, voting and batching
live in `ensemble`; this module only wires them together and records the run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine import Engine, EngineConfig, build_engine
from ensemble.batch import BatchOptions, BatchResult, run_batch
from ensemble.chunks import ChunkLimits, chunk_limits
from ensemble.datasets import QAExample, write_predictions_csv
from ensemble.metric import Metric
from ensemble.plan import BASE_MEMBER_NAME, Decoding
from ensemble.prompts import render_prompt
from evaluation.candidates import CANDIDATES, QuestionCandidates, question_to_json
from evaluation.plots import (
    F1_PLOT,
    RELIABILITY_PLOT,
    TOKENS_PLOT,
    plot_f1_by_strategy,
    plot_reliability,
    plot_token_lengths,
)
from evaluation.report import RunFacts, build_report, render_markdown
from evaluation.selection import Selection, sha256_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """One `qa-eval run`: what to load, what to ask, where to write."""

    engine: EngineConfig
    out_dir: Path
    data_path: Path
    command: str
    chunk_size: int | None = None
    """Most questions per generation chunk; None: by device (`ensemble.chunks.CHUNK_LIMITS`)."""
    chunk_tokens: int | None = None
    """Most padded prompt tokens per chunk; None: by device."""
    strategies: bool = True
    """Also score every single member, prompt and decoding (re-voted from the same candidates)."""
    metric: Metric = "korquad"
    progress: bool = True


def prompt_token_lengths(engine: Engine, examples: Sequence[QAExample], prompts: Sequence[str]) -> list[int]:
    """Per question, the token length of its longest rendered prompt (what `max_input_tokens` limits)."""
    generator = engine.generator
    chat = generator.has_chat_template
    return [
        max(
            generator.count_tokens(generator.render(render_prompt(p, ex.context, ex.question, chat=chat)))
            for p in prompts
        )
        for ex in examples
    ]


def _quantization(model: Any) -> str:
    """The quantization actually loaded ("4bit" or "none"), read off the model, not the setting asked for."""
    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(quantization, dict):
        in_4bit = quantization.get("load_in_4bit", False)
    else:
        in_4bit = getattr(quantization, "load_in_4bit", False)
    return "4bit" if in_4bit or getattr(model, "is_loaded_in_4bit", False) else "none"


def _answer(
    engine: Engine, examples: Sequence[QAExample], config: RunConfig, chunks: ChunkLimits
) -> BatchResult:
    options = BatchOptions(
        prompts=config.engine.default_prompts,
        decoding=config.engine.default_decoding,
        strategies=config.strategies,
        chunks=chunks,
        metric=config.metric,
    )
    count = engine.generator.count_tokens
    lengths = [count(ex.context) + count(ex.question) for ex in examples]  # as the service cuts its chunks
    with tqdm(total=len(examples), unit="q", desc="answering", disable=not config.progress) as bar:
        return run_batch(
            engine.pipeline,
            examples,
            options,
            lengths=lengths,
            on_progress=lambda done, _total: bar.update(done - bar.n),
        )


def execute(config: RunConfig, selection: Selection) -> dict[str, Any]:
    """Run and write the report folder; returns report.json's content."""
    started = datetime.now().astimezone()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    engine = build_engine(config.engine)
    load_seconds = time.perf_counter() - t0
    examples = selection.examples
    lengths = prompt_token_lengths(engine, examples, config.engine.default_prompts)
    chunks = chunk_limits(engine.generator.device).overridden(
        rows=config.chunk_size, tokens=config.chunk_tokens
    )
    result = _answer(engine, examples, config, chunks)

    model = engine.generator.model
    decoding: Decoding = config.engine.default_decoding
    facts = RunFacts(
        command=config.command,
        started=started,
        data_path=config.data_path,
        data_sha256=sha256_of(config.data_path),
        split=selection.split,
        n_in_split=selection.n_in_split,
        sample_seed=selection.sample_seed,
        model_spec=config.engine.model,
        model_key=engine.resolved.key,
        model_fingerprint=engine.resolved.fingerprint,
        device=engine.generator.device,
        dtype=str(getattr(model, "dtype", config.engine.dtype)).removeprefix("torch."),
        quantization=_quantization(model),
        decoder=engine.generator.decoder,
        max_input_tokens=config.engine.max_input_tokens,
        members=[(m.adapter or BASE_MEMBER_NAME, m.weight) for m in engine.members()],
        prompts=config.engine.default_prompts,
        decoding=decoding,
        strategies=config.strategies,
        chunk_size=chunks.rows,
        chunk_tokens=chunks.tokens,
        chunk_margin=chunks.margin,
        metric=config.metric,
        load_seconds=load_seconds,
    )
    report = build_report(facts, result, lengths)
    _write(config.out_dir, report, result, lengths)
    write_candidates(config.out_dir / CANDIDATES, examples, result)
    return report


def write_candidates(path: Path, examples: Sequence[QAExample], result: BatchResult) -> None:
    """One JSON line per question, in input order: id, gold answers, the ensemble's answer and confidence,
    the row's error, and every candidate of the main pass (text, raw output, adapter, prompt, beam rank,
    log-probability, grounded, member weight, and its likelihoods under every (member, prompt) row when the
    vote scored them: ``[[member, prompt, logprob, tokens], ...]``). The format is
    `evaluation.candidates`, which reads it back."""
    with path.open("w", encoding="utf-8") as fh:
        for ex, row in zip(examples, result.rows, strict=True):
            candidates = () if row.vote is None else tuple(v.candidate for v in row.vote.candidates)
            question = QuestionCandidates(
                id=row.id,
                answers=tuple(ex.answers),
                candidates=candidates,
                answer=row.answer,
                confidence=row.confidence,
                error=row.error,
            )
            fh.write(json.dumps(question_to_json(question), ensure_ascii=False) + "\n")


def _write(out: Path, report: dict[str, Any], result: BatchResult, lengths: Sequence[int]) -> None:
    answers = {row.id: row.answer for row in result.rows}  # a failed row answers "" so the file stays whole
    with (out / "predictions.csv").open("w", encoding="utf-8", newline="") as fh:
        write_predictions_csv(answers.items(), fh)
    (out / "predictions.json").write_text(json.dumps(answers, ensure_ascii=False, indent=1) + "\n", "utf-8")
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (out / "report.md").write_text(render_markdown(report), "utf-8")
    data = report["data"]
    about = f"{report['model']['key']}, {Path(data['path']).name} ({data['split']}, n={data['questions']})"
    if report["strategies"]:
        plot_f1_by_strategy(report["strategies"], out / F1_PLOT, title=f"F1 by strategy: {about}")
    plot_token_lengths(lengths, report["tokens"]["limit"], out / TOKENS_PLOT, title=f"Prompt length: {about}")
    plot_reliability(report["calibration"], out / RELIABILITY_PLOT, title=f"Reliability: {about}")
