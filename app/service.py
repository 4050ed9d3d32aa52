"""The service object: holds the `Engine` that `engine.build_engine` composes from the settings, once.

It owns the loading state (loading -> ready | failed) so the HTTP layer can answer /readyz while a large model
is still being fetched, and it turns validated requests into pipeline calls, checking the limits that depend
on settings. A request's `vote` overrides are laid over the pipeline's vote config here (the dataclass checks
them); its `min_confidence` (else `QA_MIN_CONFIDENCE`) decides whether the answer is withheld. It knows
nothing about HTTP status codes: errors are typed and mapped in `app.errors`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from app.schemas import AnswerRequest, AnswerResponse, CandidateOut, ClusterOut, DecodingRequest
from app.settings import ServiceSettings
from app.vote_request import VoteRequest
from engine import Engine, EngineConfig, build_engine
from engine.batcher import BatchRecord, MicroBatcher
from ensemble.batch import BatchOptions, BatchResult, run_batch
from ensemble.calibration import abstains
from ensemble.chunks import ChunkLimits, chunk_limits
from ensemble.datasets import QAExample
from ensemble.pipeline import QARequest
from ensemble.plan import DEFAULT_NUM_BEAMS, Decoding, Member, PlanDefaults, plan_defaults
from ensemble.prompts import get_prompt_style
from ensemble.vote import Vote, VoteConfig
from models.base.loading import LoadConfig

logger = logging.getLogger(__name__)

BASE_MEMBER = "base"  # the name clients use for the base model without an adapter


class ServiceNotReadyError(RuntimeError):
    """The model is still loading, or loading failed."""


class RequestLimitError(ValueError):
    """A request exceeds a configured limit; `field` names the offending field."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


class UnknownMemberError(KeyError):
    """A request names an adapter that is not served."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.message = f"adapters: unknown adapter {name!r}; served: {', '.join(known)}"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ResolvedPlan:
    """What a request runs, checked against the served adapters, the prompt registry and the limits."""

    members: tuple[Member, ...] | None  # None = every served adapter (the pipeline's default)
    prompts: tuple[str, ...] | None  # None = the server's default prompts
    decoding: Decoding
    vote: VoteConfig | None = None  # None = the pipeline's vote config (the request overrides nothing)


class QAService:
    """One model + adapters + pipeline per process; thread-safe to call from request handlers."""

    def __init__(
        self,
        settings: ServiceSettings,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_vote: Callable[[Vote], None] | None = None,
    ) -> None:
        self.settings = settings
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self._engine: Engine | None = None
        self._batcher: MicroBatcher | None = None
        self._on_batch = on_batch  # metrics hooks: each generation pass, each /answer vote
        self._on_vote = on_vote
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load now, or in a background thread when settings ask for it."""
        if self.settings.load_in_background:
            self._thread = threading.Thread(target=self._load_logged, name="qa-model-loader", daemon=True)
            self._thread.start()
        else:
            self.load()

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status == "ready"

    def _load_logged(self) -> None:
        try:
            self.load()
        except Exception:  # already recorded in self.error; the thread must not die silently
            logger.exception("model loading failed")

    def engine_config(self) -> EngineConfig:
        s = self.settings
        return EngineConfig(
            model=s.model,
            cache_dir=s.cache_dir,
            adapters_dir=s.resolved_adapters_dir(),
            device=s.device,
            quantization=s.quantization,
            dtype=s.dtype,
            max_input_tokens=s.max_input_tokens,
            default_prompts=self._plan.prompts,
            default_decoding=self._defaults(),
            lora_backend=s.lora_backend,
            compile=s.compile,
            decoder=s.decoder,
            decode_cache_mb=s.decode_cache_mb,
            lora_kernel=s.lora_kernel,
            attention_kernel=s.attention_kernel,
            warmup=s.warmup,
            max_resident_adapters=s.max_resident_adapters,
            pinned_adapters=tuple(s.pinned_adapters),
            default_members=self._plan.members,
        )

    def load(self) -> None:
        try:
            engine = build_engine(self.engine_config())
        except Exception as exc:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        self._batcher = MicroBatcher(
            engine.pipeline.answer_many,
            config=engine.pipeline.config,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_batch_wait_ms,
            on_batch=self._on_batch,
        )
        self._engine = engine
        self.status = "ready"

    def close(self) -> None:
        """Stop the micro-batcher after its current pass (queued questions fail; the server is stopping)."""
        if self._batcher is not None:
            self._batcher.close(timeout=self.settings.drain_timeout_s)

    @property
    def batcher(self) -> MicroBatcher | None:
        return self._batcher

    # -- queries -------------------------------------------------------------------------------------------
    def engine(self) -> Engine:
        """The loaded engine; `ServiceNotReadyError` while loading or after a failed load."""
        return self._require()

    def _require(self) -> Engine:
        if self._engine is None:
            detail = f" ({self.error})" if self.error else ""
            raise ServiceNotReadyError(f"model {self.settings.model!r} is {self.status}{detail}")
        return self._engine

    @property
    def device(self) -> str | None:
        return self._engine.generator.device if self._engine else None

    def adapter_names(self) -> list[str]:
        return self._engine.adapter_names if self._engine else []

    @functools.cached_property
    def _plan(self) -> PlanDefaults:
        """The plan of a request that names none: the settings, each unset one by the device the model
        runs on (`ensemble.plan.DEVICE_DEFAULTS`)."""
        s = self.settings
        return plan_defaults(LoadConfig(device=s.device).resolved_device()).overridden(
            prompts=s.default_prompts,
            strategy=s.default_strategy,
            num_beams=s.default_num_beams,
            members=s.default_members,
        )

    def faulty_adapters(self) -> dict[str, str]:
        """Adapters the generator took out of service at run time (their rows failed), with why."""
        return self._engine.generator.faulty_adapters if self._engine else {}

    def _defaults(self) -> Decoding:
        """The decoding of a request that names none."""
        plan = self._plan
        return Decoding(
            strategy=plan.strategy,
            num_beams=plan.num_beams,
            max_new_tokens=self.settings.default_max_new_tokens,
        )

    # -- answering -----------------------------------------------------------------------------------------
    def _members(self, names: list[str] | None) -> list[Member] | None:
        if names is None:
            return None
        engine = self._require()
        served = engine.adapter_names
        members = []
        for name in dict.fromkeys(names):
            if name == BASE_MEMBER:
                members.append(Member(adapter=None))
            elif name in served:
                members.extend(m for m in engine.all_members() if m.adapter == name)
            else:
                raise UnknownMemberError(name, [BASE_MEMBER, *served])
        return members

    def _decoding(self, req: DecodingRequest | None) -> Decoding:
        base = self._defaults()
        if req is None:
            return base
        s = self.settings
        strategy = req.strategy or base.strategy
        if req.num_beams is not None and req.num_beams > s.max_beams_limit:
            raise RequestLimitError("decoding.num_beams", f"at most {s.max_beams_limit}")
        if req.max_new_tokens is not None and req.max_new_tokens > s.max_new_tokens_limit:
            raise RequestLimitError("decoding.max_new_tokens", f"at most {s.max_new_tokens_limit}")
        if strategy == "beam":
            num_beams = req.num_beams or (
                base.num_beams if base.strategy == "beam" else s.default_num_beams or DEFAULT_NUM_BEAMS
            )
        else:
            num_beams = 1
        return Decoding(
            strategy=strategy,
            num_beams=num_beams,
            num_return_sequences=req.num_return_sequences,
            max_new_tokens=req.max_new_tokens or base.max_new_tokens,
            temperature=req.temperature if req.temperature is not None else base.temperature,
            top_k=req.top_k if req.top_k is not None else base.top_k,
            top_p=req.top_p if req.top_p is not None else base.top_p,
            seed=req.seed,
        )

    def _vote(self, req: VoteRequest | None) -> VoteConfig | None:  # type: ignore[valid-type]
        """The pipeline's vote config with the request's fields replaced (only those it sets); the dataclass
        checks them, raising `InvalidVoteConfigError` naming `vote.<field>`."""
        changes = req.overrides() if req is not None else {}
        if not changes:
            return None
        return dataclasses.replace(self._require().pipeline.config.vote, **changes)

    def min_confidence(self, requested: float | None) -> float | None:
        """Below what confidence an answer is withheld: the request's value, else `QA_MIN_CONFIDENCE`."""
        return requested if requested is not None else self.settings.min_confidence

    def resolve(
        self,
        adapters: list[str] | None,
        prompts: list[str] | None,
        decoding: DecodingRequest | None,
        vote: VoteRequest | None = None,  # type: ignore[valid-type]
    ) -> ResolvedPlan:
        """Members, prompts, decoding and vote of a request (/answer and /batch alike); raises the typed
        errors."""
        s = self.settings
        engine = self._require()
        vote_config = self._vote(vote)
        members = self._members(adapters)
        names = tuple(dict.fromkeys(prompts)) if prompts is not None else None
        for name in names or ():
            get_prompt_style(name)
        resolved = self._decoding(decoding)
        n_members = len(members) if members is not None else len(engine.members())
        capacity = engine.config.max_resident_adapters
        n_adapters = len({m.adapter for m in members or () if m.adapter is not None})
        if capacity is not None and n_adapters > capacity:
            raise RequestLimitError(
                "adapters", f"{n_adapters} adapters at once; this server keeps at most {capacity} resident"
            )
        n_prompts = len(names) if names is not None else len(self._plan.prompts)
        n_candidates = n_members * n_prompts * resolved.n_outputs
        if n_candidates > s.max_candidates_limit:
            raise RequestLimitError(
                "adapters",
                f"{n_members} adapters x {n_prompts} prompts x {resolved.n_outputs} outputs = "
                f"{n_candidates} candidates, more than the limit of {s.max_candidates_limit}",
            )
        return ResolvedPlan(tuple(members) if members is not None else None, names, resolved, vote_config)

    def check_lengths(self, context: str, question: str) -> int:
        """Characters first (cheap), then tokens with the served tokenizer; a 413 `RequestLimitError`.
        Returns the tokens of context and question together (what a batch's chunks are cut by)."""
        s = self.settings
        generator = self._require().generator
        total = 0
        for field, text, max_chars, max_tokens in (
            ("context", context, s.max_context_chars, s.max_context_tokens),
            ("question", question, s.max_question_chars, s.max_question_tokens),
        ):
            if len(text) > max_chars:
                raise RequestLimitError(field, f"longer than {max_chars} characters", status=413)
            if (n := generator.count_tokens(text)) > max_tokens:
                raise RequestLimitError(field, f"{n} tokens, more than the limit of {max_tokens}", status=413)
            total += n
        return total

    def check_answer(self, req: AnswerRequest) -> ResolvedPlan:
        """Every check of an answer request, before it waits for a slot; raises the typed errors."""
        self.check_lengths(req.context, req.question)
        return self.resolve(req.adapters, req.prompts, req.decoding, req.vote)

    def answer(self, req: AnswerRequest, plan: ResolvedPlan | None = None) -> AnswerResponse:
        """Answer one question (`plan` from `check_answer`, or checked now)."""
        self._require()
        assert self._batcher is not None  # set together with the engine
        plan = plan if plan is not None else self.check_answer(req)
        started = time.perf_counter()
        request = QARequest(req.context, req.question, plan.members, plan.prompts, plan.decoding, plan.vote)
        # Past the deadline the caller has its 504; withdrawing the question spares the pass it would join.
        vote = self._batcher.answer(request, timeout=self.settings.request_timeout_s)
        if self._on_vote is not None:
            self._on_vote(vote)
        return to_response(
            vote,
            explain=req.explain,
            elapsed_ms=1000 * (time.perf_counter() - started),
            min_confidence=self.min_confidence(req.min_confidence),
        )

    def chunk_limits(self) -> ChunkLimits:
        """How a batch run cuts its chunks: the settings, each unset one by the device the model runs on
        (`ensemble.chunks.CHUNK_LIMITS`)."""
        s = self.settings
        return chunk_limits(LoadConfig(device=s.device).resolved_device()).overridden(
            rows=s.batch_chunk_size, tokens=s.batch_chunk_tokens
        )

    def run_batch(
        self,
        examples: Sequence[QAExample],
        options: BatchOptions,
        *,
        lengths: Sequence[int] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        describe_error: Callable[[Exception], str] | None = None,
    ) -> BatchResult:
        """Many questions through `ensemble.batch.run_batch` (one result per row, in order); chunks are cut
        by `lengths` (None: tokens of context and question, counted now)."""
        generator = self._require().generator
        assert self._batcher is not None  # set together with the engine
        if lengths is None:
            lengths = [
                generator.count_tokens(ex.context) + generator.count_tokens(ex.question) for ex in examples
            ]
        # Chunks go through the micro-batcher, so a batch job and /answer requests share generation passes.
        return run_batch(
            self._batcher,
            examples,
            options,
            lengths=lengths,
            on_progress=on_progress,
            should_stop=should_stop,
            describe_error=describe_error,
        )


def to_candidates(vote: Vote) -> list[CandidateOut]:
    """Every candidate of a vote with its provenance (adapter, prompt, beam rank, score, cluster)."""
    return [
        CandidateOut(
            text=v.candidate.text,
            raw=v.candidate.raw,
            adapter=v.candidate.adapter or BASE_MEMBER,
            prompt=v.candidate.prompt,
            beam_rank=v.candidate.beam_rank,
            score=v.candidate.score,
            weight=v.effective_weight,
            grounded=v.candidate.grounded,
            cluster=v.cluster,
        )
        for v in vote.candidates
    ]


def to_clusters(vote: Vote) -> list[ClusterOut]:
    """Every cluster of a vote, winner first (the answer and its alternatives)."""
    return [ClusterOut(id=c.id, text=c.text, weight=c.weight, support=c.support) for c in vote.clusters]


def to_response(
    vote: Vote, *, explain: bool, elapsed_ms: float, min_confidence: float | None = None
) -> AnswerResponse:
    abstained = abstains(vote.confidence, min_confidence)
    return AnswerResponse(
        answer=None if abstained else vote.answer,
        abstained=abstained,
        confidence=vote.confidence,
        support=vote.support,
        clusters=to_clusters(vote),
        n_candidates=len(vote.candidates),
        candidates=to_candidates(vote) if explain else None,
        adapter_agreement=dict(vote.adapter_agreement) if explain else None,
        elapsed_ms=round(elapsed_ms, 2),
    )
