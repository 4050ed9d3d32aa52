"""`qa-serve`: start the HTTP service with uvicorn. Flags override the `QA_*` environment settings."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.main import build_app
from app.settings import ServiceSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qa-serve", description=__doc__)
    parser.add_argument("--model", help="base model key, 'tiny-random', folder or hub id (QA_MODEL)")
    parser.add_argument("--adapters-dir", help="folder of adapters (QA_ADAPTERS_DIR)")
    parser.add_argument("--host", help="bind address (QA_HOST)")
    parser.add_argument("--port", type=int, help="port (QA_PORT)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = ServiceSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
