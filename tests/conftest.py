"""Shared fixtures: a tiny random Qwen2 model folder and LoRA adapters for it, built in code once per session.

Heavy imports (torch, transformers, peft) happen inside the fixtures, so test modules that do not use them
(ensemble, app routes with fakes) stay fast.
"""

from pathlib import Path

import pytest

TINY_ADAPTERS = {"alpha": 1, "beta": 2, "gamma": 3}
"""Adapter name -> the seed of its random LoRA weights."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2ForCausalLM + byte-level BPE tokenizer with a ChatML template, stamped."""
    from models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-random")


@pytest.fixture(scope="session")
def tiny_adapters_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of random LoRA adapters (names in TINY_ADAPTERS) for the tiny model, with manifests.

    `init_lora_weights=False` leaves both LoRA matrices random, so each adapter really changes the outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.folders import read_base_info
    from models.registry import AdapterManifest, write_manifest

    base = read_base_info(tiny_model_dir)
    assert base is not None
    root = tmp_path_factory.mktemp("tiny-adapters")
    for name, seed in TINY_ADAPTERS.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(root / name)
        write_manifest(
            root / name,
            AdapterManifest(
                name=name,
                base_model=base.key,
                base_fingerprint=base.fingerprint,
                prompt_style="zero-shot",
                training={"seed": seed, "note": "random weights for tests"},
            ),
        )
    return root
