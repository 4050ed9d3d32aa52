"""Loading the base model for training, and giving each member a fresh LoRA adapter on it.

Two backends, one interface (`TrainingBase`):
- `peft`: `models.base.loading.load_base` (4-bit NF4 through the project's one `bnb_config` when quantized,
  then `prepare_model_for_kbit_training`) + `peft.get_peft_model`. The base is loaded ONCE per run; each
  member adds a freshly seeded adapter under its own name and deletes it after saving. The frozen base
  weights are never modified, so members cannot leak into each other, and the load (20-60 s for a
  quantized base) is paid once.
- `unsloth` (CUDA only): `FastLanguageModel.from_pretrained` + `get_peft_model` with unsloth's gradient
  checkpointing. Unsloth exposes one adapter ("default") per model, so the base is reloaded per member.
  Unsloth's forward cuts every input to its `max_seq_length`, in training and in eval mode alike (and a
  padded batch cut that way then fails in its attention-mask code). So its `max_seq_length` is the longest
  sequence the model will see: the training limit, or the longest validation prompt plus the validation
  answer budget when that is longer (`longest_input`); the training examples are still cut to
  `train.max_seq_len` by the length policy, so training memory does not change.
  `import unsloth` happens in `prepare()` before anything imports transformers, because it patches them.
Neither backend knows about data, loops or files; `runner` drives them.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from models.base.sources import ResolvedModel
from training.config import ConfigError, MemberConfig, TrainConfig

logger = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for, but no CUDA device is available")
    return requested


def resolve_backend(requested: str, device: str) -> str:
    """auto = unsloth when training on CUDA and it is installed, else peft."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if device == "cuda" and has_unsloth else "peft"
    if requested == "unsloth":
        if device != "cuda":
            raise ConfigError("train.backend: unsloth needs a CUDA device; use 'peft' here")
        if not has_unsloth:
            raise ConfigError("train.backend: unsloth is not installed (pip install -e '.[gpu]')")
    return requested


def prepare(config: TrainConfig) -> tuple[str, str]:
    """Resolve (device, backend) and, for unsloth, import it now: call this before importing the runner."""
    device = resolve_device(config.device)
    backend = resolve_backend(config.backend, device)
    if backend == "unsloth":
        if config.prompt_loss_weight > 0:
            # Unsloth returns empty logits in training unless asked; weighting prompt tokens needs them.
            os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
        import unsloth  # noqa: F401 - must precede transformers/peft so its patches apply
    return device, backend


VARLEN_ATTENTION = ("flash_attn", "xformers")
"""Packages whose variable-length attention Unsloth uses for a padding-free row (each sequence attends to
itself alone, at its own cost)."""


def batching_for(config: TrainConfig, backend: str, device: str) -> str:
    """`train.batching` with `auto` resolved: padding-free where a variable-length attention kernel keeps
    each sequence of a flattened row to itself at its own cost (Unsloth on CUDA with flash-attn or xFormers
    installed), padded elsewhere. Without such a kernel a padding-free row runs SDPA under a block-diagonal
    mask over the whole row, (sum of lengths)^2 instead of the sum of length^2: on this project's 2-core CPU
    the tiny model trained 4.5x slower a token padding-free than padded (`bench.train_backends`,
    docs/benchmarks.md). The loop always pads."""
    if config.trainer != "sft":
        return "padded"
    if config.batching != "auto":
        return config.batching
    varlen = device == "cuda" and backend == "unsloth"
    varlen = varlen and any(importlib.util.find_spec(m) is not None for m in VARLEN_ATTENTION)
    return "padding_free" if varlen else "padded"


def software_versions(backend: str) -> dict[str, str]:
    packages = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl"]
    if backend == "unsloth":
        packages += ["unsloth", "unsloth_zoo"]
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def resolved_quantization(config: TrainConfig, device: str) -> str:
    if config.quantization == "auto":
        return "4bit" if device == "cuda" else "none"
    return config.quantization


def use_bf16(config: TrainConfig, device: str) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and device == "cuda")


def lora_config(member: MemberConfig):  # -> peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(
        r=member.r,
        lora_alpha=member.alpha,
        lora_dropout=member.dropout,
        target_modules=list(member.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


class TrainingBase:
    """A base model ready for LoRA training: `attach` a member's fresh adapter, train it, `detach` it."""

    backend: str = ""

    def __init__(
        self, resolved: ResolvedModel, config: TrainConfig, device: str, *, longest_input: int = 0
    ) -> None:
        self.resolved = resolved
        self.config = config
        self.device = device
        self.max_seq_length = max(config.max_seq_len, longest_input)
        """The longest sequence this base will be given: training examples and validation prompts."""
        self.quantization = resolved_quantization(config, device)
        self.bf16 = use_bf16(config, device)
        self.tokenizer: Any = None

    def attention(self) -> dict[str, Any]:
        """How attention ran in training, for the manifest: the implementation, and whether SDPA could use
        its cuDNN kernel (None off CUDA)."""
        return {
            "implementation": self.config.attn_implementation,
            "cudnn_sdpa": self.config.cudnn_sdpa if self.device == "cuda" else None,
        }

    def attach(self, member: MemberConfig) -> tuple[Any, str]:
        """A peft model with a new adapter for `member` (seeded with `member.seed`), active and trainable;
        returns it and the adapter's name on it."""
        raise NotImplementedError

    def detach(self, adapter: str) -> None:
        """Free the member's adapter (and, for unsloth, its model)."""
        raise NotImplementedError

    def eval_mode(self, model: Any) -> None:
        model.eval()

    def train_mode(self, model: Any) -> None:
        model.train()


class PeftBase(TrainingBase):
    """transformers + peft (+ bitsandbytes 4-bit): one base for the whole run, one adapter per member."""

    backend = "peft"

    def __init__(
        self, resolved: ResolvedModel, config: TrainConfig, device: str, *, longest_input: int = 0
    ) -> None:
        super().__init__(resolved, config, device, longest_input=longest_input)
        from models.base.loading import LoadConfig, load_base

        dtype = "bfloat16" if self.bf16 else "float32"
        load = LoadConfig(
            device=device,
            quantization=self.quantization,
            dtype=dtype,
            attn_implementation=config.attn_implementation,
        )
        model, self.tokenizer = load_base(resolved.path, load)
        checkpointing = {"use_reentrant": False}
        if self.quantization == "4bit":
            _keep_cpu_4bit_layout(model)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=config.gradient_checkpointing,
                gradient_checkpointing_kwargs=checkpointing,
            )
        elif config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        self._base = model
        self._peft: Any = None

    def attach(self, member: MemberConfig) -> tuple[Any, str]:
        import torch
        from peft import get_peft_model

        torch.manual_seed(member.seed)
        if self._peft is None:
            self._peft = get_peft_model(self._base, lora_config(member), adapter_name=member.name)
        else:
            self._peft.add_adapter(member.name, lora_config(member))
            self._peft.set_adapter(member.name)
        return self._peft, member.name

    def detach(self, adapter: str) -> None:
        self._peft.delete_adapter(adapter)


def _keep_cpu_4bit_layout(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference at the first eval-mode
    forward, after which training fails ("a view of a leaf Variable ... in-place operation", Qwen's biased
    q/k/v). Validation generates before training resumes, so keep the training layout. No effect on CUDA."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


class UnslothBase(TrainingBase):
    """Unsloth's patched model and kernels (CUDA); the base is reloaded for every member."""

    backend = "unsloth"

    def __init__(
        self, resolved: ResolvedModel, config: TrainConfig, device: str, *, longest_input: int = 0
    ) -> None:
        super().__init__(resolved, config, device, longest_input=longest_input)
        from models.base.loading import load_tokenizer

        # The serving tokenizer, not unsloth's copy: prompts are tokenized exactly as the server does.
        self.tokenizer = load_tokenizer(resolved.path)
        self._model: Any = None
        if config.attn_implementation != "sdpa":
            logger.warning(
                "train.attn_implementation=%s is ignored: unsloth chooses its own attention",
                config.attn_implementation,
            )

    def attention(self) -> dict[str, Any]:
        # Unsloth's kernels; a batch with a padding mask still runs torch SDPA (unsloth/models/llama.py).
        return {**super().attention(), "implementation": "unsloth"}

    def _checkpointing(self) -> str | bool:
        return "unsloth" if self.config.gradient_checkpointing else False

    def attach(self, member: MemberConfig) -> tuple[Any, str]:
        from unsloth import FastLanguageModel

        from models.base.loading import plain_generation_config

        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(self.resolved.path),
            max_seq_length=self.max_seq_length,
            dtype=None,
            load_in_4bit=self.quantization == "4bit",
            local_files_only=True,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=member.r,
            target_modules=list(member.target_modules),
            lora_alpha=member.alpha,
            lora_dropout=member.dropout,
            bias="none",
            use_gradient_checkpointing=self._checkpointing(),
            random_state=member.seed,
        )
        model.generation_config = plain_generation_config(model, self.tokenizer)
        self._model = model
        return model, "default"

    def detach(self, adapter: str) -> None:
        import torch

        self._model = None
        gc.collect()
        torch.cuda.empty_cache()

    def eval_mode(self, model: Any) -> None:
        from unsloth import FastLanguageModel

        model.eval()
        FastLanguageModel.for_inference(model)

    def train_mode(self, model: Any) -> None:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model, use_gradient_checkpointing=self._checkpointing())
        model.train()


def load_training_base(
    backend: str, resolved: ResolvedModel, config: TrainConfig, device: str, *, longest_input: int = 0
) -> TrainingBase:
    """`longest_input`: the longest sequence validation will feed the model (prompt + answer budget)."""
    logger.info("loading %s for training with %s on %s", resolved.key, backend, device)
    if backend == "unsloth":
        return UnslothBase(resolved, config, device, longest_input=longest_input)
    return PeftBase(resolved, config, device, longest_input=longest_input)
