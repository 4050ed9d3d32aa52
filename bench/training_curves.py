"""Validation curves of trained members side by side: a table (F1 at each validation point) and one plot.

    python -m bench.training_curves LOG [LOG ...] --out DIR

Each LOG is a member's `train_log.jsonl` (written by `qa-train` into the adapter folder and `.training/`); its
eval events carry the validation F1 on the held-out train articles, its step events the training loss. Prints
a Markdown table (one row per member, one column per epoch point) and writes `DIR/training_curves.png`
(validation F1 and the training loss against epochs) and `DIR/training_curves.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def read_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    evals, losses = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "eval":
            evals.append((event["epoch"], event["f1"]))
        elif event.get("event") == "step" and event.get("loss") is not None:
            losses.append((event["epoch"], event["loss"]))
    return {"f1": evals, "loss": losses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    curves = {p.name.removesuffix(".train_log.jsonl"): read_log(p) for p in args.logs}
    epochs = sorted({round(e, 1) for c in curves.values() for e, _ in c["f1"]})
    lines = ["| member | " + " | ".join(f"{e:.1f}" for e in epochs) + " | best |"]
    lines.append("|---|" + "---:|" * (len(epochs) + 1))
    for name, c in curves.items():
        at = {round(e, 1): f for e, f in c["f1"]}
        cells = [f"{at[e]:.1f}" if e in at else "-" for e in epochs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {max(f for _, f in c['f1']):.1f} |")
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, (ax_f1, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        ax_f1.plot(*zip(*c["f1"], strict=True), marker="o", label=name)
        if c["loss"]:
            ax_loss.plot(*zip(*c["loss"], strict=True), linewidth=0.8, label=name)
    ax_f1.set(xlabel="epoch", ylabel="validation F1 (held-out train articles)", title="validation F1")
    ax_loss.set(xlabel="epoch", ylabel="answer-token loss", title="training loss")
    ax_f1.legend(fontsize=7)
    ax_f1.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "training_curves.png", dpi=110)
    (args.out / "training_curves.json").write_text(json.dumps(curves, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
