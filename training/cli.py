"""`qa-train`: train the members of a recipe, or only report the prompts' token lengths.

    qa-train --config recipes/korquad-qwen0.5b.toml [--set train.epochs=0.45] [--only NAME] [--resume]
    accelerate launch -m training.cli --config ...     # data parallel: one process per GPU (or torchrun)
    qa-train lengths --config recipes/korquad-qwen0.5b.toml [--set train.max_seq_len=768]

`--set KEY=VALUE` (repeatable) overrides the recipe: `train.KEY`, `members.KEY` (every member) or
`members.NAME.KEY`; VALUE is a TOML literal (`0.45`, `true`, `"text"`) or a bare string.
Exit status 2 for a bad recipe, override or data file; 1 when training fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ensemble.datasets import DataFormatError
from models.errors import ModelSourceError
from training.config import ConfigError, load_recipe

logger = logging.getLogger("training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa-train",
        description="Train QLoRA ensemble members from a recipe (TOML or YAML).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("train", "lengths"),
        default="train",
        help="train (default) or lengths (only write the token-length table and histogram)",
    )
    parser.add_argument("--config", required=True, help="recipe file with [train] and [[members]]")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. train.epochs=0.45 or members.m1.r=8 (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="train only this member (repeatable); default: every member",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run: exported members are kept, the member being trained resumes from its "
        "newest checkpoint",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run = load_recipe(args.config, args.overrides).select(args.only)
        if args.command == "lengths":
            from training.runner import write_lengths

            text, paths = write_lengths(run)
            sys.stdout.write(text + "".join(f"wrote {p}\n" for p in paths))
            return 0
        from training.backends import prepare

        device, backend = prepare(run.train)  # imports unsloth, when chosen, before transformers
        from training.runner import run_training

        outcomes = run_training(run, device=device, backend=backend, resume=args.resume)
    except (ConfigError, DataFormatError, FileExistsError, ModelSourceError) as e:
        parser.exit(2, f"qa-train: error: {e}\n")
    for outcome in outcomes:
        best = outcome.result.best
        f1 = "n/a" if best is None or best.f1 is None else f"{best.f1:.2f}"
        sys.stdout.write(
            f"{outcome.name}: {outcome.folder} (validation F1 {f1} at epoch "
            f"{best.epoch if best else '?'}, {outcome.result.tokens_per_second:.0f} tokens/s)\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
