"""Unsloth's pad-token check passes on our base folders: the tiny model, and a Qwen GGUF conversion once
`models.base.sources.align_special_tokens` has run (new conversions, and cached folders converted before it).

Unsloth (2026.10.9) calls `unsloth_zoo.pad_token.fix_pad_token(tokenizer, model=model)` from
`unsloth_zoo/tokenizer_utils.py:843` (`patch_tokenizer`, called at `unsloth/models/llama.py:4336`). It is a
no-op when `_classify_bad_pad` (unsloth_zoo/pad_token.py:146-170) finds nothing wrong; otherwise it looks
for another pad (a reserved or "*pad*" added token, `unk`, or a config pad id that is no EOS) and, finding
none, adds a token and raises "Could not find a valid pad token" when it has no embedding row (446-450):
what our converted Qwen folder did, whose tokenizer had pad == eos == <|endoftext|>.
"""

import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import pytest

import models.base.sources as sources
from models.base.folders import BASE_INFO_NAME
from models.base.loading import _eos_ids
from models.base.sources import MODEL_SOURCES, WheelModelSource, align_special_tokens, fetch_model

SITE = Path(__file__).resolve().parents[2] / ".gpu-site" / "site.tar.xz"
PAD_TOKEN_PY = "./unsloth_zoo/pad_token.py"


def unsloth_pad_problem(tokenizer, vocab_size: int | None) -> str | None:
    """`_classify_bad_pad` of unsloth_zoo/pad_token.py:146-170, restated: None means unsloth keeps the pad."""
    pad = tokenizer.pad_token
    if pad is None:
        return "missing"
    if tokenizer.eos_token is not None and pad == tokenizer.eos_token:
        return "equals_eos"
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        return "equals_eos"
    if vocab_size is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= vocab_size:
        return "out_of_range"
    return None


def _load(folder: Path):
    from transformers import AutoConfig, AutoTokenizer

    # Unsloth loads the folder's tokenizer itself (load_correct_tokenizer -> AutoTokenizer), not ours.
    return AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


@pytest.fixture
def old_conversion(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model laid out as transformers converted our Qwen GGUF: config.json declares eos <|im_end|>
    and pad <|endoftext|> (the GGUF's ids), but the tokenizer kept eos = pad = <|endoftext|>."""
    folder = tmp_path / "converted"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer_config = _read(folder / "tokenizer_config.json")
    tokenizer_config["eos_token"] = tokenizer_config["pad_token"]
    _write(folder / "tokenizer_config.json", tokenizer_config)
    config = _read(folder / "config.json")
    _write(folder / "generation_config.json", {"eos_token_id": config["eos_token_id"], "pad_token_id": 0})
    return folder


def test_the_tiny_model_passes_unsloths_check(tiny_model_dir: Path):
    tokenizer, config = _load(tiny_model_dir)
    assert unsloth_pad_problem(tokenizer, config.vocab_size) is None
    assert align_special_tokens(tiny_model_dir) is False  # nothing to change


def test_an_old_conversion_fails_the_check_and_is_repaired_in_place(old_conversion: Path):
    tokenizer, config = _load(old_conversion)
    assert unsloth_pad_problem(tokenizer, config.vocab_size) == "equals_eos"
    # ... and unsloth finds no other pad: no other "pad" added token, no unk, the config's pad is the EOS.
    others = {str(t) for t in tokenizer.added_tokens_decoder.values()} - {tokenizer.eos_token}
    assert not any("pad" in t for t in others) and tokenizer.unk_token in (None, tokenizer.eos_token)
    assert config.pad_token_id == tokenizer.eos_token_id and len(tokenizer) >= config.vocab_size
    stops_before = set(_eos_ids(_read(old_conversion / "generation_config.json")["eos_token_id"], 0))

    assert align_special_tokens(old_conversion) is True
    tokenizer, config = _load(old_conversion)
    assert unsloth_pad_problem(tokenizer, config.vocab_size) is None
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.eos_token_id == config.eos_token_id and tokenizer.pad_token_id == config.pad_token_id
    generation = _read(old_conversion / "generation_config.json")
    assert generation["eos_token_id"] == [config.eos_token_id, config.pad_token_id]  # as Qwen's own
    # Generation still stops at both tokens, as the server's stop list (generation config + tokenizer EOS)
    # did before: nothing changes for serving.
    assert set(_eos_ids(generation["eos_token_id"], tokenizer.eos_token_id)) == stops_before
    assert align_special_tokens(old_conversion) is False  # idempotent


def test_a_cached_folder_is_repaired_without_converting_again(old_conversion: Path, tmp_path, monkeypatch):
    source = WheelModelSource(
        key="fake-qwen",
        title="fake",
        packages=("fake-part1==1.0",),
        members=("fake_part1/data/part01.bin",),
        gguf_name="fake.gguf",
        gguf_size=1,
        gguf_sha256="ab" * 32,
        licence="test",
        chat_template=True,
    )
    monkeypatch.setitem(MODEL_SOURCES, source.key, source)

    def never(*args, **kwargs):
        raise AssertionError("a cached folder must not be fetched or converted again")

    monkeypatch.setattr(sources, "pip_download", never)
    monkeypatch.setattr(sources, "convert_gguf", never)
    cached = tmp_path / "cache" / "models" / source.key
    shutil.copytree(old_conversion, cached)
    _write(cached / BASE_INFO_NAME, {"key": source.key, "fingerprint": source.gguf_sha256, "source": "old"})
    assert fetch_model(source.key, tmp_path / "cache") == cached
    tokenizer, config = _load(cached)
    assert unsloth_pad_problem(tokenizer, config.vocab_size) is None


@pytest.fixture(scope="module")
def unsloth_fix_pad_token(tmp_path_factory):
    """Unsloth's own `fix_pad_token`, read from the packages carried to the GPU machine (no install)."""
    if not SITE.is_file():
        pytest.skip(f"{SITE} is not here (it is built for the GPU machine)")
    target = tmp_path_factory.mktemp("unsloth") / "pad_token.py"
    with tarfile.open(SITE, "r:xz") as archive:
        for member in archive:
            if member.name == PAD_TOKEN_PY:
                target.write_bytes(archive.extractfile(member).read())
                break
        else:
            pytest.skip(f"{SITE} holds no {PAD_TOKEN_PY}")
    spec = importlib.util.spec_from_file_location("unsloth_pad_token", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fix_pad_token


class _ModelStub:
    """What fix_pad_token reads of a model: its config and how many embedding rows it has."""

    def __init__(self, config):
        self.config, self.generation_config = config, None

    def get_input_embeddings(self):
        import torch

        return torch.nn.Embedding(self.config.vocab_size, 1)

    def resize_token_embeddings(self, size):  # unsloth calls it before deciding the added token does not fit
        pass


def test_unsloths_own_code_agrees(old_conversion: Path, unsloth_fix_pad_token):
    tokenizer, config = _load(old_conversion)
    with pytest.raises(RuntimeError, match="Could not find a valid pad token"):
        unsloth_fix_pad_token(tokenizer, model=_ModelStub(config))
    align_special_tokens(old_conversion)
    tokenizer, config = _load(old_conversion)
    result = unsloth_fix_pad_token(tokenizer, model=_ModelStub(config))
    assert (result["changed"], result["reason"]) == (False, None)
