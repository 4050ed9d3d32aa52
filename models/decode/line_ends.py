"""Where an answer ends: answers are one line, so a row is done once its first non-empty line is closed.

`LineEnds` tells, per generated position, whether that token closes the answer's first non-empty line (built
once per tokenizer); `FirstLineDone` is the same as a transformers `StoppingCriteria` for `generate`, and the
decode loop (`models.decode.loop`, `models.decode.search`) asks `LineEnds` directly.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria


class FirstLineDone(StoppingCriteria):
    """Per row: True once the generated text holds a line break after some non-blank text."""

    def __init__(self, prompt_len: int, line_ends) -> None:
        self.prompt_len, self.line_ends = prompt_len, line_ends

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return self.line_ends(input_ids[:, self.prompt_len :]).any(dim=1)


class LineEnds:
    """Per generated position: does this token close the answer's first non-empty line?

    Built once per tokenizer (about 2 s for a 150k vocabulary): per vocabulary id, whether it holds a newline,
    whether it has non-blank text before its first newline, and whether it is non-blank.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, device: Any) -> None:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        pieces += [""] * (vocab_size - len(pieces))
        has_newline = ["\n" in p for p in pieces]
        text_first = [
            nl and bool(p.split("\n", 1)[0].strip()) for p, nl in zip(pieces, has_newline, strict=True)
        ]
        non_blank = [bool(p.strip()) for p in pieces]
        self.has_newline, self.text_before_newline, self.non_blank = (
            torch.tensor(t, device=device) for t in (has_newline, text_first, non_blank)
        )

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        device = generated.device
        tokens_seen = self.non_blank.to(device)[generated].int()
        seen_before = (tokens_seen.cumsum(dim=1) - tokens_seen) > 0
        return self.has_newline.to(device)[generated] & (
            seen_before | self.text_before_newline.to(device)[generated]
        )
