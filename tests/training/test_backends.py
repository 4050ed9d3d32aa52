"""Backend choice, and unsloth staying out of every import path except the training run that asks for it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.backends import resolve_backend
from training.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_auto_picks_peft_without_cuda_and_unsloth_needs_cuda(monkeypatch):
    assert resolve_backend("auto", "cpu") == "peft"
    assert resolve_backend("peft", "cuda") == "peft"
    with pytest.raises(ConfigError, match="train.backend: unsloth needs a CUDA device"):
        resolve_backend("unsloth", "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_backend("auto", "cuda") == "peft"
    with pytest.raises(ConfigError, match="unsloth is not installed"):
        resolve_backend("unsloth", "cuda")


def test_unsloth_is_imported_only_when_chosen_and_before_transformers(tmp_path):
    # A stand-in `unsloth` records whether transformers was already imported when it was.
    fake = tmp_path / "unsloth"
    fake.mkdir()
    record = tmp_path / "record.json"
    (fake / "__init__.py").write_text(
        textwrap.dedent(f"""
        import json, sys
        seen = {{"transformers_first": "transformers" in sys.modules, "peft_first": "peft" in sys.modules}}
        json.dump(seen, open({str(record)!r}, "w"))
    """)
    )
    script = textwrap.dedent("""
        import sys
        import training, training.cli, training.config, training.data, training.lengths, training.backends
        assert "unsloth" not in sys.modules, "importing training must not import unsloth"
        from training.backends import prepare
        from training.config import TrainConfig
        prepare(TrainConfig(device="cpu"))
        assert "unsloth" not in sys.modules, "the peft backend must not import unsloth"
        import training.backends as backends
        backends.resolve_device = lambda requested: "cuda"
        print(prepare(TrainConfig(backend="unsloth")))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "('cuda', 'unsloth')" in done.stdout
    assert json.loads(record.read_text()) == {"transformers_first": False, "peft_first": False}


@pytest.mark.parametrize(
    ("trainer", "batching", "backend", "device", "kernels", "expected"),
    [
        ("sft", "auto", "peft", "cpu", True, "padded"),  # SDPA under a block mask: (sum L)^2
        ("sft", "auto", "peft", "cuda", True, "padded"),  # transformers' SDPA too
        ("sft", "auto", "unsloth", "cuda", False, "padded"),  # Unsloth falls back to SDPA
        ("sft", "auto", "unsloth", "cuda", True, "padding_free"),  # flash-attn / xFormers varlen
        ("sft", "packed", "peft", "cpu", False, "packed"),  # asked for: as asked
        ("sft", "padding_free", "peft", "cpu", False, "padding_free"),
        ("loop", "auto", "unsloth", "cuda", True, "padded"),  # the loop always pads
        ("loop", "padding_free", "peft", "cpu", False, "padded"),
    ],
)
def test_auto_batching_is_padding_free_only_with_a_variable_length_attention(
    monkeypatch, trainer, batching, backend, device, kernels, expected
):
    import importlib.util

    from training.backends import VARLEN_ATTENTION, batching_for

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (real("json") if kernels else None) if name in VARLEN_ATTENTION else real(name, *a),
    )
    config = TrainConfig(trainer=trainer, batching=batching)
    assert batching_for(config, backend, device) == expected
