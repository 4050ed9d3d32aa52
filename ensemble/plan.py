"""What to generate for one question: ensemble members x prompt styles, under one decoding setting.

A plan is pure data. It names adapters but never loads them, and names prompt styles but does not render
them; the pipeline does both through the generator protocol. Validation happens here, at construction, so a
bad request fails before any model work starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ensemble.errors import EmptyPlanError, InvalidDecodingError, InvalidMemberError
from ensemble.prompts import DEFAULT_PROMPTS, get_prompt_style

Strategy = Literal["greedy", "beam", "sample"]
_STRATEGIES: tuple[str, ...] = ("greedy", "beam", "sample")

BASE_MEMBER_NAME = "base"
"""How the base model alone (``adapter=None``) is named in reports such as adapter agreement."""
DEFAULT_NUM_BEAMS = 3
"""Beams (and beam outputs) per prompt when beam search is asked for without a width."""


@dataclass(frozen=True)
class PlanDefaults:
    """What a question gets when neither the request nor the operator names prompts or decoding."""

    prompts: tuple[str, ...]
    strategy: Strategy
    num_beams: int
    members: int | None = None
    """At most this many served members (the best by held-out validation F1); None: all of them."""

    def overridden(
        self,
        *,
        prompts: tuple[str, ...] | None = None,
        strategy: Strategy | None = None,
        num_beams: int | None = None,
        members: int | None = None,
    ) -> PlanDefaults:
        """These defaults with what an operator or a flag set (None keeps the default): a strategy other
        than beam runs one beam; beam search asked for without a width gets DEFAULT_NUM_BEAMS."""
        strategy = strategy or self.strategy
        beams = num_beams or (self.num_beams if self.strategy == "beam" else DEFAULT_NUM_BEAMS)
        return PlanDefaults(
            prompts=tuple(prompts) if prompts else self.prompts,
            strategy=strategy,
            num_beams=beams if strategy == "beam" else 1,
            members=members or self.members,
        )


DEVICE_DEFAULTS: dict[str, PlanDefaults] = {
    # Every served member x 2 prompts x 3 beams (docs/benchmarks.md, session 7).
    "cuda": PlanDefaults(DEFAULT_PROMPTS, "beam", DEFAULT_NUM_BEAMS),
    # The best member by held-out F1, one prompt, greedy: on a 2-core CPU the CPU's cost is the prefill, so
    # each candidate costs a prompt's worth (1.5B: ~5 s for one, ~15 s for three); on held-out train
    # articles the member's greedy answer came within 0.4 F1 of the GPU's 18 voted candidates.
    "cpu": PlanDefaults(("zero-shot",), "greedy", 1, members=1),
}
"""The default plan by kind of device (`cuda`, else `cpu`): one table the service and `qa-eval` read."""


def plan_defaults(device: str) -> PlanDefaults:
    """The default plan for a device such as "cuda:0", "cuda" or "cpu" (any non-CUDA device is "cpu")."""
    return DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class Decoding:
    """How each prompt is decoded; every prompt of a plan yields ``n_outputs`` candidates."""

    strategy: Strategy = "beam"
    """greedy: one best-first output; beam: beam search; sample: independent random samples."""
    num_beams: int = DEFAULT_NUM_BEAMS
    """Beam width; only read for ``strategy="beam"`` (greedy and sampling run with one beam)."""
    num_return_sequences: int | None = None
    """Outputs per prompt; None means num_beams for beam search and 1 otherwise."""
    max_new_tokens: int = 32
    """Generation budget; answers are short spans, so a small budget also caps rambling."""
    temperature: float = 0.7
    """Sampling temperature (> 0); only read for ``strategy="sample"``."""
    top_k: int = 50
    """Top-k filter for sampling; 0 disables it."""
    top_p: float = 0.95
    """Nucleus filter for sampling, in (0, 1]."""
    seed: int | None = None
    """Seed for sampling, so a sampled ensemble can be replayed; ignored by deterministic strategies."""

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise InvalidDecodingError(
                "decoding.strategy", f"must be one of {', '.join(_STRATEGIES)}; got {self.strategy!r}"
            )
        _require_int("decoding.num_beams", self.num_beams, minimum=1)
        _require_int("decoding.max_new_tokens", self.max_new_tokens, minimum=1)
        _require_int("decoding.top_k", self.top_k, minimum=0)
        if self.num_return_sequences is not None:
            _require_int("decoding.num_return_sequences", self.num_return_sequences, minimum=1)
            if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
                raise InvalidDecodingError(
                    "decoding.num_return_sequences",
                    f"beam search returns at most num_beams={self.num_beams} sequences; "
                    f"got {self.num_return_sequences}",
                )
            if self.strategy == "greedy" and self.num_return_sequences != 1:
                raise InvalidDecodingError(
                    "decoding.num_return_sequences",
                    f"greedy decoding has exactly one output; got {self.num_return_sequences}",
                )
        if not (_is_number(self.temperature) and self.temperature > 0 and math.isfinite(self.temperature)):
            raise InvalidDecodingError(
                "decoding.temperature", f"must be a finite number > 0; got {self.temperature!r}"
            )
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidDecodingError("decoding.top_p", f"must be in (0, 1]; got {self.top_p!r}")
        if self.seed is not None:
            _require_int("decoding.seed", self.seed, minimum=0)

    @property
    def n_outputs(self) -> int:
        """Candidates produced per prompt."""
        if self.num_return_sequences is not None:
            return self.num_return_sequences
        return self.num_beams if self.strategy == "beam" else 1

    def generate_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments of ``CandidateGenerator.generate``.

        Settings a strategy ignores are replaced by neutral values (one beam, temperature 1, top_p 1, no
        seed), so two decodings with the same effect produce equal kwargs and share one generate call, and
        the generator never receives sampling knobs for a deterministic search.
        """
        sampling = self.strategy == "sample"
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams if self.strategy == "beam" else 1,
            "num_return_sequences": self.n_outputs,
            "do_sample": sampling,
            "temperature": self.temperature if sampling else 1.0,
            "top_k": self.top_k if sampling else 50,
            "top_p": self.top_p if sampling else 1.0,
            "seed": self.seed if sampling else None,
        }


@dataclass(frozen=True)
class Member:
    """One voter of the ensemble: an adapter (None = the base model alone) and its vote weight."""

    adapter: str | None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter.strip()):
            raise InvalidMemberError(
                "members.adapter", f"must be a non-empty name or None; got {self.adapter!r}"
            )
        if not (_is_number(self.weight) and math.isfinite(self.weight) and self.weight > 0):
            raise InvalidMemberError("members.weight", f"must be a finite number > 0; got {self.weight!r}")

    @property
    def name(self) -> str:
        """The adapter name, or ``BASE_MEMBER_NAME`` for the base model."""
        return self.adapter if self.adapter is not None else BASE_MEMBER_NAME


@dataclass(frozen=True)
class PlanItem:
    """One prompt to run: which member answers, in which prompt style."""

    member: Member
    prompt: str


@dataclass(frozen=True)
class Plan:
    """Every item of one request, all decoded the same way."""

    items: tuple[PlanItem, ...]
    decoding: Decoding

    @property
    def n_candidates(self) -> int:
        """How many candidate answers the plan yields in total."""
        return len(self.items) * self.decoding.n_outputs


def build_plan(members: Iterable[Member], prompts: Iterable[str], decoding: Decoding) -> Plan:
    """Every member x every prompt style, member-major, in the given order.

    Repeated adapters and prompt names are dropped, keeping the first (so a repeat cannot double a vote).
    Raises ``UnknownPromptError`` for an unregistered style and ``EmptyPlanError`` for no members or prompts.
    """
    first_by_adapter: dict[str | None, Member] = {}
    for member in members:
        first_by_adapter.setdefault(member.adapter, member)
    unique_members = list(first_by_adapter.values())
    unique_prompts = list(dict.fromkeys(prompts))
    if not unique_members:
        raise EmptyPlanError("members", "at least one ensemble member is needed")
    if not unique_prompts:
        raise EmptyPlanError("prompts", "at least one prompt style is needed")
    for prompt in unique_prompts:
        get_prompt_style(prompt)
    items = tuple(PlanItem(member, prompt) for member in unique_members for prompt in unique_prompts)
    return Plan(items=items, decoding=decoding)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_int(field: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; True as a beam count is a client bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidDecodingError(field, f"must be an integer >= {minimum}; got {value!r}")
