"""The training recipe: `TrainConfig` (shared by every member) and `MemberConfig` (one adapter each).

A recipe is a TOML (or YAML) file with a `[train]` table and one `[[members]]` table per adapter. Command-line
overrides use the same dotted names as error messages: `train.epochs=0.45` sets one train key,
`members.learning_rate=1e-4` sets a key of every member, `members.<name>.r=8` one member's key.
This module is pure Python: it reads and validates settings, and imports neither torch nor the data.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ensemble.errors import UnknownPromptError
from ensemble.prompts import get_prompt_style
from models.adapters.registry import ADAPTER_NAME, RESERVED_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/korquad/KorQuAD_v1.0_dev.json"
"""The KorQuAD 1.0 dev file, relative to the repository root; its train split is what we train on."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Split = Literal["train", "all"]
LengthPolicy = Literal["window", "drop"]
Scheduler = Literal["cosine", "linear", "constant"]
Precision = Literal["auto", "bf16", "fp32"]
Quantization = Literal["auto", "4bit", "none"]
Device = Literal["auto", "cpu", "cuda"]
Backend = Literal["auto", "unsloth", "peft"]
Trainer = Literal["sft", "loop"]
Batching = Literal["auto", "padded", "padding_free", "packed"]
AttnImplementation = Literal["sdpa", "eager"]
SaveDType = Literal["bfloat16", "float16", "float32"]


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message starts with the dotted key at fault."""


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


def _choice(key: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise _fail(key, f"must be one of {', '.join(allowed)}; got {value!r}")


def _number(
    key: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise _fail(key, f"must be {'an integer' if integer else 'a number'}; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise _fail(key, f"must be {'>' if low_open else '>='} {low}; got {value!r}")
    if high is not None and value > high:
        raise _fail(key, f"must be <= {high}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MemberConfig:
    """One ensemble member: one LoRA adapter with its own seed, prompt variant and hyperparameters."""

    name: str
    """Adapter name: the folder written under `train.output_dir` and what clients pick it by."""
    seed: int = 0
    """Seeds the LoRA initialisation and dropout (and the data order unless `data_seed` is set)."""
    prompt_style: str = "zero-shot"
    """Prompt variant trained with (a name from `ensemble.prompts`); the server asks with the same one."""
    r: int = 16
    """LoRA rank."""
    alpha: float = 32
    """LoRA alpha; the update is scaled by alpha / r."""
    dropout: float = 0.05
    """LoRA dropout on the adapter's input, in [0, 1)."""
    target_modules: tuple[str, ...] = LORA_TARGETS
    """Linear layers that get LoRA: by default every attention and MLP projection."""
    learning_rate: float = 2e-4
    """Peak AdamW learning rate (after warmup)."""
    data_seed: int | None = None
    """Seed of the training-data order; None uses `seed`."""
    shuffle: bool = True
    """Shuffle the training data each epoch; false keeps file order (still minus the holdout)."""
    weight: float = 1.0
    """The adapter's default vote weight, written to its manifest."""
    neftune_noise_alpha: float | None = None
    """NEFTune noise for this member only; None uses `train.neftune_noise_alpha`."""

    def __post_init__(self) -> None:
        key = f"members.{self.name}"
        if not isinstance(self.name, str) or not ADAPTER_NAME.match(self.name):
            raise _fail("members.name", f"{self.name!r} must match {ADAPTER_NAME.pattern}")
        if self.name.lower() in RESERVED_NAMES:
            raise _fail("members.name", f"{self.name!r} is reserved for the base model")
        _number(f"{key}.seed", self.seed, integer=True)
        try:
            get_prompt_style(self.prompt_style)
        except UnknownPromptError as e:
            raise _fail(f"{key}.prompt_style", str(e)) from e
        _number(f"{key}.r", self.r, low=1, integer=True)
        _number(f"{key}.alpha", self.alpha, low=0, low_open=True)
        _number(f"{key}.dropout", self.dropout, low=0, high=0.99)
        targets = self.target_modules
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise _fail(f"{key}.target_modules", f"must be a non-empty list of module names; got {targets!r}")
        object.__setattr__(self, "target_modules", tuple(targets))
        _number(f"{key}.learning_rate", self.learning_rate, low=0, low_open=True)
        if self.data_seed is not None:
            _number(f"{key}.data_seed", self.data_seed, integer=True)
        if not isinstance(self.shuffle, bool):
            raise _fail(f"{key}.shuffle", f"must be true or false; got {self.shuffle!r}")
        _number(f"{key}.weight", self.weight, low=0, low_open=True)
        if self.neftune_noise_alpha is not None:
            _number(f"{key}.neftune_noise_alpha", self.neftune_noise_alpha, low=0, low_open=True)

    @property
    def order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything shared by the members of one run: base, data, lengths, schedule, precision, output."""

    base: str = "qwen2.5-coder-0.5b"
    """Base model: a key (`qa-model list`), `tiny-random` or a local model folder."""
    cache_dir: str = "~/.cache/qa-ensemble"
    """Where base models are fetched and converted (as for `qa-model fetch --cache-dir`)."""
    gguf: str | None = None
    """Optional pre-assembled GGUF for `base` (verified against the pinned sha256), for offline machines."""
    data: tuple[str, ...] = (DEFAULT_DATA,)
    """Data files (SQuAD/KorQuAD JSON, CSV, JSON Lines); relative paths are read from the repository root."""
    data_format: Literal["auto", "squad", "csv", "jsonl"] = "auto"
    """Format of every data file; auto goes by the extension."""
    split: Split = "train"
    """`train`: only articles in the fixed KorQuAD train split (needs titles); `all`: every row (own data).
    The eval split is never trained on."""
    holdout_fraction: float = 0.1
    """Fraction of the training articles held out for validation (whole articles, never trained on)."""
    holdout_seed: int = 0
    """Seed of the article holdout; the same for every member, so all validate on the same questions."""
    val_questions: int = 200
    """At most this many held-out questions are generated at each validation."""
    max_seq_len: int = 1024
    """Longest training sequence (prompt + answer + end token), in base-model tokens."""
    length_policy: LengthPolicy = "window"
    """For a longer example: `window` shortens the context around the answer span, `drop` skips it.
    Either way an answer is never cut, and every shortened or dropped id is reported."""
    epochs: float = 0.6
    """Most training, in epochs over the training examples (fractions allowed)."""
    eval_every: float = 0.05
    """Validate every this fraction of an epoch (and at the end); the best validation F1 is kept."""
    eval_at_start: bool = True
    """Also validate before the first step: the base model's score, logged as a baseline (never kept)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    grad_accum: int = 2
    """Forward passes per optimizer step (effective batch = batch_size x grad_accum)."""
    warmup_ratio: float = 0.05
    """Fraction of the optimizer steps with a linear learning-rate warmup."""
    scheduler: Scheduler = "cosine"
    """Learning-rate decay after warmup (to zero at the last step) or `constant`."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    precision: Precision = "auto"
    """Compute precision: auto = bf16 autocast on CUDA, fp32 on the CPU."""
    quantization: Quantization = "auto"
    """Base weights: auto = 4-bit NF4 (QLoRA) on CUDA, none on the CPU; `4bit` also works on the CPU."""
    device: Device = "auto"
    """Where to train: auto = CUDA when available."""
    backend: Backend = "auto"
    """auto = unsloth on CUDA when it is installed, else peft (transformers + peft + bitsandbytes)."""
    trainer: Trainer = "sft"
    """`sft`: TRL's SFTTrainer (`training.sft`: resumable checkpoints, data parallel under `accelerate launch`
    or `torchrun`, padding-free or packed batches, the logging integrations of `report_to`); `loop`: the
    project's own loop (`training.trainer`), kept for side-by-side runs until the GPU parity runs are done."""
    batching: Batching = "auto"
    """How the SFTTrainer lays out a micro-batch: `auto` is `padding_free` where a variable-length attention
    kernel makes it cheap (Unsloth on CUDA with flash-attn or xFormers), else `padded`
    (`training.backends.batching_for`; the manifest records what ran); `padding_free` flattens its
    `batch_size` sequences into one row (no padding token; attention stays within each sequence through its
    position ids), `packed` fills
    rows of `batch_size x max_seq_len` tokens best-fit (TRL's BFD packing; more sequences a step than
    `batch_size`), `padded` right-pads to the longest (as the loop does). The loop always pads."""
    report_to: tuple[str, ...] = ()
    """Logging integrations of the SFTTrainer (transformers' `report_to`: tensorboard, wandb, trackio, mlflow,
    ...); none by default. The member's JSONL train log is written either way."""
    save_total_limit: int = 1
    """Checkpoints kept per member for `qa-train --resume` (at each validation; deleted once the adapter is
    exported)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward (less memory, ~30% slower); unsloth uses its own variant."""
    attn_implementation: AttnImplementation = "sdpa"
    """The peft backend's attention in training (transformers' `attn_implementation`); unsloth has its own."""
    cudnn_sdpa: bool = False
    """Let PyTorch's SDPA pick its cuDNN kernel when training on CUDA. Off: on H100/H200 its backward gives
    NaN gradients for masked batches 64 mod 128 tokens long (pytorch/pytorch#196678), as in our H200 runs."""
    neftune_noise_alpha: float | None = None
    """NEFTune: uniform noise of this scale on the input embeddings while training; None disables it."""
    prompt_loss_weight: float = 0.0
    """Loss weight of prompt tokens relative to answer tokens; 0 is answer-only loss."""
    val_batch_size: int = 32
    """Questions per generate call during validation."""
    val_max_new_tokens: int = 32
    """Answer budget during validation, in tokens."""
    output_dir: str = "adapters"
    """Where the adapter folders go (one per member) plus `.training/` reports; relative to the cwd."""
    overwrite: bool = False
    """Replace existing adapter folders of the same names instead of refusing to start."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, overriding `epochs` (smoke tests and benchmarks)."""
    save_dtype: SaveDType = "bfloat16"
    """Dtype of the saved LoRA weights (bf16 halves the file; training keeps them in fp32)."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        if self.split == "eval":
            raise _fail("train.split", "never train on the eval split (shared/data/README.md); use train")
        for name, allowed in (
            ("split", ("train", "all")),
            ("length_policy", ("window", "drop")),
            ("scheduler", ("cosine", "linear", "constant")),
            ("precision", ("auto", "bf16", "fp32")),
            ("quantization", ("auto", "4bit", "none")),
            ("device", ("auto", "cpu", "cuda")),
            ("backend", ("auto", "unsloth", "peft")),
            ("save_dtype", ("bfloat16", "float16", "float32")),
            ("trainer", ("sft", "loop")),
            ("batching", ("auto", "padded", "padding_free", "packed")),
            ("attn_implementation", ("sdpa", "eager")),
            ("data_format", ("auto", "squad", "csv", "jsonl")),
        ):
            _choice(f"train.{name}", getattr(self, name), allowed)
        for name in ("base", "cache_dir", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise _fail(f"train.{name}", f"must be a non-empty string; got {getattr(self, name)!r}")
        data = (self.data,) if isinstance(self.data, str) else self.data
        if not data or not all(isinstance(d, str) and d.strip() for d in data):
            raise _fail("train.data", f"must be a path or a non-empty list of paths; got {self.data!r}")
        object.__setattr__(self, "data", tuple(data))
        _number("train.holdout_fraction", self.holdout_fraction, low=0, high=0.9)
        _number("train.holdout_seed", self.holdout_seed, integer=True)
        _number("train.val_questions", self.val_questions, low=1, integer=True)
        _number("train.max_seq_len", self.max_seq_len, low=16, integer=True)
        _number("train.epochs", self.epochs, low=0, low_open=True)
        _number("train.eval_every", self.eval_every, low=0, low_open=True)
        _number("train.batch_size", self.batch_size, low=1, integer=True)
        _number("train.grad_accum", self.grad_accum, low=1, integer=True)
        _number("train.warmup_ratio", self.warmup_ratio, low=0, high=0.5)
        _number("train.weight_decay", self.weight_decay, low=0)
        _number("train.max_grad_norm", self.max_grad_norm, low=0)
        _number("train.prompt_loss_weight", self.prompt_loss_weight, low=0, high=1)
        _number("train.val_batch_size", self.val_batch_size, low=1, integer=True)
        _number("train.val_max_new_tokens", self.val_max_new_tokens, low=1, integer=True)
        if self.neftune_noise_alpha is not None:
            _number("train.neftune_noise_alpha", self.neftune_noise_alpha, low=0, low_open=True)
        if self.max_steps is not None:
            _number("train.max_steps", self.max_steps, low=1, integer=True)
        _number("train.save_total_limit", self.save_total_limit, low=1, integer=True)
        report_to = (self.report_to,) if isinstance(self.report_to, str) else self.report_to
        if not all(isinstance(r, str) and r.strip() for r in report_to):
            raise _fail("train.report_to", f"must be a list of integration names; got {self.report_to!r}")
        object.__setattr__(self, "report_to", tuple(r for r in report_to if r != "none"))
        if self.trainer == "loop" and self.batching == "packed":
            raise _fail("train.batching", 'packing needs trainer = "sft"; the loop always pads')
        for name in ("eval_at_start", "gradient_checkpointing", "cudnn_sdpa", "overwrite", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(f"train.{name}", f"must be true or false; got {getattr(self, name)!r}")
        if self.device == "cpu" and self.backend == "unsloth":
            raise _fail("train.backend", 'unsloth needs CUDA; use backend = "peft" with device = "cpu"')

    def data_paths(self) -> list[Path]:
        """The data files as absolute paths (relative ones are read from the repository root)."""
        return [p if p.is_absolute() else (REPO_ROOT / p).resolve() for p in map(Path, self.data)]

    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser()


@dataclass(frozen=True)
class RunConfig:
    """A whole recipe: the shared settings and the members, in training order."""

    train: TrainConfig
    members: tuple[MemberConfig, ...]
    source: str = ""
    """Where the recipe came from (file path), for the manifests."""
    overrides: tuple[str, ...] = field(default=())
    """The `--set` overrides applied on top of the file, in order."""

    def __post_init__(self) -> None:
        if not self.members:
            raise _fail("members", "a recipe needs at least one [[members]] table")
        names = [m.name for m in self.members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _fail("members.name", f"names must be unique; repeated: {', '.join(duplicates)}")

    def select(self, names: Sequence[str]) -> RunConfig:
        """The same run restricted to the named members (all when `names` is empty)."""
        if not names:
            return self
        known = {m.name for m in self.members}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise _fail(
                "--only", f"unknown member(s) {', '.join(unknown)}; the recipe has {', '.join(sorted(known))}"
            )
        chosen = tuple(m for m in self.members if m.name in set(names))
        return RunConfig(self.train, chosen, self.source, self.overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"train": asdict(self.train), "members": [asdict(m) for m in self.members]}


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML (`.toml`) or YAML (`.yaml`/`.yml`) recipe and apply `KEY=VALUE` overrides in order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _fail("--config", f"cannot read {path}: {e}") from e
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # a transformers dependency; only needed for YAML recipes

        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise _fail("--config", f"{path} is not valid YAML: {e}") from e
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _fail("--config", f"{path} is not valid TOML: {e}") from e
    return build_run(raw, overrides, source=str(path))


def build_run(raw: Mapping[str, Any], overrides: Sequence[str] = (), *, source: str = "") -> RunConfig:
    """Validate a recipe already parsed into tables (the TOML/YAML layout) plus overrides."""
    if not isinstance(raw, Mapping):
        raise _fail("--config", "a recipe must be a table with [train] and [[members]]")
    unknown = sorted(set(raw) - {"train", "members"})
    if unknown:
        raise _fail(unknown[0], "unknown section; a recipe has [train] and [[members]]")
    train = dict(raw.get("train") or {})
    members = raw.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
        raise _fail("members", "must be a list of tables ([[members]])")
    members = [dict(m) for m in members]
    for item in overrides:
        _apply_override(item, train, members)
    return RunConfig(
        train=_build(TrainConfig, train, "train"),
        members=tuple(_build(MemberConfig, m, f"members[{i}]") for i, m in enumerate(members)),
        source=source,
        overrides=tuple(overrides),
    )


def parse_value(text: str) -> Any:
    """An override's value as a TOML literal (`0.45`, `true`, `[1, 2]`, `"x"`), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(item: str, train: dict[str, Any], members: list[dict[str, Any]]) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) not in (2, 3) or parts[0] not in ("train", "members") or not all(parts):
        raise _fail(
            "--set", f"{item!r} must look like train.KEY=VALUE, members.KEY=VALUE or members.NAME.KEY=VALUE"
        )
    value = parse_value(text.strip())
    if parts[0] == "train":
        if len(parts) != 2:
            raise _fail("--set", f"{item!r}: train keys have no sub-keys")
        train[parts[1]] = value
        return
    if len(parts) == 2:
        for member in members:
            member[parts[1]] = value
        return
    chosen = [m for m in members if m.get("name") == parts[1]]
    if not chosen:
        names = ", ".join(str(m.get("name")) for m in members)
        raise _fail("--set", f"{item!r}: no member named {parts[1]!r}; members: {names}")
    chosen[0][parts[2]] = value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown key; known keys: {', '.join(sorted(known))}")
    if cls is MemberConfig and "name" not in values:
        raise _fail(f"{where}.name", "every member needs a name")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)
