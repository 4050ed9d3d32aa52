"""`qa-serve`: start the HTTP service with uvicorn. Flags override the `QA_*` environment settings.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and gives requests in flight up to
`drain_timeout_s` to finish; at the same moment the batch job worker is asked to stop after its current chunk
(the job becomes `interrupted`, never `done`), and the lifespan waits for it within the same timeout. Then the
process exits.

Logs go to stderr as JSON lines (`log_format=json`, the default) or plain text, uvicorn's own loggers
included; uvicorn's access log is off, since `app.request_log` writes one line per request with its id. With
JSON, nothing else reaches stderr either: transformers' and huggingface_hub's progress bars are off, and
transformers' own log handler and Python's warnings go through the same JSON handler.

uvicorn runs with `app.connections`' guarded protocol: at most `max_connections` open, and a request's head
and body must arrive within `header_timeout_s` and `body_timeout_s`.
"""

from __future__ import annotations

import argparse
import logging.config
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.connections import guarded_protocol
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


def logging_config(settings: ServiceSettings) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the root and uvicorn's loggers: one stderr handler, one format."""
    formatter: dict[str, Any] = (
        {"()": "app.request_log.JsonFormatter"}
        if settings.log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level},
        # uvicorn's loggers pass their records to the root handler instead of printing their own format.
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def quiet_third_party_output(settings: ServiceSettings) -> None:
    """With JSON logs, keep what libraries print themselves off stderr: progress bars off, and transformers'
    handler and `warnings` through the root logger's (JSON) handler."""
    if settings.log_format != "json":
        return
    import huggingface_hub.utils
    import transformers.utils.logging

    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    logging.captureWarnings(True)


def uvicorn_config(
    app: FastAPI, settings: ServiceSettings, log_config: dict[str, Any] | None
) -> uvicorn.Config:
    """How `qa-serve` runs `app`: the guarded protocol (connection cap, head and body deadlines), no access
    log, the drain timeout."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(
            max_connections=settings.max_connections,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
        ),
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qa-serve", description=__doc__)
    parser.add_argument("--model", help="base model key, 'tiny-random', folder or hub id (QA_MODEL)")
    parser.add_argument("--adapters-dir", help="folder of adapters (QA_ADAPTERS_DIR)")
    parser.add_argument("--host", help="bind address (QA_HOST)")
    parser.add_argument("--port", type=int, help="port (QA_PORT)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = ServiceSettings(**overrides)
    log_config = logging_config(settings)
    logging.config.dictConfig(log_config)
    quiet_third_party_output(settings)
    app = build_app(settings)
    config = uvicorn_config(app, settings, log_config)
    _DrainingServer(config, on_shutdown=lambda: begin_shutdown(app)).run()


if __name__ == "__main__":
    main()
