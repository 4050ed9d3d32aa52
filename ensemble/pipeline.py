"""Plan -> generate -> clean and ground -> vote, for one request or a batch of them.

The pipeline talks to the model only through ``CandidateGenerator``, a Protocol of built-in types that
``models.decode.generator.Generator`` implements; it never imports the model code, loads adapters or applies
chat templates. All plan items of all requests that share a decoding go to the generator as ONE mixed-adapter
batch, so a request batch normally costs one ``generate`` call however many members and prompts it has.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from ensemble.clean import DEFAULT_MIN_SCORE, Grounding, clean_answer, ground
from ensemble.errors import GeneratorContractError
from ensemble.plan import Decoding, Member, Plan, PlanItem, build_plan
from ensemble.prompts import DEFAULT_PROMPTS, render_prompt, render_target
from ensemble.vote import Candidate, Likelihood, Vote, VoteConfig, vote


@runtime_checkable
class CandidateGenerator(Protocol):
    """What the pipeline needs from a model; see docs/architecture.md."""

    @property
    def has_chat_template(self) -> bool: ...

    def generate(
        self,
        prompts: Sequence[str | list[dict[str, str]]],
        adapters: Sequence[str | None],
        *,
        max_new_tokens: int,
        num_beams: int,
        num_return_sequences: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int | None,
    ) -> list[list[tuple[str, float]]]:
        """Per prompt, num_return_sequences (decoded text, score) best first; score is a log-probability
        (beam: the beam's length-normalised sequence score; greedy/sampling: mean token log-probability).
        A prompt whose adapter failed at run time (and was taken out of service) has none.
        The whole list runs as ONE mixed-adapter batch (peft adapter_names), left-padded."""
        ...


@runtime_checkable
class CandidateScorer(Protocol):
    """What a likelihood vote (``VoteConfig.needs_likelihoods``) needs besides generation."""

    def score(
        self,
        prompts: Sequence[str | list[dict[str, str]]],
        adapters: Sequence[str | None],
        continuations: Sequence[Sequence[str]],
    ) -> list[list[tuple[float, int]]]:
        """Per prompt row, per continuation text: (sum of log-probabilities, tokens scored) of the text
        followed by the end-of-answer token, teacher-forced after the row's prompt under its adapter (None:
        the base). Every row is one prompt's single prefill with all its continuations behind it; rows run
        as few mixed-adapter batches. An empty continuation scores the end-of-answer token alone."""
        ...


@dataclass(frozen=True)
class QARequest:
    """One question; None fields fall back to the pipeline's defaults (an empty tuple does not)."""

    context: str
    question: str
    members: tuple[Member, ...] | None = None
    prompts: tuple[str, ...] | None = None
    decoding: Decoding | None = None
    vote: VoteConfig | None = None
    """How this request's candidates are voted; None: the pipeline's ``config.vote``."""


@dataclass(frozen=True)
class PipelineConfig:
    """Defaults for requests that leave something out, and the clean-up/vote settings."""

    default_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Prompt styles used when a request names none."""
    default_decoding: Decoding = field(default_factory=Decoding)
    """Decoding used when a request gives none (beam search, 3 beams, 3 outputs per prompt)."""
    vote: VoteConfig = field(default_factory=VoteConfig)
    """Voting weights and thresholds."""
    ground_min_score: float = DEFAULT_MIN_SCORE
    """Similarity a cleaned answer needs with a context span to be replaced by it and count as grounded."""


@dataclass(frozen=True)
class PipelineStats:
    """Counters since the pipeline was built (a snapshot; the pipeline keeps the live ones)."""

    requests: int = 0
    generate_calls: int = 0
    prompts: int = 0
    """Rows sent to the generator, summed over calls."""
    candidates: int = 0
    score_calls: int = 0
    """`score` calls made for likelihood votes (one per request batch that needed any)."""


@dataclass(frozen=True)
class _Job:
    """One plan item of one request, rendered and waiting for its outputs."""

    request: int
    item: PlanItem
    prompt: str | list[dict[str, str]]


def _default_members() -> Sequence[Member]:
    return (Member(adapter=None),)


class EnsemblePipeline:
    """Answers questions with an ensemble of (adapter, prompt) members through one generator."""

    def __init__(
        self,
        generator: CandidateGenerator,
        config: PipelineConfig | None = None,
        default_members: Callable[[], Sequence[Member]] = _default_members,
    ) -> None:
        # default_members is a callable, not a list: the loaded adapters can change while the service runs.
        self._generator = generator
        self.config = config or PipelineConfig()
        self._default_members = default_members
        self._stats = PipelineStats()
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> PipelineStats:
        """Counters so far; ``generate_calls`` shows how many batches the generator ran."""
        with self._stats_lock:
            return self._stats

    def plan(self, request: QARequest) -> Plan:
        """The plan a request runs, with defaults filled in; raises the plan's typed errors."""
        members = request.members if request.members is not None else tuple(self._default_members())
        prompts = request.prompts if request.prompts is not None else self.config.default_prompts
        decoding = request.decoding if request.decoding is not None else self.config.default_decoding
        return build_plan(members, prompts, decoding)

    def answer(
        self,
        context: str,
        question: str,
        *,
        members: Sequence[Member] | None = None,
        prompts: Sequence[str] | None = None,
        decoding: Decoding | None = None,
    ) -> Vote:
        """Answer one question (a batch of one)."""
        request = QARequest(
            context=context,
            question=question,
            members=tuple(members) if members is not None else None,
            prompts=tuple(prompts) if prompts is not None else None,
            decoding=decoding,
        )
        return self.answer_many([request])[0]

    def answer_many(self, requests: Sequence[QARequest]) -> list[Vote]:
        """Answer several questions with one generate call per distinct decoding, votes in request order.

        Every request is planned before anything is generated, so one bad request fails the batch early.
        """
        if not requests:
            return []
        plans = [self.plan(request) for request in requests]
        chat = self._generator.has_chat_template
        batches: dict[tuple[tuple[str, Any], ...], list[_Job]] = {}
        kwargs_of: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
        for index, (request, plan) in enumerate(zip(requests, plans, strict=True)):
            kwargs = plan.decoding.generate_kwargs()
            # Keyed by the effective kwargs, so decodings that only differ in ignored knobs share a call.
            key = tuple(sorted(kwargs.items()))
            kwargs_of.setdefault(key, kwargs)
            jobs = batches.setdefault(key, [])
            for item in plan.items:
                prompt = render_prompt(item.prompt, request.context, request.question, chat=chat)
                jobs.append(_Job(request=index, item=item, prompt=prompt))

        candidates: list[list[Candidate]] = [[] for _ in requests]
        groundings: list[dict[str, Grounding | None]] = [{} for _ in requests]
        for key, jobs in batches.items():
            outputs = self._run(jobs, kwargs_of[key])
            for job, outputs_of_job in zip(jobs, outputs, strict=True):
                request = requests[job.request]
                cache = groundings[job.request]
                for rank, (raw, score) in enumerate(outputs_of_job):
                    candidates[job.request].append(
                        self._candidate(raw, score, rank, job.item, request.context, cache)
                    )

        configs = [request.vote or self.config.vote for request in requests]
        scored = [i for i, config in enumerate(configs) if config.needs_likelihoods]
        if scored:
            jobs_of: dict[int, list[_Job]] = {}
            for job in (job for jobs in batches.values() for job in jobs):
                jobs_of.setdefault(job.request, []).append(job)
            self._score([(jobs_of[i], candidates[i]) for i in scored], chat)
        votes = [vote(found, config) for found, config in zip(candidates, configs, strict=True)]
        self._count(requests=len(requests), candidates=sum(len(c) for c in candidates))
        return votes

    def _run(self, jobs: list[_Job], kwargs: dict[str, Any]) -> list[list[tuple[str, float]]]:
        prompts = [job.prompt for job in jobs]
        adapters = [job.item.member.adapter for job in jobs]
        outputs = self._generator.generate(prompts, adapters, **kwargs)
        self._count(generate_calls=1, prompts=len(prompts))
        if len(outputs) != len(prompts):
            raise GeneratorContractError(
                "generate", f"returned outputs for {len(outputs)} prompts; {len(prompts)} were sent"
            )
        for per_prompt in outputs:
            if len(per_prompt) > kwargs["num_return_sequences"]:
                raise GeneratorContractError(
                    "generate",
                    f"returned {len(per_prompt)} outputs for a prompt; expected 0 to "
                    f"{kwargs['num_return_sequences']}",
                )
        return outputs

    def _score(self, asked: list[tuple[list[_Job], list[Candidate]]], chat: bool) -> None:
        """Attach to every candidate its text's likelihood under every (member, prompt) row of its request's
        plan: one `score` call for all the requests (their rows as one mixed-adapter batch), each row's prompt
        once with all the request's distinct texts behind it. A request with one distinct text needs none."""
        scorer = self._generator
        if not isinstance(scorer, CandidateScorer):
            raise GeneratorContractError(
                "score", "the vote's rule needs likelihoods; this generator has none"
            )
        rows: list[tuple[int, _Job]] = []
        texts_of: dict[int, list[str]] = {}
        for index, (jobs, found) in enumerate(asked):
            texts = list(dict.fromkeys(c.text for c in found))
            if len(texts) > 1:
                texts_of[index] = texts
                rows += [(index, job) for job in jobs]
        if not rows:
            return
        continuations = [[render_target(t, chat=chat) for t in texts_of[index]] for index, _ in rows]
        outputs = scorer.score(
            [job.prompt for _, job in rows], [job.item.member.adapter for _, job in rows], continuations
        )
        self._count(score_calls=1)
        if len(outputs) != len(rows) or any(
            len(out) != len(conts) for out, conts in zip(outputs, continuations, strict=True)
        ):
            raise GeneratorContractError("score", "returned a different number of scores than was asked")
        evidence: dict[int, dict[str, list[Likelihood]]] = {}
        for (index, job), out in zip(rows, outputs, strict=True):
            table = evidence.setdefault(index, {})
            for text, (logprob, tokens) in zip(texts_of[index], out, strict=True):
                table.setdefault(text, []).append(
                    Likelihood(job.item.member.name, job.item.prompt, float(logprob), int(tokens))
                )
        for index, table in evidence.items():
            found = asked[index][1]
            found[:] = [replace(c, likelihoods=tuple(table[c.text])) for c in found]

    def _candidate(
        self,
        raw: str,
        score: float | None,
        rank: int,
        item: PlanItem,
        context: str,
        cache: dict[str, Grounding | None],
    ) -> Candidate:
        text = clean_answer(raw)
        if text not in cache:
            # Beams and members repeat answers; grounding each distinct text once keeps long contexts cheap.
            cache[text] = ground(text, context, min_score=self.config.ground_min_score)
        grounding = cache[text]
        return Candidate(
            text=grounding.text if grounding is not None else text,
            raw=raw,
            adapter=item.member.adapter,
            prompt=item.prompt,
            beam_rank=rank,
            score=score,
            weight=item.member.weight,
            grounded=grounding is not None,
        )

    def _count(
        self,
        *,
        requests: int = 0,
        generate_calls: int = 0,
        prompts: int = 0,
        candidates: int = 0,
        score_calls: int = 0,
    ) -> None:
        with self._stats_lock:
            old = self._stats
            self._stats = PipelineStats(
                requests=old.requests + requests,
                generate_calls=old.generate_calls + generate_calls,
                prompts=old.prompts + prompts,
                candidates=old.candidates + candidates,
                score_calls=old.score_calls + score_calls,
            )
