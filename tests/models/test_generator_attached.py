"""`Generator.attach_adapter`: generating with an adapter already on the model passed in (training's
validation), through the same mixed-adapter path as a loaded adapter; and the tokenizer/generation-config
helpers `load_base` now shares with training."""

import pytest

from models.adapters.registry import AdapterSpec, read_manifest
from models.base.loading import LoadConfig, load_base, load_tokenizer, plain_generation_config
from models.decode.generator import Generator
from models.errors import UnknownAdapterError

PROMPT = [
    {"role": "system", "content": "답하라."},
    {"role": "user", "content": "세종대왕은 무엇을 창제했나?"},
]


def test_an_attached_adapter_generates_like_the_same_adapter_loaded(tiny_model_dir, tiny_adapters_dir):
    from peft import PeftModel

    folder = tiny_adapters_dir / "alpha"
    loaded = Generator(*load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none")))
    loaded.load_adapter(AdapterSpec("alpha", folder, read_manifest(folder)))

    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name="mine")
    attached = Generator(peft_model, tokenizer)
    with pytest.raises(UnknownAdapterError):
        attached.generate([PROMPT], ["mine"], max_new_tokens=6)
    attached.attach_adapter("mine")
    assert attached.adapter_names == ["mine"]

    ours = attached.generate([PROMPT, PROMPT], ["mine", None], max_new_tokens=6)
    theirs = loaded.generate([PROMPT, PROMPT], ["alpha", None], max_new_tokens=6)
    assert [c[0][0] for c in ours] == [c[0][0] for c in theirs]
    assert ours[0][0][1] == pytest.approx(theirs[0][0][1], abs=1e-5)
    assert ours[0][0][0] != ours[1][0][0]  # the adapter changes the answer; None is the base alone


def test_attach_refuses_an_unknown_adapter_and_unload_refuses_an_attached_one(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    with pytest.raises(UnknownAdapterError, match="not attached"):
        Generator(model, tokenizer).attach_adapter("x")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="x")
    generator = Generator(peft_model, tokenizer)
    generator.attach_adapter("x")
    with pytest.raises(UnknownAdapterError):
        generator.unload_adapter("x")
    assert "x" in peft_model.peft_config


def test_load_tokenizer_and_plain_generation_config_match_load_base(tiny_model_dir):
    model, served = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == served.pad_token_id
    assert (
        tokenizer("서울", add_special_tokens=False)["input_ids"]
        == served("서울", add_special_tokens=False)["input_ids"]
    )
    config = plain_generation_config(model, tokenizer)
    assert config.to_dict() == model.generation_config.to_dict()
    assert not config.do_sample and tokenizer.eos_token_id in config.eos_token_id
