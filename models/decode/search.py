"""Greedy and beam search on the device over each step's log-probabilities: no model, no cache, no host sync.

`BeamSearch` is transformers 5.17's `_beam_search` (no sampling, `length_penalty=1.0`, `early_stopping=False`)
vectorised over B prompts x k beams: the same candidate count, scores (sum of log-probs / generated length),
finishing rule and early-stop heuristic, so its outputs equal `generate`'s. `Greedy` keeps one argmax per row
and scores it by its mean log-probability, as the generator scores `generate`'s greedy output. `Stops` ends a
hypothesis at EOS and, with `LineEnds`, at the end of the answer's first non-empty line, tracking per row
whether that line has had text yet (vocabulary-sized lookups, no re-scan of the generated tokens). Each
`choose` returns the next tokens (and, for beams, the cache row each continues) as device tensors and keeps a
device flag `halted`; running the model is `models.decode.loop`'s job. Both searches take `real`: the rows (or
prompts) past it only pad the batch to a bucketed shape; they never count towards `halted` and `result` leaves
them out, so whatever they hold (even NaN) cannot change the real rows' outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.decode.line_ends import LineEnds

NEG = -1.0e9
"""transformers' "impossible" score, added (not assigned) as in `_beam_search`, so float32 rounds the same."""
LENGTH_PENALTY = 1.0
"""Beam scores are sum of log-probs / generated length ** this (the generator's beams always use 1.0)."""


@dataclass(frozen=True)
class Decoded:
    """Per output sequence, prompt-major and best first within a prompt."""

    tokens: list[list[int]]
    """Generated ids up to and including the stop (EOS or the answer line's end), all of them without one."""
    scores: list[float]
    """Beams: the length-normalised beam score; greedy: the mean log-probability of `tokens`."""


class Stops:
    """Vocabulary-sized lookups: does this token end a hypothesis, given whether its line had text yet?"""

    def __init__(self, eos_ids: torch.Tensor, vocab: int, line_ends: LineEnds | None, device: Any) -> None:
        self.eos = eos_ids.to(device)
        self.is_eos = torch.zeros(vocab, dtype=torch.bool, device=device).index_fill_(0, self.eos, True)
        self.lines = line_ends

    def __call__(self, token: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stops, seen after the token): `seen` says the answer line already holds non-blank text."""
        hits = self.is_eos[token]
        if self.lines is None:
            return hits, seen
        line_end = self.lines.has_newline[token] & (seen | self.lines.text_before_newline[token])
        return hits | line_end, seen | self.lines.non_blank[token]

    def forbid_eos(self, log_probs: torch.Tensor) -> torch.Tensor:
        """What transformers' `min_new_tokens` does to scores: EOS impossible."""
        return log_probs.index_fill(-1, self.eos, float("-inf"))


class Greedy:
    """One output per row: the argmax, kept up to the row's first stop; rows from `real` on are padding."""

    def __init__(self, rows: int, max_new: int, stops: Stops, device: Any, real: int | None = None) -> None:
        self.stops, self.real = stops, rows if real is None else real
        self.tokens = torch.zeros(rows, max_new, dtype=torch.long, device=device)
        self.total = torch.zeros(rows, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.live = torch.arange(rows, device=device) < self.real  # padding rows are never live
        self.seen = torch.zeros(rows, dtype=torch.bool, device=device)
        self.halted = torch.zeros((), dtype=torch.bool, device=device)

    def choose(self, t: int, log_probs: torch.Tensor, no_eos: bool) -> tuple[torch.Tensor, None]:
        token = (self.stops.forbid_eos(log_probs) if no_eos else log_probs).argmax(dim=-1)
        self.tokens[:, t] = token
        picked = log_probs.gather(1, token[:, None]).squeeze(1)
        self.total += torch.where(self.live, picked, torch.zeros_like(picked))
        self.lengths += self.live
        hits, self.seen = self.stops(token, self.seen)
        self.live &= ~hits
        self.halted = ~self.live.any()
        return token, None

    def result(self, n: int) -> Decoded:
        real = slice(0, self.real)
        return _decoded(self.tokens[real], self.lengths[real], (self.total / self.lengths.clamp(min=1))[real])


class BeamSearch:
    """transformers 5.17 `_beam_search` (no sampling, length_penalty 1, early_stopping False) for B prompts x
    k beams: per step one topk over k x vocab keeps `keep` candidates, the best k not stopped run on, the
    stopped among the first k compete for the prompt's k finished slots. Prompts from `real` on are padding:
    closed from the start, so they never finish a hypothesis nor keep the search running."""

    def __init__(
        self,
        prompts: int,
        beams: int,
        keep: int,
        max_new: int,
        stops: Stops,
        device: Any,
        real: int | None = None,
    ) -> None:
        b, k, t = prompts, beams, max_new
        self.k, self.keep, self.max_new, self.stops = k, keep, max_new, stops
        self.real = b if real is None else real
        self.running_scores = torch.zeros(b, k, device=device)
        self.running_scores[:, 1:] = NEG  # the first step expands beam 0 only (all beams are the same prompt)
        self.running_tokens = torch.zeros(b, k, t, dtype=torch.long, device=device)
        self.running_seen = torch.zeros(b, k, dtype=torch.bool, device=device)
        self.scores = torch.full((b, k), NEG, device=device)
        self.tokens = torch.zeros(b, k, t, dtype=torch.long, device=device)
        self.lengths = torch.zeros(b, k, dtype=torch.long, device=device)
        self.finished = torch.zeros(b, k, dtype=torch.bool, device=device)
        self.open = (torch.arange(b, device=device) < self.real)[:, None]  # can the prompt still improve?
        self.halted = torch.zeros((), dtype=torch.bool, device=device)  # where transformers' loop ends
        self.top = torch.arange(keep, device=device) < k
        self.offsets = torch.arange(b, device=device)[:, None] * k

    def choose(self, t: int, log_probs: torch.Tensor, no_eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's next token and the row (beam) whose cache it continues."""
        b, k = self.scores.shape
        vocab = log_probs.shape[-1]
        if no_eos:
            log_probs = self.stops.forbid_eos(log_probs)
        grown = (log_probs.view(b, k, vocab) + self.running_scores[:, :, None]).view(b, k * vocab)
        top_scores, top_ids = grown.topk(self.keep)
        source, token = top_ids // vocab, top_ids % vocab
        seqs = _gather(self.running_tokens, source)
        seqs[:, :, t] = token
        hits, seen = self.stops(token, _gather(self.running_seen, source))
        if t == self.max_new - 1:
            hits = torch.ones_like(hits)  # max length: every candidate stops
        running = top_scores + hits.to(torch.float32) * NEG
        pick = running.topk(k).indices
        self.running_tokens, self.running_scores = _gather(seqs, pick), _gather(running, pick)
        self.running_seen = _gather(seen, pick)
        self._finish(t, seqs, top_scores, hits)
        return _gather(token, pick).view(-1), (_gather(source, pick) + self.offsets).view(-1)

    def _finish(self, t: int, seqs: torch.Tensor, top_scores: torch.Tensor, hits: torch.Tensor) -> None:
        just = hits & self.top
        candidates = top_scores / float((t + 1) ** LENGTH_PENALTY)
        candidates = candidates + (~self.open).to(torch.float32) * NEG
        candidates = candidates + (~just) * NEG
        olds = (self.scores, self.tokens, self.lengths, self.finished)
        news = (candidates, seqs, torch.full_like(just, t + 1, dtype=torch.long), just)
        pick = torch.cat((self.scores, candidates), dim=1).topk(self.k).indices
        frozen = self.halted  # transformers' loop ended: later steps (read a step late) change nothing
        self.scores, self.tokens, self.lengths, self.finished = (
            torch.where(frozen, old, _gather(torch.cat((old, new), dim=1), pick))
            for old, new in zip(olds, news, strict=True)
        )
        best = self.running_scores[:, :1] / float((t + 1) ** LENGTH_PENALTY)
        worst = torch.where(self.finished, self.scores.min(dim=1, keepdim=True).values, NEG)
        self.open = self.open & (best > worst).any(dim=-1, keepdim=True)
        self.halted = self.halted | ~self.open.any() | hits[: self.real].all()

    def result(self, n: int) -> Decoded:
        real = slice(0, self.real)
        return _decoded(
            self.tokens[real, :n].flatten(0, 1),
            self.lengths[real, :n].flatten(),
            self.scores[real, :n].flatten(),
        )


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tensor[b, index[b, j], ...]` (transformers' `_gather_beams`)."""
    return tensor.take_along_dim(index.view(*index.shape, *[1] * (tensor.dim() - index.dim())), dim=1)


def _decoded(tokens: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor) -> Decoded:
    rows, kept = tokens.tolist(), lengths.tolist()
    return Decoded([r[:n] for r, n in zip(rows, kept, strict=True)], [float(x) for x in scores.tolist()])
