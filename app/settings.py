"""Service settings: the only place that reads environment variables (prefix `QA_`).

Everything else receives a `ServiceSettings` instance. Limits are settings so operators can tune them; each is
documented in the README's configuration table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine import EngineConfig
from models.base.sources import DEFAULT_MODEL, default_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_ADAPTERS = REPO_ROOT / "adapters"
"""The repository's adapters, one folder per base model key (`adapters/<key>/<member>/`)."""


_ENGINE = {
    f.name: f.default for f in dataclasses.fields(EngineConfig) if f.default is not dataclasses.MISSING
}
"""The engine's own defaults: a setting that configures the engine defaults to what `EngineConfig` does."""


class ServiceSettings(BaseSettings):
    """Configuration of one service process."""

    model_config = SettingsConfigDict(env_prefix="QA_", extra="ignore", frozen=True)

    model: str = Field(
        DEFAULT_MODEL,
        description="Base model: a PyPI-shipped model key, 'tiny-random', a local folder or a hub id.",
    )
    adapters_dir: Path | None = Field(
        None,
        description="Folder of LoRA adapters (one sub-folder each, with qa_adapter.json). "
        "Unset: the repository's adapters/<model>/ when the model is a key it has adapters for, else the "
        "base model alone.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where fetched models are cached.")
    host: str = Field("127.0.0.1", description="Address qa-serve binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port qa-serve binds to.")
    device: Literal["auto", "cpu", "cuda"] = Field(_ENGINE["device"], description="Where the model runs.")
    quantization: Literal["auto", "4bit", "none"] = Field(
        _ENGINE["quantization"], description="auto: 4-bit NF4 on CUDA, none on CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        _ENGINE["dtype"], description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    # NoDecode: pydantic-settings would parse the variable as JSON first and refuse "zero-shot,principled".
    default_prompts: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None,
        description="Prompt variants used when a request names none. Unset: by device "
        "(ensemble.plan.DEVICE_DEFAULTS: zero-shot,principled on CUDA, zero-shot on the CPU).",
    )
    lora_backend: Literal["stacked", "peft"] = Field(
        _ENGINE["lora_backend"],
        description="How rows of one batch use different adapters: stacked (all resident adapters in one "
        "matmul pair per layer, a per-row mask) or peft (peft's mixed-adapter batch, a loop per adapter).",
    )
    compile: bool = Field(
        _ENGINE["compile"],
        description="torch.compile (inductor) the decode step: with decoder=loop the loop's step, whose "
        "fused kernels its CUDA graph then replays; with decoder=hf generate's forward over a static KV "
        "cache (prompts padded to multiples of 64 tokens). Needs lora_backend=stacked. The first steps "
        "compile (warm-up does it before ready: minutes).",
    )
    decoder: Literal["auto", "hf", "loop"] = Field(
        _ENGINE["decoder"],
        description="How greedy and beam requests decode: hf (transformers' generate) or loop (our own loop: "
        "one prefill per prompt shared by its beams, a static KV cache, a CUDA graph per shape on CUDA). "
        "Sampled requests always use generate. loop needs lora_backend=stacked; auto: loop with stacked, "
        "hf with peft.",
    )
    lora_kernel: bool = Field(
        _ENGINE["lora_kernel"],
        description="Run a decode step's stacked LoRA as Triton kernels (CUDA, up to 64 rows): one a "
        "projection group (q/k/v, gate/up, o), two for down's long input, instead of an A matmul, a mask "
        "multiply and a B matmul per projection. Same arithmetic; false keeps the matmuls.",
    )
    attention_kernel: bool = Field(
        _ENGINE["attention_kernel"],
        description="Run a decode-loop step's rotary embedding, KV cache write and attention as two Triton "
        "kernels a layer (CUDA; Qwen2 and Llama attention) instead of ~14 operators. Same arithmetic up to "
        "rounding; false keeps transformers' attention.",
    )
    decode_cache_mb: int | None = Field(
        _ENGINE["decode_cache_mb"],
        ge=1,
        description="Memory the decode loop keeps for its shapes (KV buffers and CUDA graphs of the batch "
        "shapes met; least recently used out first), in MiB. Unset: a fifth of the GPU's memory on CUDA (at "
        "least 4 GiB: a 16-question /batch chunk of the 0.5B ensemble needs ~4-6 GB a shape), 4 GiB "
        "elsewhere.",
    )
    warmup: bool | Literal["auto"] = Field(
        _ENGINE["warmup"],
        description="Before /readyz says ready, decode dummy prompts through the decode loop once per shape "
        "the server meets first (one question of the default plan, one greedy row) and prompt width bucket "
        "(on CUDA, where prefills are graphs too; cache length bucket elsewhere) up to max_input_tokens + "
        "default_max_new_tokens, as many as its shape cache holds, so that those requests find their CUDA "
        "graphs captured. auto: with decoder=loop on CUDA; true: with decoder=loop anywhere (eager off "
        "CUDA); false: never.",
    )
    max_resident_adapters: int | None = Field(
        _ENGINE["max_resident_adapters"],
        ge=1,
        description="Most adapters resident on the model at once; the least recently used unpinned one is "
        "unloaded to make room and loaded again when a request names it. Unset: all of them.",
    )
    pinned_adapters: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Adapters never unloaded to make room (comma-separated); with max_resident_adapters set "
        "they are the default ensemble.",
    )
    default_strategy: Literal["greedy", "beam", "sample"] | None = Field(
        None, description="Default decoding. Unset: by device (beam on CUDA, greedy on the CPU)."
    )
    default_members: int | None = Field(
        None,
        ge=1,
        description="Most served adapters in the default ensemble, those with the best held-out validation "
        "F1 in their manifests. Unset: by device (all on CUDA, 1 on the CPU).",
    )
    default_num_beams: int | None = Field(
        None, ge=1, description="Default beams (and beam outputs) per prompt. Unset: 3 for beam search."
    )
    default_max_new_tokens: int = Field(24, ge=1, description="Default answer length budget in tokens.")
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Withhold answers whose confidence is below this (0..1): /answer says answer null and "
        'abstained true (with the clusters), a /batch row abstains ("" in the CSV); a request\'s '
        "min_confidence overrides it. Unset: never abstain.",
    )
    max_new_tokens_limit: int = Field(128, ge=1, description="Largest max_new_tokens a request may ask for.")
    max_beams_limit: int = Field(8, ge=1, description="Largest num_beams a request may ask for.")
    max_candidates_limit: int = Field(
        96, ge=1, description="Largest adapters x prompts x outputs one request may ask for."
    )
    max_context_chars: int = Field(20_000, ge=1, description="Longest context accepted, in characters.")
    max_question_chars: int = Field(1_000, ge=1, description="Longest question accepted, in characters.")
    max_input_tokens: int = Field(
        _ENGINE["max_input_tokens"], ge=16, description="Longest rendered prompt accepted, in tokens."
    )
    batch_sync_max_rows: int = Field(
        8,
        ge=0,
        description="POST /batch answers at most this many rows inline (200); more become a job (202).",
    )
    batch_max_rows: int = Field(5_000, ge=1, description="Most rows one batch may hold (413 past it).")
    batch_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest POST /batch body (upload or JSON rows), in bytes (413)."
    )
    batch_chunk_size: int | None = Field(
        None,
        ge=1,
        description="Most questions per generation chunk in a batch run. Unset: by device "
        "(ensemble.chunks.CHUNK_LIMITS: 16).",
    )
    batch_chunk_tokens: int | None = Field(
        None,
        ge=1,
        description="Most padded prompt tokens (questions x the longest) per generation chunk in a batch "
        "run. Unset: by device (ensemble.chunks.CHUNK_LIMITS: no limit on CUDA, 6144 on the CPU, where "
        "chunks are also cut so that no prompt is padded past 10% + 16 tokens of its own length).",
    )
    batch_max_jobs: int = Field(
        32,
        ge=1,
        description="Batch jobs kept; to make room the oldest finished one past batch_retention_s is "
        "forgotten (its files deleted), and when there is none a new job is refused (429).",
    )
    batch_retention_s: float = Field(
        3600.0,
        ge=0,
        description="A finished batch job and its result are kept at least this long after it finished: a "
        "new job is refused (429) rather than forget it sooner.",
    )
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1,
        description="Largest request body on every route but POST /batch (which has batch_max_bytes), in "
        "bytes (413 past it).",
    )
    max_context_tokens: int = Field(3_072, ge=1, description="Longest context accepted, in tokens (413).")
    max_question_tokens: int = Field(256, ge=1, description="Longest question accepted, in tokens (413).")
    max_concurrent_requests: int = Field(
        32,
        ge=1,
        description="Answer requests (and inline batches) admitted at once; they share generation passes "
        "through the micro-batcher. More wait in the queue.",
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        description="Micro-batching: most questions answered together in one generation pass (concurrent "
        "/answer requests and /batch chunks share it).",
    )
    max_batch_wait_ms: float = Field(
        5.0,
        ge=0,
        description="Micro-batching: longest a question waits for others to share its pass (never while "
        "max_batch_size are already waiting); 0 = no waiting.",
    )
    max_queue: int = Field(
        16, ge=0, description="Answer requests waiting for a slot; past it a request is refused (429)."
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest an answer request (queue wait + generation) may take before it is answered 504.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests and a running batch chunk may take to finish.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Most client connections open at once; one more is answered 503 and closed before "
        "anything is read.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a request's head (request line and headers) may take to arrive, from the "
        "connection's opening or the previous response's end; past it 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a request's body may take to arrive after its head; past it 408 and the "
        "connection is closed. Time the request then spends queued or generating does not count.",
    )
    jobs_dir: Path | None = Field(
        None, description="Where batch job states and results are written. Unset: <cache_dir>/jobs."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, every route but /healthz and /readyz requires this key."
    )
    api_key_file: Path | None = Field(
        None, description="A file holding the API key (first line); used when api_key is unset."
    )
    load_in_background: bool = Field(
        True, description="Load the model after the server starts listening (readyz says 503 until done)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="json: one JSON object per line (with the request id); text: plain lines for a terminal.",
    )

    @field_validator("default_prompts", "pinned_adapters", mode="before")
    @classmethod
    def _split_prompts(cls, value: object) -> object:
        # Env vars arrive as strings: accept "zero-shot,principled" as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def resolved_adapters_dir(self) -> Path | None:
        """The adapters folder to serve, or None for the base model alone.

        The embedded adapters live by base (`adapters/<key>/`), so a base gets the set trained on it and no
        other (the manifests' base check refuses another base's adapters anyway); a base without a set, or a
        folder or hub model, starts with the base alone unless `QA_ADAPTERS_DIR` names a folder.
        """
        if self.adapters_dir is not None:
            return self.adapters_dir
        if "/" in self.model or self.model in (".", ".."):
            return None
        embedded = EMBEDDED_ADAPTERS / self.model
        return embedded if embedded.is_dir() else None

    def resolved_jobs_dir(self) -> Path:
        """Where batch jobs are persisted."""
        return self.jobs_dir if self.jobs_dir is not None else self.cache_dir / "jobs"

    def resolved_api_key(self) -> str | None:
        """The API key clients must send, or None when the service is open; an empty key is refused."""
        if self.api_key is not None:
            secret = self.api_key  # a str when set through model_copy, which does not validate
            key = (secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)).strip()
            source = "QA_API_KEY"
        elif self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"api_key_file: cannot read {self.api_key_file}: {exc.strerror}") from exc
            key, source = (lines[0].strip() if lines else ""), f"api_key_file {self.api_key_file}"
        else:
            return None
        if not key:
            raise ValueError(f"{source}: the API key is empty; unset it to serve without a key")
        return key
