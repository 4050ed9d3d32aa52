"""Unsloth cuts every input to its `max_seq_length` (training and eval mode alike), so the training base is
given the longest sequence validation will feed it; on CUDA, the Unsloth path trains and validates a padded
batch whose prompts are longer than `train.max_seq_len` (it failed in unsloth's `_attn_mask_compat.py`)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.base.loading import load_tokenizer
from models.base.sources import resolve_model
from training.backends import TrainingBase
from training.config import TrainConfig
from training.data import PromptEncoder, load_training_data
from training.runner import longest_validation_input

ROOT = Path(__file__).resolve().parents[2]


def _config(model_dir: Path, news_fixture: Path, **extra: object) -> TrainConfig:
    values: dict[str, object] = {"holdout_fraction": 0.5, **extra}
    return TrainConfig(base=str(model_dir), data=(str(news_fixture),), split="all", device="cpu", **values)


def test_the_base_covers_the_longest_validation_prompt(tiny_model_dir, news_fixture, tmp_path):
    config = _config(tiny_model_dir, news_fixture, max_seq_len=64, val_max_new_tokens=8)
    data = load_training_data(config)
    encoder = PromptEncoder(load_tokenizer(tiny_model_dir))
    styles = ["zero-shot", "principled"]
    longest = longest_validation_input(data, encoder, styles, config.val_max_new_tokens)
    prompts = [len(encoder.prompt_ids(s, ex.context, ex.question)) for ex in data.validation for s in styles]
    assert data.validation and longest == max(prompts) + 8 > 64
    resolved = resolve_model(str(tiny_model_dir), tmp_path)
    assert TrainingBase(resolved, config, "cpu", longest_input=longest).max_seq_length == longest
    # Shorter validation never lowers the training limit.
    assert TrainingBase(resolved, config, "cpu", longest_input=10).max_seq_length == 64
    no_validation = load_training_data(_config(tiny_model_dir, news_fixture, holdout_fraction=0.0))
    assert longest_validation_input(no_validation, encoder, styles, 8) == 0


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or not __import__("torch").cuda.is_available(),
    reason="needs a CUDA device",
)
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth")
def test_unsloth_validates_prompts_longer_than_the_training_limit(
    make_recipe, tiny_model_dir, news_fixture, tmp_path
):
    # QA_GPU_TRAIN_BASE: a real base folder to run this on instead of the tiny model.
    base = os.environ.get("QA_GPU_TRAIN_BASE")
    folder = Path(base) if base else tiny_model_dir
    # A training limit between the prompt without its context (so windowed training examples fit) and the
    # longest validation prompt (so validation goes past it).
    encoder = PromptEncoder(load_tokenizer(folder))
    data = load_training_data(_config(folder, news_fixture))
    full = min(len(encoder.prompt_ids("principled", ex.context, ex.question)) for ex in data.validation)
    bare = max(len(encoder.prompt_ids("principled", "", ex.question)) for ex in data.train)
    limit = (bare + 16 + full) // 2
    assert bare + 16 < limit < full
    recipe = make_recipe(
        tmp_path,
        device="cuda",
        backend="unsloth",
        max_seq_len=limit,
        val_batch_size=2,
        max_steps=2,
        **({"base": base} if base else {}),
    )
    # A process of its own: unsloth must be imported before transformers, which this test process has.
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "--config", str(recipe), "--only", "pr-s1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "adapters" / "pr-s1" / "qa_adapter.json").read_text("utf-8"))
    training = manifest["training"]
    assert training["backend"] == "unsloth"
    assert training["max_seq_length"] > limit  # the longest validation prompt is longer than the limit
    assert training["length_policy"]["kept"] + training["length_policy"]["shortened"] > 0
    points = training["validation"]["curve"]
    assert [p["step"] for p in points][:1] == [0] and len(points) >= 2
    assert "Input IDs of" not in done.stderr  # unsloth cut nothing
