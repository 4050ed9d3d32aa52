#!/bin/sh
# Container entry point: check the env, optionally fetch the base model into the cache volume, then become
# qa-serve (exec, so SIGTERM from `docker stop` reaches uvicorn and its graceful drain directly).
#   QA_PORT      port to listen on (default 8000)
#   QA_PREFETCH  1: run `qa-model fetch "$QA_MODEL"` first (QA_MODEL must be a qa-model key); 0 or unset: don't
# Extra arguments are passed on to qa-serve.
set -eu

port="${QA_PORT:-8000}"
case "$port" in
  '' | *[!0-9]*)
    echo "entrypoint: QA_PORT must be a port number, not '$port'" >&2
    exit 64
    ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  echo "entrypoint: QA_PORT must be in 1..65535, not $port" >&2
  exit 64
fi

case "${QA_PREFETCH:-0}" in
  0) ;;
  1)
    if [ -z "${QA_MODEL:-}" ]; then
      echo "entrypoint: QA_PREFETCH=1 needs QA_MODEL (a key from 'qa-model list')" >&2
      exit 64
    fi
    qa-model fetch "$QA_MODEL"
    ;;
  *)
    echo "entrypoint: QA_PREFETCH must be 0 or 1, not '${QA_PREFETCH}'" >&2
    exit 64
    ;;
esac

exec qa-serve --host 0.0.0.0 --port "$port" "$@"
