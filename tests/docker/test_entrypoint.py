"""`docker/entrypoint.sh` run with `sh` (no Docker engine needed): fake `qa-serve`/`qa-model` on PATH record
their arguments and process id, so the tests see what the container would exec, in which order, and that a
bad environment stops it before anything runs.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
FAKE = """#!/bin/sh
echo "$$" > "$RECORD_DIR/{name}.pid"
printf '%s\\n' "$@" > "$RECORD_DIR/{name}.args"
echo {name} >> "$RECORD_DIR/order"
exit "${{FAKE_{var}_RC:-0}}"
"""


@pytest.fixture
def run(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, var in (("qa-serve", "SERVE"), ("qa-model", "MODEL")):
        script = bin_dir / name
        script.write_text(FAKE.format(name=name, var=var))
        script.chmod(0o755)
    sh = shutil.which("sh")
    assert sh is not None

    def run_entrypoint(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
        base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD_DIR": str(tmp_path)}
        proc = subprocess.Popen(
            [sh, str(ENTRYPOINT), *args], env={**base, **env}, stderr=subprocess.PIPE, text=True
        )
        _, stderr = proc.communicate(timeout=30)
        return proc, stderr

    return run_entrypoint


def recorded(tmp_path: Path, name: str) -> list[str] | None:
    path = tmp_path / f"{name}.args"
    return path.read_text().splitlines() if path.exists() else None


def test_execs_qa_serve_on_all_interfaces_with_the_default_port(run, tmp_path: Path):
    proc, stderr = run({})
    assert proc.returncode == 0, stderr
    assert recorded(tmp_path, "qa-serve") == ["--host", "0.0.0.0", "--port", "8000"]
    assert recorded(tmp_path, "qa-model") is None  # no prefetch unless asked
    # exec: qa-serve *is* the entrypoint's process, so `docker stop`'s SIGTERM reaches it directly.
    assert int((tmp_path / "qa-serve.pid").read_text()) == proc.pid


def test_port_and_extra_arguments_are_passed_on(run, tmp_path: Path):
    proc, stderr = run({"QA_PORT": "9001"}, "--model", "tiny-random")
    assert proc.returncode == 0, stderr
    assert recorded(tmp_path, "qa-serve") == ["--host", "0.0.0.0", "--port", "9001", "--model", "tiny-random"]


def test_prefetch_fetches_the_model_before_serving(run, tmp_path: Path):
    proc, stderr = run({"QA_PREFETCH": "1", "QA_MODEL": "qwen2.5-coder-0.5b"})
    assert proc.returncode == 0, stderr
    assert recorded(tmp_path, "qa-model") == ["fetch", "qwen2.5-coder-0.5b"]
    assert (tmp_path / "order").read_text().split() == ["qa-model", "qa-serve"]


def test_a_failed_prefetch_does_not_start_the_server(run, tmp_path: Path):
    proc, _ = run({"QA_PREFETCH": "1", "QA_MODEL": "qwen2.5-coder-0.5b", "FAKE_MODEL_RC": "3"})
    assert proc.returncode == 3
    assert recorded(tmp_path, "qa-serve") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QA_PORT": "abc"}, "QA_PORT must be a port number"),
        ({"QA_PORT": "-1"}, "QA_PORT must be a port number"),
        ({"QA_PORT": "70000"}, "QA_PORT must be in 1..65535"),
        ({"QA_PORT": "0"}, "QA_PORT must be in 1..65535"),
        ({"QA_PREFETCH": "yes"}, "QA_PREFETCH must be 0 or 1"),
        ({"QA_PREFETCH": "1"}, "QA_PREFETCH=1 needs QA_MODEL"),
    ],
)
def test_a_bad_environment_fails_before_anything_runs(run, tmp_path: Path, env: dict[str, str], message: str):
    proc, stderr = run(env)
    assert proc.returncode == 64
    assert message in stderr
    assert recorded(tmp_path, "qa-serve") is None and recorded(tmp_path, "qa-model") is None


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_entrypoint_passes_shellcheck():
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stdout
