"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed).

`f1_by_strategy.png`: F1 per strategy as horizontal bars, in the report's order (ensemble on top).
`context_tokens.png`: histogram of prompt lengths in base-model tokens, with the model's input limit marked.
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
