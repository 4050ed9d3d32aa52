"""How long the training prompts are in the base model's tokens: a table and a histogram per prompt style.

Run before training (`qa-train lengths`) to choose `max_seq_len`, and by every training run into
`<output>/.training/`. Lengths are of the full, unshortened prompts; the table also counts how many examples
the length policy would have to shorten or drop. This module only measures and draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ensemble.datasets import QAExample
from training.data import PromptEncoder

LENGTHS_MD, LENGTHS_JSON, LENGTHS_PNG = "lengths.md", "lengths.json", "lengths.png"


@dataclass(frozen=True)
class LengthStats:
    """Token counts of one prompt style over the examples with an answer."""

    prompt_style: str
    examples: int
    prompt_mean: float
    prompt_p50: int
    prompt_p90: int
    prompt_p95: int
    prompt_p99: int
    prompt_max: int
    target_max: int
    """Longest target (answer + end token)."""
    over_max_seq_len: int
    """Examples whose prompt + target exceed `max_seq_len` (to shorten or drop)."""
    max_seq_len: int


def _quantile(sorted_values: Sequence[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(
    examples: Sequence[QAExample], encoder: PromptEncoder, styles: Sequence[str], max_seq_len: int
) -> tuple[list[LengthStats], dict[str, list[int]]]:
    """Per style: the statistics, and the raw prompt lengths (for the histogram)."""
    usable = [ex for ex in examples if ex.answers]
    if not usable:
        raise ValueError("no examples with an answer to measure")
    targets = [len(encoder.target_ids(ex.answers[0])) for ex in usable]
    stats, raw = [], {}
    for style in styles:
        lengths = [len(encoder.prompt_ids(style, ex.context, ex.question)) for ex in usable]
        ordered = sorted(lengths)
        stats.append(
            LengthStats(
                prompt_style=style,
                examples=len(usable),
                prompt_mean=round(sum(lengths) / len(lengths), 1),
                prompt_p50=_quantile(ordered, 0.5),
                prompt_p90=_quantile(ordered, 0.9),
                prompt_p95=_quantile(ordered, 0.95),
                prompt_p99=_quantile(ordered, 0.99),
                prompt_max=ordered[-1],
                target_max=max(targets),
                over_max_seq_len=sum(p + t > max_seq_len for p, t in zip(lengths, targets, strict=True)),
                max_seq_len=max_seq_len,
            )
        )
        raw[style] = lengths
    return stats, raw


def table(stats: Sequence[LengthStats]) -> str:
    """A Markdown table, one row per prompt style."""
    head = (
        "| prompt style | examples | mean | p50 | p90 | p95 | p99 | max | longest target | "
        "over max_seq_len |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {s.prompt_style} | {s.examples} | {s.prompt_mean} | {s.prompt_p50} | {s.prompt_p90} | "
        f"{s.prompt_p95} | {s.prompt_p99} | {s.prompt_max} | {s.target_max} | "
        f"{s.over_max_seq_len} (> {s.max_seq_len}) |"
        for s in stats
    ]
    return head + "\n".join(rows) + "\n"


def write_report(
    stats: Sequence[LengthStats], raw: dict[str, list[int]], folder: Path, *, title: str = ""
) -> list[Path]:
    """Write `lengths.md`, `lengths.json` and the histogram `lengths.png` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / LENGTHS_MD
    md.write_text((f"# Prompt lengths: {title}\n\n" if title else "") + table(stats), encoding="utf-8")
    js = folder / LENGTHS_JSON
    js.write_text(json.dumps([asdict(s) for s in stats], indent=2) + "\n", encoding="utf-8")
    return [md, js, plot_histogram(raw, stats[0].max_seq_len, folder / LENGTHS_PNG, title=title)]


def plot_histogram(raw: dict[str, list[int]], max_seq_len: int, path: Path, *, title: str = "") -> Path:
    """Overlaid histograms of prompt lengths per style, with `max_seq_len` marked."""
    import matplotlib

    matplotlib.use("Agg")  # headless, whatever the environment says
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        top = max(max(v) for v in raw.values())
        bins = list(range(0, top + 32, max(8, (top + 31) // 60)))
        for style, lengths in raw.items():
            ax.hist(lengths, bins=bins, alpha=0.5, label=style)
        ax.axvline(
            max_seq_len, color="black", linestyle="--", linewidth=1, label=f"max_seq_len {max_seq_len}"
        )
        ax.set_xlabel("prompt tokens (base tokenizer)")
        ax.set_ylabel("questions")
        ax.set_title(title or "Prompt lengths")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
