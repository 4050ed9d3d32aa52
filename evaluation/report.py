"""The run report: `report.json` (every fact needed to reproduce and compare a run) and `report.md` (a short
table meant to be pasted into docs/benchmarks.md), the markdown rendered from the JSON so the two
never disagree. On gold data it has a calibration section: how well the ensemble's confidence predicts that
its answer is right (KorQuAD exact match, `RowResult.correct`): the expected calibration error, the
reliability bins, and what abstaining below a few `min_confidence` values would keep and how often that is
right.

This module formats; it runs no model and imports no torch (versions come from package metadata).
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ensemble.batch import BatchResult, needs_greedy_pass
from ensemble.calibration import coverage_at, expected_calibration_error, reliability
from ensemble.plan import Decoding
from ensemble.strategies import ENSEMBLE

SCHEMA = "qa-eval.report/1"
KORQUAD_ATTRIBUTION = "KorQuAD 1.0 (LG CNS), CC BY-ND 2.0 KR"
SOFTWARE = ("torch", "transformers", "peft", "bitsandbytes", "qa-ensemble")
CALIBRATION_BINS = 10
ABSTAIN_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)
"""The min_confidence values the report prices (0.0 = answer everything: the plain EM)."""


@dataclass(frozen=True)
class RunFacts:
    """What was run, on what, as recorded before and after the batch."""

    command: str
    started: datetime
    data_path: Path
    data_sha256: str
    split: str
    n_in_split: int
    sample_seed: int | None
    """None when every question of the split ran."""
    model_spec: str
    model_key: str
    model_fingerprint: str
    device: str
    dtype: str
    quantization: str
    decoder: str
    """How greedy and beam candidates were decoded: "loop" (`models.decode.loop`) or "hf" (`generate`)."""
    max_input_tokens: int
    members: Sequence[tuple[str, float]]
    """(name, vote weight) per ensemble member; ("base", 1.0) for the base model alone."""
    prompts: Sequence[str]
    decoding: Decoding
    strategies: bool
    chunk_size: int
    """Most questions per generation chunk."""
    metric: str
    load_seconds: float
    chunk_tokens: int | None = None
    """Most padded prompt tokens per chunk (None: no limit)."""
    chunk_margin: float | None = None
    """The padding margin chunks were cut by (None: none)."""


def is_korquad(path: Path) -> bool:
    return "korquad" in path.name.lower()


def software_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def strategy_pass(strategy: str, facts: RunFacts) -> str:
    """Which generation pass a strategy's candidates came from: "main", or "greedy" for the extra pass."""
    greedy_pass = facts.strategies and needs_greedy_pass(facts.decoding)
    return "greedy" if greedy_pass and strategy.startswith("greedy:") else "main"


def _ordered(scores: Mapping[str, Any]) -> list[str]:
    """The ensemble first, then by F1, then EM, falling; ties by id."""
    rest = sorted(
        (s for s in scores if s != ENSEMBLE),
        key=lambda s: (-scores[s].f1, -scores[s].exact_match, s),
    )
    return ([ENSEMBLE] if ENSEMBLE in scores else []) + rest


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def token_summary(lengths: Sequence[int], limit: int) -> dict[str, Any]:
    ordered = sorted(lengths)
    return {
        "measure": "longest rendered prompt per question, in base-model tokens",
        "limit": limit,
        "over_limit": sum(1 for n in ordered if n > limit),
        "median": statistics.median(ordered) if ordered else None,
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else None,
        "max": ordered[-1] if ordered else None,
    }


def calibration_summary(result: BatchResult, *, bins: int = CALIBRATION_BINS) -> dict[str, Any] | None:
    """The ensemble's confidence against the correctness of its answer, over the answered gold rows (failed
    rows have no confidence and are left out, counted in `failed_rows`); None without gold answers."""
    rows = [row for row in result.rows if row.error is None and row.correct is not None]
    if not rows:
        return None
    confidences = [row.confidence for row in rows]
    correct = [bool(row.correct) for row in rows]
    return {
        "measure": "ensemble confidence vs exact match (KorQuAD) of the ensemble's answer",
        "questions": len(rows),
        "failed_rows": len(result.failed),
        "bins": bins,
        "ece": round(expected_calibration_error(confidences, correct, bins), 4),
        "mean_confidence": round(sum(confidences) / len(rows), 4),
        "accuracy": round(sum(correct) / len(rows), 4),
        "reliability": [
            {
                "lower": round(b.lower, 4),
                "upper": round(b.upper, 4),
                "count": b.count,
                "mean_confidence": round(b.mean_confidence, 4),
                "accuracy": round(b.accuracy, 4),
            }
            for b in reliability(confidences, correct, bins)
        ],
        "abstention": [
            {
                "min_confidence": c.min_confidence,
                "answered": c.answered,
                "coverage": round(c.coverage, 4),
                "accuracy": round(c.accuracy, 4) if c.accuracy is not None else None,
            }
            for c in coverage_at(confidences, correct, ABSTAIN_THRESHOLDS)
        ],
    }


def build_report(facts: RunFacts, result: BatchResult, token_lengths: Sequence[int]) -> dict[str, Any]:
    n = len(result.rows)
    decoding = facts.decoding
    passes = {
        "main": {
            "decoding": decoding.strategy,
            "seconds": round(result.seconds["main"], 3),
            "questions_per_second": _rate(n, result.seconds["main"]),
        }
    }
    if facts.strategies and needs_greedy_pass(decoding):
        passes["greedy"] = {
            "decoding": "greedy",
            "seconds": round(result.seconds["greedy"], 3),
            "questions_per_second": _rate(n, result.seconds["greedy"]),
        }
    scores = result.scores or {}
    strategies = {
        s: {
            "exact_match": round(scores[s].exact_match, 2),
            "f1": round(scores[s].f1, 2),
            "count": scores[s].count,
            "missing": scores[s].missing,
            "pass": strategy_pass(s, facts),
        }
        for s in _ordered(scores)
    }
    return {
        "schema": SCHEMA,
        "date": facts.started.isoformat(timespec="seconds"),
        "command": facts.command,
        "data": {
            "path": str(facts.data_path),
            "sha256": facts.data_sha256,
            "attribution": KORQUAD_ATTRIBUTION if is_korquad(facts.data_path) else None,
            "split": facts.split,
            "questions_in_split": facts.n_in_split,
            "questions": n,
            "sample_seed": facts.sample_seed,
        },
        "model": {
            "spec": facts.model_spec,
            "key": facts.model_key,
            "fingerprint": facts.model_fingerprint,
            "device": facts.device,
            "dtype": facts.dtype,
            "quantization": facts.quantization,
            "decoder": facts.decoder,
            "max_input_tokens": facts.max_input_tokens,
        },
        "members": [{"name": name, "weight": weight} for name, weight in facts.members],
        "prompts": list(facts.prompts),
        "decoding": {
            "strategy": decoding.strategy,
            "num_beams": decoding.num_beams if decoding.strategy == "beam" else 1,
            "outputs_per_prompt": decoding.n_outputs,
            "max_new_tokens": decoding.max_new_tokens,
        },
        "chunk_size": facts.chunk_size,
        "chunk_tokens": facts.chunk_tokens,
        "chunk_margin": facts.chunk_margin,
        "metric": facts.metric if result.scores is not None else None,
        "software": software_versions(),
        "timing": {
            "load_seconds": round(facts.load_seconds, 3),
            "passes": passes,
            "total_seconds": round(result.seconds["total"], 3),
            "questions_per_second": _rate(n, result.seconds["total"]),
        },
        "tokens": token_summary(token_lengths, facts.max_input_tokens),
        "strategies": strategies,
        "calibration": calibration_summary(result),
        "failed": [{"id": row.id, "error": row.error} for row in result.failed],
    }


def _chunks(report: Mapping[str, Any]) -> str:
    """How the questions were cut into generation chunks, in words."""
    text = f"up to {report['chunk_size']} questions"
    if report.get("chunk_tokens"):
        text += f" and {report['chunk_tokens']:,} padded tokens"
    if report.get("chunk_margin") is not None:
        text += f", by length (padding at most {100 * report['chunk_margin']:.0f}% over a prompt's own)"
    return text


def render_markdown(report: Mapping[str, Any], *, max_failed: int = 5) -> str:
    data, model, decoding, timing = report["data"], report["model"], report["decoding"], report["timing"]
    sampled = f", sample seed {data['sample_seed']}" if data["sample_seed"] is not None else ""
    split = f"{data['split']} split, " if data["split"] != "all" else ""
    members = ", ".join(
        m["name"] if m["weight"] == 1 else f"{m['name']} (x{m['weight']:g})" for m in report["members"]
    )
    beams = f", {decoding['num_beams']} beams" if decoding["strategy"] == "beam" else ""
    passes = "; ".join(
        f"{name} pass ({p['decoding']}) {p['seconds']:.1f} s ({p['questions_per_second'] or 0:.2f} q/s)"
        for name, p in timing["passes"].items()
    )
    tokens = report["tokens"]
    lines = [
        f"## {model['key']} on {Path(data['path']).name} ({split}{data['questions']:,} of "
        f"{data['questions_in_split']:,} questions{sampled})",
        "",
        f"- {report['date']}, {model['device']}, {model['dtype']}, quantization {model['quantization']}; "
        f"members: {members}; prompts: {', '.join(report['prompts'])}",
        f"- decoding: {decoding['strategy']}{beams}, {decoding['outputs_per_prompt']} output(s) per prompt, "
        f"max {decoding['max_new_tokens']} new tokens, decoder {model.get('decoder', 'hf')}; chunks of "
        f"{_chunks(report)}",
        f"- time: {passes}; model load {timing['load_seconds']:.1f} s",
        f"- prompts over the {tokens['limit']:,}-token input limit: {tokens['over_limit']} of "
        f"{data['questions']:,} (median {tokens['median']}, max {tokens['max']} tokens)",
        f"- failed questions: {len(report['failed'])}",
        "",
    ]
    if report["strategies"]:
        lines += ["| strategy | EM | F1 | pass | pass seconds |", "|---|---:|---:|---|---:|"]
        for strategy, s in report["strategies"].items():
            p = timing["passes"][s["pass"]]
            scores = f"{s['exact_match']:.2f} | {s['f1']:.2f}"
            lines.append(f"| {strategy} | {scores} | {p['decoding']} | {p['seconds']:.1f} |")
        lines += [
            "",
            f"{report['metric']} metric. Strategies of one pass are re-voted from the same candidates, so "
            "they share that pass's generation time; `greedy:*` rows come from the greedy pass "
            "(a separate one unless the main pass is greedy; with the decode loop it decodes on the main "
            "pass's prefill, so it costs its decode steps, not a second prefill).",
        ]
    else:
        lines.append("Not scored: the data has no gold answers for every question.")
    lines += _calibration_markdown(report.get("calibration"))
    for failed in report["failed"][:max_failed]:
        lines.append(f"- failed `{failed['id']}`: {failed['error']}")
    if len(report["failed"]) > max_failed:
        lines.append(f"- ... and {len(report['failed']) - max_failed} more (report.json lists all)")
    software = ", ".join(f"{k} {v}" for k, v in report["software"].items() if v is not None)
    lines += ["", f"Software: {software}. Command: `{report['command']}`"]
    if data["attribution"]:
        lines += ["", f"Data: {data['attribution']}."]
    return "\n".join(lines) + "\n"


def _calibration_markdown(calibration: Mapping[str, Any] | None) -> list[str]:
    if not calibration:
        return []
    lines = [
        "",
        f"Calibration over {calibration['questions']:,} answered questions: ECE {calibration['ece']:.3f} "
        f"({calibration['bins']} bins), mean confidence {calibration['mean_confidence']:.3f}, exact match "
        f"{calibration['accuracy']:.3f} (reliability.png).",
        "",
        "| confidence | questions | mean confidence | accuracy |",
        "|---|---:|---:|---:|",
    ]
    for b in calibration["reliability"]:
        if b["count"]:
            lines.append(
                f"| {b['lower']:.1f}-{b['upper']:.1f} | {b['count']:,} | {b['mean_confidence']:.3f} | "
                f"{b['accuracy']:.3f} |"
            )
    lines += ["", "| min_confidence | answered | coverage | accuracy of answered |", "|---:|---:|---:|---:|"]
    for c in calibration["abstention"]:
        accuracy = f"{c['accuracy']:.3f}" if c["accuracy"] is not None else "-"
        lines.append(f"| {c['min_confidence']:.1f} | {c['answered']:,} | {c['coverage']:.3f} | {accuracy} |")
    return lines
