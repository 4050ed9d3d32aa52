"""Pydantic request/response models of the HTTP API (the OpenAPI schema is generated from these).

Shape only: limits that depend on settings (max beams, lengths) are checked in `app.service`, so that the
schema stays static and the error names the field either way. The `vote` field's model, derived from
`ensemble.vote.VoteConfig`, is `app.vote_request`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.vote_request import VoteRequest


class DecodingRequest(BaseModel):
    """Per-request decoding options; anything left out takes the server default."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["greedy", "beam", "sample"] | None = Field(None, description="greedy, beam or sample.")
    num_beams: int | None = Field(None, ge=1, description="Beams per prompt (beam strategy).")
    num_return_sequences: int | None = Field(
        None, ge=1, description="Outputs kept per prompt (defaults: all beams, or 1)."
    )
    max_new_tokens: int | None = Field(None, ge=1, description="Answer length budget in tokens.")
    # Static bounds where a value past them breaks the arithmetic (a temperature near 0 overflows the
    # logits, a seed past 32 bits overflows torch); the limits operators tune are settings (app.service).
    temperature: float | None = Field(
        None, ge=0.01, le=100.0, allow_inf_nan=False, description="Sampling temperature."
    )
    top_k: int | None = Field(None, ge=0, le=100_000, description="Top-k sampling (0 = off).")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for sampling.")

    @field_validator(
        "num_beams",
        "num_return_sequences",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        mode="before",
    )
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # pydantic's lax mode reads true as 1: a JSON boolean is not a number here (a numeric string is).
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


def _probability(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


_MIN_CONFIDENCE_DOC = (
    "Abstain below this confidence (0..1): the answer is null and `abstained` true; the clusters still "
    "show the alternatives. Default: the server's QA_MIN_CONFIDENCE (unset: never abstain)."
)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. a JSON "\ud800" escape
        raise ValueError(f"not valid Unicode text (a lone surrogate at {exc.start})") from None
    return value


def _non_empty_names(value: list[str] | None) -> list[str] | None:
    if value is not None:
        if not value:
            raise ValueError("must name at least one entry (or be omitted for the default)")
        if any(not name.strip() for name in value):
            raise ValueError("names must not be empty")
    return value


class AnswerRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "context": "서울시는 한강공원 12곳에 자전거 대여소 120개를 새로 설치한다고 밝혔다.",
                    "question": "서울시가 새로 설치하는 대여소는 몇 개인가?",
                }
            ]
        },
    )

    context: str = Field(..., min_length=1, description="The article the answer is taken from.")
    question: str = Field(..., min_length=1, description="The question to answer.")
    adapters: list[str] | None = Field(
        None, description="Ensemble members by adapter name ('base' = the base model); default: all served."
    )
    prompts: list[str] | None = Field(None, description="Prompt variants by name; default: the server's.")
    decoding: DecodingRequest | None = None
    vote: VoteRequest | None = Field(  # type: ignore[valid-type]
        None, description="Overrides of the server's vote settings for this request (only the fields given)."
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description=_MIN_CONFIDENCE_DOC
    )
    explain: bool = Field(False, description="Return every candidate with its provenance.")

    _check_context = field_validator("context")(_not_blank)
    _check_question = field_validator("question")(_not_blank)
    _check_names = field_validator("adapters", "prompts")(_non_empty_names)
    _check_min_confidence = field_validator("min_confidence", mode="before")(_probability)


class CandidateOut(BaseModel):
    text: str = Field(description="The cleaned (and grounded) candidate.")
    raw: str = Field(description="What the model generated.")
    adapter: str = Field(description="Adapter name, or 'base'.")
    prompt: str = Field(description="Prompt variant.")
    beam_rank: int = Field(description="0 = the best output of its beam search.")
    score: float | None = Field(description="Log-probability score from generation.")
    weight: float = Field(description="Voting weight.")
    grounded: bool = Field(description="The text is an exact span of the context.")
    cluster: int | None = Field(
        description="Cluster of similar answers it voted in (0 = the winner; null = empty)."
    )


class ClusterOut(BaseModel):
    id: int = Field(description="0 = the winning cluster, then by falling weight (a candidate's `cluster`).")
    text: str = Field(description="The cluster's answer (its weighted medoid).")
    weight: float = Field(description="Voting weight of its candidates.")
    support: int = Field(description="Candidates in it.")


class AnswerResponse(BaseModel):
    answer: str | None = Field(
        description="The ensemble's answer; null when it abstained (confidence below min_confidence)."
    )
    abstained: bool = Field(
        False, description="The confidence was below min_confidence, so no answer is given; see clusters."
    )
    confidence: float = Field(description="The vote's confidence in the answer (0..1), abstained or not.")
    support: int = Field(description="Candidates that agree with the (withheld) answer.")
    clusters: list[ClusterOut] = Field(
        [], description="Every group of agreeing candidates, the winner first: the runner-up answers."
    )
    n_candidates: int
    candidates: list[CandidateOut] | None = Field(None, description="With explain=true.")
    adapter_agreement: dict[str, float] | None = Field(
        None,
        description="With explain=true: per adapter, the share of its weight that agrees with the answer.",
    )
    elapsed_ms: float


class BatchOptionsRequest(BaseModel):
    """How to answer every row of a batch (JSON body fields, or multipart form fields beside the file)."""

    model_config = ConfigDict(extra="forbid")

    adapters: list[str] | None = Field(None, description="Ensemble members, as for /answer.")
    prompts: list[str] | None = Field(None, description="Prompt variants, as for /answer.")
    decoding: DecodingRequest | None = None
    strategies: bool | None = Field(
        None,
        description="Also answer per strategy (each member greedy and with beams, each prompt variant, the "
        "ensemble) from the same generation pass; default: true when every row has a gold answer.",
    )
    explain: bool = Field(False, description="Return every candidate of every row with its provenance.")
    metric: Literal["korquad", "squad"] = Field("korquad", description="EM/F1 definition used on gold rows.")
    vote: VoteRequest | None = Field(  # type: ignore[valid-type]
        None, description="Overrides of the server's vote settings for every row, as for /answer."
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description='Rows below this confidence abstain (answer null, abstained true, "" in the CSV), as '
        "for /answer. Default: the server's QA_MIN_CONFIDENCE (unset: never abstain).",
    )

    _check_names = field_validator("adapters", "prompts")(_non_empty_names)
    _check_min_confidence = field_validator("min_confidence", mode="before")(_probability)


class BatchRequest(BatchOptionsRequest):
    rows: list[dict[str, Any]] = Field(
        ...,
        description="Questions {id, context, question, answer? | answers?, title?}, as in a JSON Lines file.",
    )


class BatchFormRequest(BatchOptionsRequest):
    """The multipart form fields other than `file` (adapters/prompts comma-separated, decoding and vote as
    JSON)."""

    format: Literal["auto", "squad", "csv", "jsonl"] = Field(
        "auto", description="File layout; auto goes by the file name's extension, then by the content."
    )


class BatchRowOut(BaseModel):
    id: str
    answer: str | None = Field(
        description="The ensemble's answer; empty for a failed row, null when abstained."
    )
    abstained: bool = Field(False, description="The row's confidence was below min_confidence: no answer.")
    confidence: float
    support: int
    clusters: list[ClusterOut] | None = Field(
        None,
        description="When abstained or with explain=true: every cluster, winner first (the alternatives).",
    )
    error: str | None = Field(None, description="Why this row has no answer; null when it has one.")
    strategies: dict[str, str] | None = Field(None, description="Strategy id -> answer, when requested.")
    candidates: list[CandidateOut] | None = Field(None, description="With explain=true.")


class ScoresOut(BaseModel):
    exact_match: float = Field(description="Percent of rows matching a gold answer after normalisation.")
    f1: float = Field(description="Mean best F1 over the gold answers, percent.")
    count: int = Field(description="Rows scored.")
    missing: int = Field(description="Rows without an answer (failed), each scored 0.")


class BatchResponse(BaseModel):
    rows: list[BatchRowOut] = Field(description="One per input row, in input order, with its id.")
    scores: dict[str, ScoresOut] | None = Field(
        None, description="Strategy id ('ensemble' always) -> EM/F1, when every row has a gold answer."
    )
    failed_rows: int
    seconds: dict[str, float] = Field(description="Wall time of the main pass, the greedy pass and in all.")
    passes: dict[str, str] | None = Field(
        None,
        description="With strategies: which generation pass each kind of strategy came from: 'greedy:*' "
        "from 'greedy' (decoded on the main pass's prefill where the decoder keeps it) or, for a greedy main "
        "pass, 'main'; '*' (every other strategy) from 'main'.",
    )


JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class BatchJobResponse(BaseModel):
    job_id: str
    status: JobState
    total: int = Field(description="Rows in the job.")
    status_url: str
    result_url: str


class RowFailureOut(BaseModel):
    row: int = Field(description="1-based position of the row in the input.")
    id: str
    error: str = Field(description="Why the row has no answer.")


class JobStatusResponse(BaseModel):
    job_id: str
    status: JobState
    total: int
    done: int = Field(description="Rows answered so far.")
    failed_rows: int = Field(description="Rows that failed (known once the job is done).")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = Field(
        None,
        description="Why the job failed, was cancelled, or was interrupted (the server stopped under it: "
        "submit it again).",
    )
    failures: list[RowFailureOut] | None = Field(
        None, description="Once done: the rows that failed and why (the first 100); their answers are empty."
    )


class AdapterOut(BaseModel):
    name: str
    prompt_style: str
    weight: float
    base_model: str
    training: dict[str, object]


class AdaptersResponse(BaseModel):
    base_model: str
    adapters: list[AdapterOut]


class AdapterChangeResponse(BaseModel):
    name: str
    status: Literal["loaded", "already_loaded", "unloaded"]
    adapters: list[str] = Field(description="The adapters served after the change.")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "failed"]
    model: str
    device: str | None = None
    adapters: list[str] = []
    faulty_adapters: dict[str, str] = Field(
        {},
        description="Adapters taken out of service because their rows failed at run time (the others still "
        "answer), with why; load one again to retry it.",
    )
    detail: str | None = None


class ErrorResponse(BaseModel):
    error: str = Field(description="Human-readable message.")
    error_type: str = Field(description="Stable machine-readable kind, e.g. validation_error.")
    detail: list[dict[str, object]] | dict[str, object] | str | None = Field(
        None, description="Per-field problems or extra facts."
    )
