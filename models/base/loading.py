"""Load a base model folder once, for inference: device, dtype and 4-bit quantization decided in one place.

This module holds the project's one `BitsAndBytesConfig`. It does not fetch models (see `sources`) nor touch
adapters (see `generator`); it returns the plain transformers model and tokenizer, ready to generate.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]
Quantization = Literal["auto", "4bit", "none"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
_DEVICES, _QUANTS, _DTYPES = (
    ("auto", "cpu", "cuda"),
    ("auto", "4bit", "none"),
    ("auto", "bfloat16", "float16", "float32"),
)


@dataclass(frozen=True)
class LoadConfig:
    """How to load the base model."""

    device: Device = "auto"
    """"auto" picks CUDA when available, else the CPU."""
    quantization: Quantization = "auto"
    """"auto" is 4-bit NF4 on CUDA and none on the CPU ("4bit" on the CPU works, slowly)."""
    dtype: DType = "auto"
    """Compute dtype; "auto" is bfloat16 on CUDA and float32 on the CPU."""
    attn_implementation: str = "sdpa"
    """Passed to transformers as is ("sdpa", "eager", ...)."""

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("device", self.device, _DEVICES),
            ("quantization", self.quantization, _QUANTS),
            ("dtype", self.dtype, _DTYPES),
        ):
            if value not in allowed:
                raise ValueError(f"LoadConfig.{field} must be one of {', '.join(allowed)}, got {value!r}")

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("LoadConfig.device is 'cuda' but no CUDA device is available")
        return self.device

    def resolved_quantization(self) -> str:
        if self.quantization == "auto":
            return "4bit" if self.resolved_device() == "cuda" else "none"
        return self.quantization

    def resolved_dtype(self):  # -> torch.dtype
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device() == "cuda" else torch.float32
        return getattr(torch, self.dtype)


def bnb_config(compute_dtype):  # (torch.dtype) -> transformers.BitsAndBytesConfig
    """The one 4-bit config, for serving and QLoRA training alike: NF4 with double quantization."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_base(path: Path, config: LoadConfig | None = None):  # -> tuple[PreTrainedModel, tokenizer]
    """Load model and tokenizer from a local folder, in eval mode, with left padding and a pad token.

    The folder's own sampling defaults (temperature, repetition penalty, ...) are dropped: callers pass every
    decoding parameter explicitly, so the generation config keeps only the special token ids.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = config or LoadConfig()
    device, dtype = config.resolved_device(), config.resolved_dtype()
    tokenizer = load_tokenizer(path)
    kwargs = {"dtype": dtype, "attn_implementation": config.attn_implementation}
    if config.resolved_quantization() == "4bit":
        kwargs["quantization_config"] = bnb_config(dtype)
    if device == "cuda" or "quantization_config" in kwargs:
        # The current CUDA device, not always 0: a data-parallel training process has its own (LOCAL_RANK).
        kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if device == "cpu" and "device_map" not in kwargs:
        model.to("cpu")
    model.eval()
    model.generation_config = plain_generation_config(model, tokenizer)
    return model, tokenizer


def load_tokenizer(path: Path):  # -> transformers tokenizer
    """The folder's tokenizer as the server uses it: left padding and a pad token (EOS, else UNK).

    `load_base` calls it; training calls it too, so its prompts are tokenized exactly as served.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def plain_generation_config(model, tokenizer):  # -> transformers.GenerationConfig
    """The model's generation config reduced to its special token ids (EOS includes the tokenizer's).

    The folder's own sampling defaults are dropped because callers pass every decoding parameter; a model
    loaded by other means (e.g. for training) gets the same config so it generates as the server does.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=_eos_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
    )


def _eos_ids(configured, tokenizer_eos: int | None) -> list[int]:
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.append(tokenizer_eos)
    return ids
