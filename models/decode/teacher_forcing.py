"""Teacher-forced log-probabilities of given continuations (candidate answers) after prompts, packed.

A likelihood vote asks how probable each distinct candidate answer is under every (member, prompt) row of a
plan: for R rows and K candidates that is R x K short continuations behind R long prompts (~650 tokens of
context against ~5 of answer). Scoring each (prompt, candidate) pair as its own sequence would prefill every
prompt K times; `packed_logprobs` instead puts a row's prompt ONCE in the sequence and all its continuations
behind it, each one attending to the prompt and to its own earlier tokens only (a block-diagonal tail under a
custom 4-D mask; positions restart after the prompt for every continuation), so one forward of
prompt + sum of continuation lengths scores them all, rows batched (left-padded prompts, right-padded tails).
Only the tail's logits are computed (`logits_to_keep`). The same trick is vLLM's and SpecInfer's tree
attention for speculative decoding; transformers takes a 4-D mask as it is (`masking_utils`), so the model's
own forward (4-bit layers, stacked LoRA, peft's mixed batch) runs unchanged.

`end_of_answer_id` is the token a trained member ends its answer with (after the chat template's
assistant turn: `<|im_end|>` for ChatML; EOS for plain prompts): the continuation's end is part of its
evidence, since it is what tells "김대중" from "김대중 대통령". Training builds its targets with the same id.

This module knows no adapters, prompts or voting: `models.decode.generator.Generator.score` tokenizes, chooses
rows' adapters and batches; `ensemble` combines the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_SENTINEL = "\u2063ANSWER\u2063"


def end_of_answer_id(tokenizer: Any) -> int | None:
    """The token after an assistant turn in the chat template (rendered around a sentinel), else EOS."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token_id
    messages = [{"role": "user", "content": "q"}]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": _SENTINEL}], tokenize=False
    )
    after = full.split(_SENTINEL, 1)[1] if full.startswith(prefix) and _SENTINEL in full else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    # A special added token such as <|im_end|>; transformers 5 lists only the named ones (eos, pad, ...) in
    # all_special_ids, and the Qwen GGUF tokenizer's EOS is <|endoftext|>, not the turn's end.
    added = tokenizer.added_tokens_decoder.get(ids[0]) if ids else None
    if ids and ((added is not None and added.special) or ids[0] in tokenizer.all_special_ids):
        return int(ids[0])
    return tokenizer.eos_token_id


@dataclass(frozen=True)
class Tails:
    """Rows of continuations packed side by side, right-padded to one width: what follows each row's prompt.

    Continuation k of a row sits in its own columns and sees the prompt and its own earlier tokens only
    (`allowed`, the tail's block of the 4-D mask); `offsets` restart at 0 for every continuation (positions
    are the prompt's length plus them). A padding column sees only itself."""

    ids: torch.Tensor
    """[rows, width] token ids (padding: `pad_id`)."""
    offsets: torch.Tensor
    """[rows, width] each token's index inside its continuation."""
    allowed: torch.Tensor
    """[rows, width, width] bool: may tail column q attend to tail column k?"""
    query: list[tuple[int, int]]
    """Per scored token (flat, over the batch): its row and the tail column whose logits predict it; -1 is
    the prompt's last position (every continuation's first token)."""
    target: list[int]
    owner: list[tuple[int, int]]
    """Per scored token: (row, continuation)."""
    counts: list[int]
    """Continuations per row."""

    @property
    def width(self) -> int:
        return self.ids.shape[1]


def pack_tails(continuations: Sequence[Sequence[Sequence[int]]], *, pad_id: int) -> Tails:
    """Lay every row's continuations out behind one another (see `Tails`).

    Built from flat Python lists with one tensor per array and the mask in one broadcast comparison (a
    column may see an earlier-or-same column of its own continuation): a likelihood vote packs this on
    the host for every request, so a copy per continuation would be its cost."""
    if any(not c for conts in continuations for c in conts):
        raise ValueError("every continuation needs at least one token (the caller appends the end token)")
    rows = len(continuations)
    width = max([1, *(sum(len(c) for c in conts) for conts in continuations)])
    ids = [[pad_id] * width for _ in range(rows)]
    offsets = [[0] * width for _ in range(rows)]
    segment = [[-1 - column for column in range(width)] for _ in range(rows)]  # padding: alone
    query, target, owner = [], [], []
    for b, conts in enumerate(continuations):
        column = 0
        for k, cont in enumerate(conts):
            for j, token in enumerate(cont):
                ids[b][column + j], offsets[b][column + j], segment[b][column + j] = token, j, k
                query.append((b, -1 if j == 0 else column + j - 1))
                target.append(token)
                owner.append((b, k))
            column += len(cont)
    seg = torch.tensor(segment, dtype=torch.long).reshape(rows, width)
    columns = torch.arange(width)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (columns[None, :] <= columns[:, None])
    return Tails(
        torch.tensor(ids, dtype=torch.long).reshape(rows, width),
        torch.tensor(offsets, dtype=torch.long).reshape(rows, width),
        allowed,
        query,
        target,
        owner,
        [len(c) for c in continuations],
    )


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as the additive [rows, 1, q, k] mask every attention implementation takes."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def mask_dtype(model: Any) -> torch.dtype:
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def sum_logprobs(tails: Tails, prompt_last: torch.Tensor, tail_logits: torch.Tensor) -> list[list[float]]:
    """Per row, per continuation: the sum of its tokens' log-probabilities, from the logits at each row's
    prompt's last position (`prompt_last`, [rows, vocab]) and at the tail's columns ([rows, width, vocab];
    log-probabilities or logits: both are normalised here)."""
    device = tail_logits.device
    rows = torch.tensor([b for b, _ in tails.query], device=device)
    columns = torch.tensor([max(q, 0) for _, q in tails.query], device=device)
    first = torch.tensor([q < 0 for _, q in tails.query], device=device)
    picked = torch.where(
        first[:, None], prompt_last.to(device)[rows].float(), tail_logits[rows, columns].float()
    )
    chosen = picked.gather(1, torch.tensor(tails.target, device=device)[:, None])[:, 0]
    token_logprobs = (chosen - torch.logsumexp(picked, dim=-1)).tolist()
    sums = [[0.0] * n for n in tails.counts]
    for (b, k), value in zip(tails.owner, token_logprobs, strict=True):
        sums[b][k] += value
    return sums


def packed_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    forward_kwargs: dict[str, Any] | None = None,
) -> list[list[float]]:
    """Per row, per continuation: the sum of its tokens' log-probabilities after the row's prompt.

    One forward over the batch: row b is [left padding][prompt b][its `Tails`]; `forward_kwargs` go to the
    model (e.g. peft's `adapter_names`). Every prompt needs at least one token, every continuation too (the
    caller appends the end-of-answer token).
    """
    rows = len(prompts)
    if rows != len(continuations):
        raise ValueError(f"{rows} prompts but {len(continuations)} continuation lists")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if rows == 0:
        return []
    tails = pack_tails(continuations, pad_id=pad_id)
    width_prompt = max(len(p) for p in prompts)
    width = width_prompt + tails.width
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)  # padding attends to itself: no NaN
    ids[:, width_prompt:] = tails.ids
    allowed[:, width_prompt:, width_prompt:] = tails.allowed
    for b, prompt in enumerate(prompts):
        start = width_prompt - len(prompt)
        ids[b, start:width_prompt] = torch.tensor(list(prompt))
        positions[b, start:width_prompt] = torch.arange(len(prompt))
        positions[b, width_prompt:] = len(prompt) + tails.offsets[b]
        allowed[b, start:width_prompt, start:width_prompt] = torch.ones(len(prompt), len(prompt)).tril() > 0
        allowed[b, width_prompt:, start:width_prompt] = True
    device = model.device
    out = model(
        input_ids=ids.to(device),
        attention_mask=additive_mask(allowed, mask_dtype(model)).to(device),
        position_ids=positions.to(device),
        logits_to_keep=tails.width + 1,  # the prompts' last column and the whole tail
        use_cache=False,
        **(forward_kwargs or {}),
    )
    logits = out.logits
    return sum_logprobs(tails, logits[:, 0], logits[:, 1:])
