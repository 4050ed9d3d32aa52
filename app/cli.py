"""`qa-serve`: start the HTTP service with uvicorn. Flags override the `QA_*` environment settings.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and gives requests in flight up to
`drain_timeout_s` to finish; at the same moment the batch job worker is asked to stop after its current chunk
(the job becomes `interrupted`, never `done`), and the lifespan waits for it within the same timeout. Then the
process exits.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import uvicorn

from app.main import begin_shutdown, build_app
from app.settings import ServiceSettings


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment a graceful shutdown starts (before the drain wait)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._on_shutdown()
        await super().shutdown(sockets)


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
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    _DrainingServer(config, on_shutdown=lambda: begin_shutdown(app)).run()


if __name__ == "__main__":
    main()
