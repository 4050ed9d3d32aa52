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

This module knows no adapters, prompts or voting: `models.generator.Generator.score` tokenizes, chooses rows'
adapters and batches; `ensemble` combines the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def packed_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    forward_kwargs: dict[str, Any] | None = None,
) -> list[list[float]]:
    """Per row, per continuation: the sum of its tokens' log-probabilities after the row's prompt.

    One forward over the batch: row b is [left padding][prompt b][continuation 1]...[continuation K][right
    padding]; `forward_kwargs` go to the model (e.g. peft's `adapter_names`). Every prompt needs at least one
    token, every continuation too (the caller appends the end-of-answer token).
    """
    rows = len(prompts)
    if rows != len(continuations):
        raise ValueError(f"{rows} prompts but {len(continuations)} continuation lists")
    if any(not p for p in prompts) or any(not c for conts in continuations for c in conts):
        raise ValueError("every prompt and every continuation needs at least one token")
    if rows == 0:
        return []
    width_prompt = max(len(p) for p in prompts)
    width_tail = max(1, max(sum(len(c) for c in conts) for conts in continuations))
    width = width_prompt + width_tail
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.zeros((rows, width, width), dtype=torch.bool)
    diagonal = torch.arange(width)
    allowed[:, diagonal, diagonal] = True  # padding attends to itself: no all-masked row, no NaN
    query, target, owner = [], [], []  # flat lists over every scored token of the batch
    for b, (prompt, conts) in enumerate(zip(prompts, continuations, strict=True)):
        start = width_prompt - len(prompt)
        ids[b, start:width_prompt] = torch.tensor(list(prompt))
        positions[b, start:width_prompt] = torch.arange(len(prompt))
        causal = torch.ones(len(prompt), len(prompt), dtype=torch.bool).tril()
        allowed[b, start:width_prompt, start:width_prompt] = causal
        column = width_prompt
        for k, cont in enumerate(conts):
            n = len(cont)
            span = slice(column, column + n)
            ids[b, span] = torch.tensor(list(cont))
            positions[b, span] = len(prompt) + torch.arange(n)
            allowed[b, span, start:width_prompt] = True
            allowed[b, span, span] = torch.ones(n, n, dtype=torch.bool).tril()
            # token j of the continuation is predicted at the prompt's last column (j = 0), else at j - 1
            for j, token in enumerate(cont):
                query.append((b, width_prompt - 1 if j == 0 else column + j - 1))
                target.append(token)
                owner.append((b, k))
            column += n
    device = model.device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float32
    additive = torch.zeros(allowed.shape, dtype=dtype)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    keep = width_tail + 1  # the prompts' last column and the whole tail
    out = model(
        input_ids=ids.to(device),
        attention_mask=additive[:, None].to(device),
        position_ids=positions.to(device),
        logits_to_keep=keep,
        use_cache=False,
        **(forward_kwargs or {}),
    )
    logits = out.logits  # [rows, keep, vocab]
    first = width - keep
    index_b = torch.tensor([b for b, _ in query], device=logits.device)
    index_q = torch.tensor([q - first for _, q in query], device=logits.device)
    picked = logits[index_b, index_q].float()  # [scored tokens, vocab]
    chosen = picked.gather(1, torch.tensor(target, device=logits.device)[:, None])[:, 0]
    token_logprobs = (chosen - torch.logsumexp(picked, dim=-1)).tolist()
    sums = [[0.0] * len(conts) for conts in continuations]
    for (b, k), value in zip(owner, token_logprobs, strict=True):
        sums[b][k] += value
    return sums
