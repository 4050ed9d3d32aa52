"""Per-strategy answers re-voted from the candidates of one generation pass.

A scored batch answers every question once with the full plan (members x prompts x beams), plus a greedy
pass (one output per member x prompt) when the main pass is not greedy itself, and then asks, from those
candidates: what would each member alone have answered greedily, with its top beam, voting over its beams
and prompts; each prompt variant across members; and the full ensemble. Re-voting needs no generation, so
comparing every strategy costs the one pass through the data (two generate calls per chunk).

Strategy ids (stable, used as report rows and JSON keys):
``greedy:<member>:<prompt>``, ``top-beam:<member>:<prompt>``, ``member:<member>`` (its beams x prompts voted),
``prompt:<prompt>`` (all members' beams for that prompt voted), ``ensemble`` (every beam candidate voted
under the configured rule). Beside it, when the vote is a likelihood one or the candidates carry likelihoods,
the old rule and the new side by side: ``ensemble:count`` (``rule="count"``) and ``ensemble:likelihood``
(``rule="likelihood"``; the count rule where a question has no likelihoods), the rest of the config the
same. Every member and prompt strategy is voted under the configured rule; a likelihood re-vote of a subset
weighs only the rows of the members and prompts in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ensemble.vote import Candidate, VoteConfig, vote

ENSEMBLE = "ensemble"
ENSEMBLE_COUNT = "ensemble:count"
ENSEMBLE_LIKELIHOOD = "ensemble:likelihood"


def _voted(candidates: Sequence[Candidate], config: VoteConfig | None) -> str:
    return vote(candidates, config).answer if candidates else ""


def strategy_answers(
    beam: Sequence[Candidate],
    greedy: Sequence[Candidate] = (),
    config: VoteConfig | None = None,
    *,
    top_beam: bool = True,
    both_rules: bool | None = None,
) -> dict[str, str]:
    """Strategy id -> answer, in a stable order (members, then prompts, then the ensemble).

    ``beam`` are the candidates of the beam (or sampling) pass, ``greedy`` those of an optional greedy pass.
    ``top_beam=False`` leaves out the ``top-beam:*`` ids, for a main pass that was greedy itself (its "top
    beam" would only repeat ``greedy:*``). ``both_rules`` adds ``ensemble:count`` and
    ``ensemble:likelihood``; None: when ``config`` needs likelihoods or a beam candidate carries them (a
    caller re-voting many questions passes one value for all, so every row has the same ids).
    """
    members = list(dict.fromkeys(c.member for c in (*beam, *greedy)))
    prompts = list(dict.fromkeys(c.prompt for c in (*beam, *greedy)))
    answers: dict[str, str] = {}
    for member in members:
        own = [c for c in beam if c.member == member]
        for prompt in prompts:
            first_greedy = next(
                (c for c in greedy if c.member == member and c.prompt == prompt and c.beam_rank == 0),
                None,
            )
            if first_greedy is not None:
                answers[f"greedy:{member}:{prompt}"] = first_greedy.text
            top = next((c for c in own if c.prompt == prompt and c.beam_rank == 0), None)
            if top_beam and top is not None:
                answers[f"top-beam:{member}:{prompt}"] = top.text
        if own:
            answers[f"member:{member}"] = _voted(own, config)
    for prompt in prompts:
        same_prompt = [c for c in beam if c.prompt == prompt]
        if same_prompt:
            answers[f"prompt:{prompt}"] = _voted(same_prompt, config)
    if beam:
        answers[ENSEMBLE] = _voted(beam, config)
        config = config or VoteConfig()
        if both_rules is None:
            both_rules = config.needs_likelihoods or any(c.likelihoods for c in beam)
        if both_rules:
            answers[ENSEMBLE_COUNT] = _voted(beam, replace(config, rule="count"))
            answers[ENSEMBLE_LIKELIHOOD] = _voted(beam, replace(config, rule="likelihood"))
    return answers
