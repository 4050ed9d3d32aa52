"""Loading the base model: config resolution on this CPU machine, pad token, eval mode, 4-bit NF4."""

import pytest
import torch

from models.base.loading import LoadConfig, bnb_config, load_base


def test_auto_resolves_to_cpu_fp32_without_quantization():
    config = LoadConfig()
    if torch.cuda.is_available():
        pytest.skip("resolution on a CUDA machine differs")
    assert config.resolved_device() == "cpu"
    assert config.resolved_quantization() == "none"
    assert config.resolved_dtype() == torch.float32


@pytest.mark.parametrize(("field", "value"), [("device", "tpu"), ("quantization", "8bit"), ("dtype", "fp8")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LoadConfig.{field}"):
        LoadConfig(**{field: value})


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        LoadConfig(device="cuda").resolved_device()


def test_the_one_bnb_config_is_nf4_double_quant():
    config = bnb_config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_load_base_on_cpu(tiny_model_dir):
    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    generation = model.generation_config
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in generation.eos_token_id
    assert not generation.do_sample


def test_load_base_4bit_on_cpu(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    model, tokenizer = load_base(
        tiny_model_dir, LoadConfig(device="cpu", quantization="4bit", dtype="float32")
    )
    assert getattr(model, "is_loaded_in_4bit", False)
    batch = tokenizer(["서울"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
