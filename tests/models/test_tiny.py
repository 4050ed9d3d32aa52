"""The tiny model built in code: deterministic, idempotent, a tokenizer that encodes anything."""

import pytest

from models.base.folders import read_base_info
from models.base.tiny import TINY_KEY, build_tiny_model, build_tiny_tokenizer, tiny_fingerprint
from models.errors import ModelSourceError


def test_folder_is_complete_and_stamped(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "qa_base.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    info = read_base_info(tiny_model_dir)
    assert info.key == TINY_KEY and info.fingerprint == tiny_fingerprint(0)


def test_rebuild_is_a_no_op(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before


def test_seed_changes_fingerprint_and_weights(tmp_path, tiny_model_dir):
    assert tiny_fingerprint(1) != tiny_fingerprint(0)
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert read_base_info(other).fingerprint == tiny_fingerprint(1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    again = build_tiny_model(tmp_path / "seed1-again", seed=1)
    assert (again / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelSourceError, match="refusing"):
        build_tiny_model(tmp_path)


@pytest.mark.parametrize(
    "text", ["서울은 대한민국의 수도이다.", "Émoji 🙂 and 中文\n\ttabs", "<|im_end|> literal"]
)
def test_tokenizer_round_trips_any_text(text, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = build_tiny_tokenizer()
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert 300 <= len(tokenizer) <= 400
    # Reloaded, transformers 5 rebuilds it as a Qwen2Tokenizer (Qwen's pre-tokenizer regex + NFC): same ids.
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_chat_template_is_chatml():
    tokenizer = build_tiny_tokenizer()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
