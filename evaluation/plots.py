"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed).

`f1_by_strategy.png`: F1 per strategy as horizontal bars, in the report's order (ensemble on top).
`context_tokens.png`: histogram of prompt lengths in base-model tokens, with the model's input limit marked.
`reliability.png`: the ensemble's confidence against how often its answer is right, per confidence bin (the
report's calibration section), with the diagonal of perfect calibration and the questions per bin.
This module only draws; the numbers come from the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless backend, whatever the environment sets
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

F1_PLOT = "f1_by_strategy.png"
TOKENS_PLOT = "context_tokens.png"
RELIABILITY_PLOT = "reliability.png"
_BLUE, _RED = "#4f81bd", "#c0504d"


def plot_f1_by_strategy(strategies: Mapping[str, Mapping[str, Any]], path: Path, *, title: str = "") -> Path:
    """Horizontal bars of F1 (and EM as a thin marker), the first strategy on top."""
    names = list(strategies)
    f1 = [strategies[s]["f1"] for s in names]
    em = [strategies[s]["exact_match"] for s in names]
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.32 * max(len(names), 1)))
    try:
        y = range(len(names))
        bars = ax.barh(y, f1, color=[_RED if s == "ensemble" else _BLUE for s in names])
        ax.scatter(em, y, color="black", marker="|", s=120, zorder=3)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in f1], padding=3, fontsize=8)
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 110)
        ax.set_xlabel("score (0-100)")
        ax.set_title(title or "F1 by strategy", fontsize=10)
        handles = [
            Patch(color=_RED, label="F1, ensemble"),
            Patch(color=_BLUE, label="F1"),
            Line2D([], [], color="black", marker="|", linestyle="none", markersize=10, label="EM"),
        ]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_token_lengths(lengths: Sequence[int], limit: int, path: Path, *, title: str = "") -> Path:
    """Histogram of token lengths with a labelled vertical line at `limit`."""
    over = sum(1 for n in lengths if n > limit)
    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        right = 1.05 * max([limit, *lengths])
        ax.hist(lengths, bins=[right * i / 60 for i in range(61)], color=_BLUE)
        ax.axvline(limit, color=_RED, linestyle="--")
        ax.annotate(
            f"input limit {limit:,} tokens\n{over} of {len(lengths)} over",
            xy=(limit, 1),
            xycoords=("data", "axes fraction"),
            xytext=(-6, -6),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=9,
            color=_RED,
        )
        ax.set_xlim(0, right)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("tokens (longest rendered prompt per question, base tokenizer)")
        ax.set_ylabel("questions")
        ax.set_title(title or "Prompt length", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_reliability(calibration: Mapping[str, Any] | None, path: Path, *, title: str = "") -> Path | None:
    """Accuracy per confidence bin as bars (labelled with their question counts) over the diagonal, and the
    counts as a histogram below; nothing is drawn (None) without a calibration section (no gold answers)."""
    if not calibration:
        return None
    bins = calibration["reliability"]
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    widths = [b["upper"] - b["lower"] for b in bins]
    counts = [b["count"] for b in bins]
    fig, (ax, below) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        filled = [i for i, n in enumerate(counts) if n]
        bars = ax.bar(
            [centers[i] for i in filled],
            [bins[i]["accuracy"] for i in filled],
            width=[0.95 * widths[i] for i in filled],
            color=_BLUE,
            label="accuracy (exact match)",
        )
        ax.bar_label(bars, labels=[f"n={counts[i]:,}" for i in filled], padding=2, fontsize=7)
        ax.scatter(
            [bins[i]["mean_confidence"] for i in filled],
            [bins[i]["accuracy"] for i in filled],
            color="black",
            marker="o",
            s=12,
            zorder=3,
            label="mean confidence of the bin",
        )
        ax.plot([0, 1], [0, 1], color=_RED, linestyle="--", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title or 'Reliability'} (ECE {calibration['ece']:.3f})", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        below.bar(centers, counts, width=[0.95 * w for w in widths], color=_BLUE)
        below.yaxis.set_major_locator(MaxNLocator(integer=True))
        below.set_xlabel("confidence")
        below.set_ylabel("questions")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
