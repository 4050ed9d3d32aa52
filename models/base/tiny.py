"""A tiny random Qwen2 model and a byte-level BPE tokenizer, both built in code, for fast tests and demos.

The tokenizer is trained on a few built-in Korean and English lines; being byte-level, it encodes any text.
The model's weights are random, so it generates nonsense; what matters is that it behaves like a real Qwen2
(chat template, left padding, LoRA targets, beams). Nothing here downloads anything.
"""

import hashlib
import json
import shutil
from pathlib import Path

from models.base.folders import BaseInfo, publish, read_base_info, staging_dir, write_base_info
from models.errors import ModelSourceError

TINY_KEY = "tiny-random"
RECIPE_VERSION = 1
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DIMS = {
    # Every Linear input is a multiple of 64, bitsandbytes' 4-bit block size, so the 4-bit CPU path works too.
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    # Larger than Qwen's 0.02 so that logits are peaked and greedy choices are not near-ties.
    "initializer_range": 0.2,
}
VOCAB_SIZE = 400
CORPUS = (
    "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.",
    "세종대왕은 1443년에 훈민정음을 창제하였다.",
    "질문: 이 글에서 수도는 어디인가?\n답: 서울",
    "문맥을 읽고 질문에 대한 답을 문맥에서 그대로 찾아 쓰시오.",
    "부산은 대한민국 제2의 도시이고 항구로 유명하다.",
    "김철수는 2020년에 서울대학교를 졸업했다.",
    "The capital of France is Paris, and the Seine flows through it.",
    "Question: Who wrote the book?\nAnswer: Kim Cheolsu",
    "Read the context and answer the question with a span copied from the context.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "system user assistant context question answer 0123456789",
)


def tiny_fingerprint(seed: int) -> str:
    """A stable digest of everything that determines the tiny model built for `seed`."""
    recipe = {"version": RECIPE_VERSION, "seed": seed, "dims": DIMS, "vocab": VOCAB_SIZE, "corpus": CORPUS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_tiny_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A byte-level BPE tokenizer (a few hundred tokens) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) the tiny model for `seed` in `folder`: safetensors weights, tokenizer, `qa_base.json`.

    A folder already stamped with the same fingerprint is reused as is. A folder holding anything but a tiny
    model is never overwritten.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    fingerprint = tiny_fingerprint(seed)
    existing = read_base_info(folder)
    if existing is not None and existing.fingerprint == fingerprint:
        return folder
    if folder.exists() and any(folder.iterdir()) and (existing is None or existing.key != TINY_KEY):
        raise ModelSourceError(f"refusing to build the tiny model into {folder}: it holds something else")

    tokenizer = build_tiny_tokenizer()
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD, IM_END])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=eos_id,
        **DIMS,
    )
    staged = staging_dir(folder)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=[eos_id], pad_token_id=pad_id)
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        write_base_info(
            staged, BaseInfo(key=TINY_KEY, fingerprint=fingerprint, source=f"built in code, seed {seed}")
        )
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return publish(staged, folder)
