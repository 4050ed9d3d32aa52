"""Generator faults: CUDA OOM splits a batch (same answers), bad adapter weights never reach the model.

The OOM is injected: the model's `generate` (or the decode loop's `decode`) raises
`torch.cuda.OutOfMemoryError` for batches past a size, as CUDA would, so the split-and-retry path runs on CPU.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.adapters.registry import ADAPTER_WEIGHTS, AdapterRegistry, check_adapter_folder
from models.base.folders import read_base_info
from models.base.loading import LoadConfig, load_base
from models.decode.generator import Generator
from models.errors import AdapterError, GenerationOutOfMemoryError

GREEDY = dict(max_new_tokens=4)  # Generator.generate's defaults: greedy, one candidate
BEAMS = dict(GREEDY, num_beams=3, num_return_sequences=2)
PROMPTS = [
    "서울은 어디?",
    "A long prompt about the weather in Busan today and tomorrow?",
    "짧다",
    "emoji 🍎 질문",
]
ADAPTERS = ["alpha", None, "beta", "gamma"]


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tiny_adapters_dir) -> Generator:
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer)
    info = read_base_info(tiny_model_dir)
    for spec in AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint
    ):
        gen.load_adapter(spec)
    return gen


def inject_oom(monkeypatch, generator: Generator, max_rows: int) -> list[int]:
    """Make the model's generate raise CUDA OOM past `max_rows` rows; returns the batch sizes tried."""
    real, sizes = generator.model.generate, []

    def generate(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(**kwargs)

    monkeypatch.setattr(generator.model, "generate", generate)
    return sizes


@pytest.mark.parametrize("decoding", [GREEDY, BEAMS], ids=["greedy", "beams"])
def test_oom_splits_the_batch_and_gives_the_same_answers(generator, monkeypatch, decoding):
    expected = generator.generate(PROMPTS, ADAPTERS, **decoding)
    sizes = inject_oom(monkeypatch, generator, max_rows=1)
    split = generator.generate(PROMPTS, ADAPTERS, **decoding)
    # Same texts; scores equal up to float noise (a smaller batch pads less).
    assert [[text for text, _ in row] for row in split] == [[text for text, _ in row] for row in expected]
    for got, want in zip(split, expected, strict=True):
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]  # whole, then halves, then quarters


def test_oom_in_the_decode_loop_splits_the_batch(tiny_model_dir, tiny_adapters_dir, monkeypatch):
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    gen = Generator(model, tokenizer, decoder="loop")
    info = read_base_info(tiny_model_dir)
    for spec in AdapterRegistry.from_dir(
        tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint
    ):
        gen.load_adapter(spec)
    expected = gen.generate(PROMPTS, ADAPTERS, **BEAMS)
    loop, sizes, cleared = gen._loop, [], []
    real_decode, real_clear = loop.decode, loop.clear

    def decode(input_ids, *args, **kwargs):
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_decode(input_ids, *args, **kwargs)

    monkeypatch.setattr(loop, "decode", decode)
    monkeypatch.setattr(loop, "clear", lambda: cleared.append(1) or real_clear())
    split = gen.generate(PROMPTS, ADAPTERS, **BEAMS)
    assert [[text for text, _ in row] for row in split] == [[text for text, _ in row] for row in expected]
    for got, want in zip(split, expected, strict=True):
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)
    assert sizes == [4, 2, 1, 1, 2, 1, 1] and len(cleared) == 3  # its cached shapes go first


def test_a_single_row_that_still_does_not_fit_is_a_typed_error(generator, monkeypatch):
    inject_oom(monkeypatch, generator, max_rows=0)
    with pytest.raises(GenerationOutOfMemoryError, match="single prompt") as caught:
        generator.generate(PROMPTS[:2], ADAPTERS[:2], **GREEDY)
    assert isinstance(caught.value, RuntimeError) and "injected" in str(caught.value)
    monkeypatch.undo()
    assert len(generator.generate(PROMPTS[:2], ADAPTERS[:2], **GREEDY)) == 2  # nothing left broken


def copy_adapter(tiny_adapters_dir, tmp_path, name="alpha"):
    folder = tmp_path / name
    shutil.copytree(tiny_adapters_dir / "alpha", folder)
    return folder


def spec_for(folder, tiny_model_dir):
    info = read_base_info(tiny_model_dir)
    return check_adapter_folder(folder, base_key=info.key, base_fingerprint=info.fingerprint)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: truncate(p), "not a readable safetensors file"),
        (lambda p: p.write_bytes(b"\x00" * 64), "not a readable safetensors file"),
        (lambda p: torch.save({"x": torch.ones(2)}, p), "not a readable safetensors file"),  # a pickle
        (lambda p: save_file({k: v * float("nan") for k, v in load_file(p).items()}, p), "NaN"),
        (lambda p: save_file({k: torch.zeros(v.shape[0], 7) for k, v in load_file(p).items()}, p), "shape"),
        (lambda p: save_file({"model.embed.weight": torch.zeros(2, 2)}, p), "not a LoRA matrix"),
        (
            lambda p: save_file({k.replace("layers.0", "layers.99"): v for k, v in load_file(p).items()}, p),
            "does not have",
        ),
    ],
    ids=["truncated", "garbage", "pickle", "nan", "wrong-shape", "no-lora", "missing-module"],
)
def test_bad_weights_are_refused_before_the_model_is_touched(
    generator, tiny_adapters_dir, tiny_model_dir, tmp_path, corrupt, message
):
    folder = copy_adapter(tiny_adapters_dir, tmp_path, "delta")
    manifest = (folder / "qa_adapter.json").read_text().replace('"alpha"', '"delta"')
    (folder / "qa_adapter.json").write_text(manifest)
    spec = spec_for(folder, tiny_model_dir)
    before = sorted(generator.resident_adapters)
    corrupt(folder / ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match=message):
        generator.load_adapter(spec)
    assert sorted(generator.resident_adapters) == before
    assert generator.adapter_names == ["alpha", "beta", "gamma"]
    assert len(generator.generate(PROMPTS, ADAPTERS, **GREEDY)) == 4
