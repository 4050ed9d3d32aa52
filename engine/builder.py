"""`build_engine(config) -> Engine`: resolve the base, load it once, register adapters, build the pipeline
and, when asked, warm the decode loop up (`Engine.warm_up`) before the engine is handed out.

The pipeline's vote config is `EngineConfig.vote` when set, else the adapters folder's `vote.json` (a rule
fitted offline for exactly those members, `ensemble.vote_file`) when it has one, else `VoteConfig()`.

`Engine.load_adapter` / `unload_adapter` change the served adapters at run time, by name only: the folder
is found strictly inside the configured adapters folder, its config, manifest, base and prompt style are
checked by the registry (`check_adapter_folder`, the same check as at start) and its weights against that
config and the base by the generator before it is swapped in, one change per name at a time.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ensemble.pipeline import EnsemblePipeline, PipelineConfig
from ensemble.plan import Decoding, Member, build_plan
from ensemble.prompts import DEFAULT_PROMPTS, PROMPT_STYLES, get_prompt_style
from ensemble.vote import VoteConfig
from ensemble.vote_file import VOTE_FILE, read_vote_file, vote_config_to_dict
from models.adapters.registry import AdapterRegistry, AdapterSpec, check_adapter_folder, find_adapter_folder
from models.base.loading import LoadConfig, load_base
from models.base.sources import DEFAULT_MODEL, ResolvedModel, default_cache_dir, resolve_model
from models.decode.generator import Generator
from models.decode.loop import WarmUp
from models.errors import AdapterNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how to decode by default."""

    model: str = DEFAULT_MODEL
    """A model key, 'tiny-random', a local folder or a hub id."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    """Where fetched models are converted and cached."""
    adapters_dir: Path | None = None
    """Folder of adapters; None serves the base model alone."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["auto", "4bit", "none"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_input_tokens: int = 4096
    """Longest rendered prompt accepted, in tokens."""
    default_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Prompt variants used when a request names none."""
    default_decoding: Decoding = field(default_factory=Decoding)
    """Decoding used when a request gives none."""
    lora_backend: Literal["stacked", "peft"] = "stacked"
    """How one batch mixes adapters (see `models.adapters.multi_lora`); peft's mixed batch is the
    reference."""
    compile: bool = False
    """torch.compile (inductor) the decode step: the loop's step (its CUDA graph replays the fused kernels),
    or with decoder="hf" generate's forward over a static KV cache. Needs the stacked backend."""
    decoder: Literal["auto", "hf", "loop"] = "auto"
    """Greedy and beams through `generate` ("hf") or `models.decode.loop` ("loop": stacked backend only);
    "auto": the loop with the stacked backend, else `generate` (`Generator` decides)."""
    max_resident_adapters: int | None = None
    """Most adapters on the model at once (least recently used out first); None = all of them."""
    pinned_adapters: tuple[str, ...] = ()
    """Adapters never unloaded to make room; with a capacity set they are the default ensemble."""
    default_members: int | None = None
    """The default ensemble holds at most this many served adapters: those whose manifests report the best
    held-out validation F1 (`training.validation.best_f1`). None: every served adapter."""
    preload_adapters: bool = True
    """Load every adapter of `adapters_dir` at start. False: start with the base alone and load adapters by
    name later (`Engine.load_adapter`), as Ray Serve replicas do for the adapter sets routed to them."""
    decode_cache_mb: int | None = None
    """MiB the decode loop keeps for its shapes; None: a fifth of the GPU's memory (>= 4 GiB), else 4 GiB."""
    lora_kernel: bool = True
    """A decode step's stacked LoRA as one Triton kernel a projection group (`models.kernels.lora_kernel`)."""
    attention_kernel: bool = True
    """A decode step's rotary, cache write and attention as two Triton kernels a layer
    (`models.kernels.attention_kernel`)."""
    warmup: bool | Literal["auto"] = "auto"
    """Make the decode loop's shapes for the default plan and a single greedy row before `build_engine`
    returns (`Engine.warm_up`); "auto": only on CUDA, where each is a CUDA graph to capture. Needs
    decoder="loop" (with "hf" there is nothing to warm)."""
    vote: VoteConfig | None = None
    """How candidates are voted by default; None: `<adapters_dir>/vote.json` when there is one (fitted for
    those members), else `VoteConfig()`."""

    def __post_init__(self) -> None:
        if not self.default_prompts:
            raise ValueError("default_prompts: name at least one prompt variant")
        if self.default_members is not None and self.default_members < 1:
            raise ValueError(f"default_members: must be >= 1; got {self.default_members}")
        for name in self.default_prompts:
            get_prompt_style(name)  # a bad default fails at start, not per request


@dataclass
class Engine:
    """A loaded base model with its adapters, and the pipeline over them."""

    config: EngineConfig
    resolved: ResolvedModel
    generator: Generator
    registry: AdapterRegistry | None
    pipeline: EnsemblePipeline
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.generator.adapter_names)

    def members(self) -> list[Member]:
        """The default ensemble: every served adapter (the pinned ones when a capacity is set) with its
        manifest weight, or the base model alone when none is served."""
        return served_members(self.generator, self.registry, self.config)

    def all_members(self) -> list[Member]:
        """Every served adapter with its manifest weight, resident now or not (what requests may name)."""
        return served_members(self.generator, self.registry)

    def warm_up(self) -> WarmUp:
        """Make the decode loop's shapes a server meets first: one question of the default plan (every
        default member x default prompt, default decoding; none when it samples) and one greedy row (the
        first member, as a single-answer request), for every prompt width (on CUDA) or cache length bucket up
        to the longest prompt plus the default answer budget (`Generator.warm_up`)."""
        decoding = self.config.default_decoding
        plan = build_plan(self.members(), self.config.default_prompts, decoding)
        rows = tuple(item.member.adapter for item in plan.items)
        batches = [] if decoding.strategy == "sample" else [(rows, decoding.generate_kwargs()["num_beams"])]
        if (rows[:1], 1) not in batches:
            batches.append((rows[:1], 1))
        return self.generator.warm_up(
            batches, max_length=self.config.max_input_tokens + decoding.max_new_tokens
        )

    def load_adapter(self, name: str) -> tuple[AdapterSpec, bool]:
        """Serve `<adapters_dir>/<name>`; returns its spec and whether it was loaded now (False: already was).

        Raises `AdapterNotFoundError` (no such folder, or no adapters folder configured), `AdapterError` (a
        bad name, a link out of the folder, no safetensors weights, a bad manifest or corrupt weights) or
        `AdapterBaseMismatchError`; the adapters already served are untouched either way.
        """
        if self.config.adapters_dir is None or self.registry is None:
            raise AdapterNotFoundError(f"adapter {name!r}: this server has no adapters folder configured")
        if name in self.generator.adapter_names and name in self.registry:
            return self.registry.get(name), False
        folder = find_adapter_folder(self.config.adapters_dir, name)  # past it, only names with a folder
        with self._lock_for(name):
            if name in self.generator.adapter_names:
                return self.registry.get(name), False
            spec = check_adapter_folder(
                folder,
                base_key=self.resolved.key,
                base_fingerprint=self.resolved.fingerprint,
                prompt_styles=PROMPT_STYLES,
            )
            # Registered first, so every name the generator serves always has its manifest here.
            self.registry.add(spec)
            try:
                self.generator.load_adapter(spec)
            except BaseException:
                self.registry.remove(name)
                raise
            logger.info("adapter %s loaded from %s", name, folder)
            return spec, True

    def unload_adapter(self, name: str) -> None:
        """Stop serving `name` (requests already generating finish first: the generator's lock)."""
        if self.registry is None or name not in self.registry:
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded")
        with self._lock_for(name):
            if name not in self.registry or name not in self.generator.adapter_names:
                raise AdapterNotFoundError(f"adapter {name!r} is not loaded")
            self.generator.unload_adapter(name)
            self.registry.remove(name)
            logger.info("adapter %s unloaded", name)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())


def served_members(
    generator: Generator, registry: AdapterRegistry | None, config: EngineConfig | None = None
) -> list[Member]:
    # Read at call time: adapters can be loaded and unloaded while the service runs.
    names = list(generator.adapter_names)
    if config is not None and config.max_resident_adapters is not None and config.pinned_adapters:
        names = [n for n in names if n in config.pinned_adapters]
    if not names or registry is None:
        return [Member(adapter=None)]
    if config is not None:
        names = default_ensemble(names, registry, config.default_members)
    return [Member(adapter=n, weight=registry.get(n).manifest.weight) for n in names]


def default_ensemble(names: list[str], registry: AdapterRegistry, limit: int | None) -> list[str]:
    """`names` (in their order), cut to the `limit` with the best held-out validation F1 (None: all)."""
    if limit is None:
        return list(names)
    best = sorted(names, key=lambda n: -held_out_f1(registry.get(n)))[:limit]
    return [n for n in names if n in best]


def held_out_f1(spec: AdapterSpec) -> float:
    """The best validation F1 its training reported on held-out articles (-inf when it reports none)."""
    validation = (spec.manifest.training or {}).get("validation") or {}
    f1 = validation.get("best_f1") if isinstance(validation, dict) else None
    return float(f1) if isinstance(f1, int | float) and not isinstance(f1, bool) else float("-inf")


def _check_capacity(config: EngineConfig, names: list[str]) -> None:
    unknown = sorted(set(config.pinned_adapters) - set(names))
    if unknown:
        raise ValueError(f"pinned_adapters: {', '.join(unknown)} not found in {config.adapters_dir}")
    capacity = config.max_resident_adapters
    if capacity is not None and not config.pinned_adapters and len(names) > capacity:
        raise ValueError(
            f"max_resident_adapters={capacity} is less than the {len(names)} adapters of the default "
            "ensemble; pin the default ensemble with pinned_adapters (the others load when named)"
        )


def adapters_vote_config(adapters_dir: Path | None) -> VoteConfig | None:
    """The vote config of `<adapters_dir>/vote.json`, or None without one; a bad file raises
    `InvalidVoteConfigError` naming the field, so the server does not start on it."""
    if adapters_dir is None or not (adapters_dir / VOTE_FILE).is_file():
        return None
    path = adapters_dir / VOTE_FILE
    vote_file = read_vote_file(path)
    provenance = vote_file.provenance
    logger.info(
        "vote config from %s (fitted %s on %s questions, candidates sha256 %s): %s",
        path,
        provenance.get("date", "?"),
        (provenance.get("candidates") or {}).get("questions", "?"),
        str((provenance.get("candidates") or {}).get("sha256", "?"))[:12],
        vote_config_to_dict(vote_file.vote),
    )
    return vote_file.vote


def _generator(model: Any, tokenizer: Any, config: EngineConfig) -> Generator:
    """The generator over a loaded model, with `config`'s decoding options (every caller's, the same way)."""
    return Generator(
        model,
        tokenizer,
        max_input_tokens=config.max_input_tokens,
        max_resident_adapters=config.max_resident_adapters,
        pinned_adapters=config.pinned_adapters,
        lora_backend=config.lora_backend,
        compile_backend="inductor" if config.compile else None,
        decoder=config.decoder,
        decode_cache_bytes=config.decode_cache_mb << 20 if config.decode_cache_mb else None,
        lora_kernel=config.lora_kernel,
        attention_kernel=config.attention_kernel,
    )


def _pipeline(
    generator: Generator, config: EngineConfig, vote: VoteConfig, members: Callable[[], list[Member]]
) -> EnsemblePipeline:
    return EnsemblePipeline(
        generator,
        PipelineConfig(
            default_prompts=config.default_prompts, default_decoding=config.default_decoding, vote=vote
        ),
        default_members=members,
    )


def pipeline_on_model(
    model: Any, tokenizer: Any, adapters: Sequence[str], config: EngineConfig
) -> EnsemblePipeline:
    """The pipeline an `Engine` has, over a model already in memory whose LoRA adapters are on it already
    (`adapters`, attached in place: nothing is loaded, their weights may change between calls). Training's
    validation answers with the adapter being trained this way, through the server's own path; the default
    members are those adapters, the vote `config.vote` or `VoteConfig()`."""
    generator = _generator(model, tokenizer, config)
    for name in adapters:
        generator.attach_adapter(name)
    members = [Member(adapter=name) for name in adapters]
    return _pipeline(generator, config, config.vote or VoteConfig(), lambda: list(members))


def build_engine(config: EngineConfig) -> Engine:
    started = time.perf_counter()
    # Read first: a bad vote.json stops the start before minutes of model loading.
    vote_config = config.vote or adapters_vote_config(config.adapters_dir) or VoteConfig()
    resolved = resolve_model(config.model, config.cache_dir)
    model, tokenizer = load_base(
        resolved.path, LoadConfig(device=config.device, quantization=config.quantization, dtype=config.dtype)
    )
    generator = _generator(model, tokenizer, config)
    registry = None
    if config.adapters_dir is not None and not config.preload_adapters:
        registry = AdapterRegistry()  # filled by load_adapter as adapters are asked for
    elif config.adapters_dir is not None:
        registry = AdapterRegistry.from_dir(
            config.adapters_dir,
            base_key=resolved.key,
            base_fingerprint=resolved.fingerprint,
            prompt_styles=PROMPT_STYLES,
        )
        _check_capacity(config, registry.names())
        # Pinned first, so with a capacity the pinned ones are resident when serving starts.
        for name in sorted(registry.names(), key=lambda n: n not in config.pinned_adapters):
            generator.load_adapter(registry.get(name))
    pipeline = _pipeline(
        generator, config, vote_config, functools.partial(served_members, generator, registry, config)
    )
    engine = Engine(config, resolved, generator, registry, pipeline)
    if config.warmup is True or (config.warmup == "auto" and generator.device.startswith("cuda")):
        engine.warm_up()
    logger.info(
        "engine ready: %s on %s with adapters %s, vote rule %s, in %.1fs",
        resolved.key,
        generator.device,
        engine.adapter_names or ["base"],
        vote_config.rule,
        time.perf_counter() - started,
    )
    return engine
