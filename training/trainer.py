"""The training loop for one member: AdamW over the LoRA weights, warmup + decay, gradient accumulation.

A plain loop rather than `transformers.Trainer`, so every step is visible: answer-only loss (optionally with a
small weight on prompt tokens, computed per token here), bf16 autocast on CUDA, optional NEFTune noise on the
input embeddings, gradient clipping. Every `eval_every` fraction of an epoch it calls a validation function
and keeps a CPU copy of the LoRA weights with the best validation F1 (not the lowest loss); at the end that
copy is put back. A step whose loss or gradients are not finite is skipped, and where it went non-finite is
logged (`stability`). Loss and F1 go to a JSONL log and a tqdm bar. It knows nothing about files, data
formats or how validation answers are produced.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.config import MemberConfig, TrainConfig
from training.data import IGNORE_INDEX, TrainExample
from training.stability import NonFinite, attention_kernels, find_nonfinite

logger = logging.getLogger(__name__)
Evaluate = Callable[[], tuple[float, float]]
"""Runs validation on the model as it is now; returns (exact match, F1), both 0-100."""


@dataclass(frozen=True)
class Schedule:
    """How long to train and when to validate, in optimizer steps."""

    n_examples: int
    examples_per_step: int
    total_steps: int
    eval_steps: tuple[int, ...]
    warmup_steps: int

    @classmethod
    def plan(cls, n_examples: int, config: TrainConfig) -> Schedule:
        if n_examples < 1:
            raise ValueError("no training examples left (see the length report)")
        per_step = config.batch_size * config.grad_accum
        total = config.max_steps or max(1, math.ceil(config.epochs * n_examples / per_step))
        epochs = total * per_step / n_examples
        points = {total}
        k = 1
        while k * config.eval_every <= epochs + 1e-9:
            points.add(min(total, max(1, round(k * config.eval_every * n_examples / per_step))))
            k += 1
        return cls(n_examples, per_step, total, tuple(sorted(points)), round(config.warmup_ratio * total))

    def epoch_at(self, step: int) -> float:
        return step * self.examples_per_step / self.n_examples


def lr_factor(step: int, schedule: Schedule, kind: str) -> float:
    """Multiplier of the peak learning rate for the optimizer step `step` (0-based): linear warmup, then
    cosine or linear decay to zero at the last step, or constant."""
    if step < schedule.warmup_steps:
        return (step + 1) / (schedule.warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = (step - schedule.warmup_steps) / max(1, schedule.total_steps - schedule.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)


def micro_batches(n: int, batch_size: int, *, seed: int, shuffle: bool) -> Iterator[list[int]]:
    """Example indices, `batch_size` at a time, epoch after epoch (reshuffled each epoch when `shuffle`)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        if shuffle:
            rng.shuffle(order)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    """Per-token loss weight: 1 on targets, `prompt_loss_weight` on prompt tokens, 0 on padding."""

    @property
    def target_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def collate(examples: Sequence[TrainExample], pad_id: int, prompt_loss_weight: float, device: str) -> Batch:
    """Right-pad a micro-batch; labels are -100 on prompt tokens and padding."""
    width = max(len(ex.input_ids) for ex in examples)
    ids, mask, labels, weights = [], [], [], []
    for ex in examples:
        pad = width - len(ex.input_ids)
        ids.append(list(ex.input_ids) + [pad_id] * pad)
        mask.append([1] * len(ex.input_ids) + [0] * pad)
        labels.append(ex.labels + [IGNORE_INDEX] * pad)
        n_target = len(ex.input_ids) - ex.prompt_len
        weights.append([prompt_loss_weight] * ex.prompt_len + [1.0] * n_target + [0.0] * pad)
    return Batch(
        *(torch.tensor(t, device=device) for t in (ids, mask, labels)),
        torch.tensor(weights, dtype=torch.float32, device=device),
    )


def batch_loss(model: Any, batch: Batch, prompt_loss_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective summed over this micro-batch's weighted tokens, answer-token cross-entropy sum).

    Answer-only (weight 0) uses the model's own loss (the fused kernel under unsloth), un-averaged; with a
    prompt weight the per-token cross-entropy is computed here from the logits.
    """
    if prompt_loss_weight == 0:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
            use_cache=False,
        )
        total = out.loss * batch.target_tokens
        return total, total.detach()
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    per_token = F.cross_entropy(
        out.logits[:, :-1].float().transpose(1, 2), batch.input_ids[:, 1:], reduction="none"
    )
    answer = (batch.labels[:, 1:] != IGNORE_INDEX).float()
    return (per_token * batch.weights[:, 1:]).sum(), (per_token * answer).sum().detach()


def step_weight(batch: Batch) -> float:
    """What the objective of a micro-batch is divided by: its total token weight (next-token positions)."""
    return float(batch.weights[:, 1:].sum())


def neftune_alpha(member: MemberConfig, config: TrainConfig) -> float | None:
    """The member's NEFTune noise, else the recipe's (None: off)."""
    return config.neftune_noise_alpha if member.neftune_noise_alpha is None else member.neftune_noise_alpha


class NEFTune:
    """Adds uniform noise of scale alpha / sqrt(length x hidden) to the input embeddings in training mode
    (Jain et al. 2023, as in transformers' `neftune_noise_alpha`); a context manager around the training.

    `length` is the micro-batch's padded width (`output.size(1)`, as transformers computes it) unless
    `width` says otherwise: a padding-free or packed row holds several sequences, and its own width would
    shrink the noise by about the square root of their number (`training.sft` passes the longest sequence,
    the width the padded batch would have had, so alpha means the same under every batching)."""

    def __init__(
        self, model: Any, alpha: float | None, width: Callable[[], int | None] | None = None
    ) -> None:
        self.model, self.alpha, self.width, self.handle = model, alpha, width, None

    def __enter__(self) -> NEFTune:
        if self.alpha is not None:
            alpha, width = self.alpha, self.width

            def add_noise(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
                if not module.training:
                    return output
                length = (width() if width is not None else None) or output.size(1)
                scale = alpha / math.sqrt(length * output.size(2))
                return output + torch.zeros_like(output).uniform_(-scale, scale)

            self.handle = self.model.get_input_embeddings().register_forward_hook(add_noise)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


@dataclass
class EvalPoint:
    step: int
    epoch: float
    exact_match: float | None
    """0-100; None when the run had no validation."""
    f1: float | None


@dataclass
class TrainResult:
    """What happened; `best` is the checkpoint the model holds on return."""

    steps: int
    epochs: float
    best: EvalPoint | None
    curve: list[EvalPoint] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    """Answer-token loss per optimizer step."""
    train_tokens: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    skipped_steps: list[int] = field(default_factory=list)
    """Optimizer steps skipped because the loss or a gradient was not finite (weights left as they were)."""
    nonfinite: list[NonFinite] = field(default_factory=list)
    """For each skipped step, where it went non-finite (see `stability.find_nonfinite`)."""

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0


class JsonlLog:
    """Appends one JSON object per line (loss per step, F1 per validation)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def train_member(
    model: Any,
    examples: Sequence[TrainExample],
    member: MemberConfig,
    config: TrainConfig,
    *,
    pad_id: int,
    device: str,
    bf16: bool,
    evaluate: Evaluate | None = None,
    eval_mode: Callable[[Any], None] = lambda m: m.eval(),
    train_mode: Callable[[Any], None] = lambda m: m.train(),
    log: JsonlLog | None = None,
) -> TrainResult:
    """Train the active adapter of `model` on `examples`; on return it holds the best-F1 checkpoint."""
    from tqdm.auto import tqdm

    schedule = Schedule.plan(len(examples), config)
    log = log or JsonlLog(None)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise ValueError(f"member {member.name}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=member.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule, config.scheduler)
    )
    batches = micro_batches(len(examples), config.batch_size, seed=member.order_seed, shuffle=member.shuffle)
    result = TrainResult(
        steps=schedule.total_steps, epochs=schedule.epoch_at(schedule.total_steps), best=None
    )
    best_state: dict[str, torch.Tensor] | None = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(member.seed)  # LoRA dropout (and NEFTune) draw from here
    bar = tqdm(
        total=schedule.total_steps,
        desc=member.name,
        unit="step",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    postfix: dict[str, str] = {}

    def validate(step: int) -> None:
        nonlocal best_state
        if evaluate is None:
            return
        started = time.perf_counter()
        eval_mode(model)
        exact_match, f1 = evaluate()
        train_mode(model)
        result.eval_seconds += time.perf_counter() - started
        point = EvalPoint(step, round(schedule.epoch_at(step), 4), exact_match, f1)
        result.curve.append(point)
        log.write(event="eval", member=member.name, **asdict(point))
        # Step 0 is the base model's baseline, never a checkpoint (its adapter is a no-op). Strictly better
        # only: on a tie the earlier, shorter-trained checkpoint stays.
        if step > 0 and (result.best is None or f1 > (result.best.f1 or 0.0)):
            result.best, best_state = point, trainable_state(model)
        logger.info(
            "%s step %d (epoch %.3f): loss %s, validation EM %.2f F1 %.2f (%.1fs)",
            member.name,
            step,
            point.epoch,
            f"{result.losses[-1]:.4f}" if result.losses else "-",
            exact_match,
            f1,
            time.perf_counter() - started,
        )
        postfix["f1"] = f"{f1:.1f}"
        if result.best is not None:
            postfix["best"] = f"{result.best.f1:.1f}@{result.best.epoch:g}ep"
        bar.set_postfix(postfix)

    train_mode(model)
    if config.eval_at_start:
        validate(0)
    attention = attention_kernels(cudnn=config.cudnn_sdpa, device=device)
    with NEFTune(model, neftune_alpha(member, config)), attention as backends:
        for step in range(1, schedule.total_steps + 1):
            started = time.perf_counter()
            micro = [
                collate([examples[i] for i in next(batches)], pad_id, config.prompt_loss_weight, device)
                for _ in range(config.grad_accum)
            ]
            denominator = sum(step_weight(b) for b in micro)
            answer_sum, answer_tokens, step_tokens = 0.0, 0, 0
            incident: NonFinite | None = None
            for index, batch in enumerate(micro):
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                    objective, answer_ce = batch_loss(model, batch, config.prompt_loss_weight)
                (objective / denominator).backward()
                answer = float(answer_ce)
                answer_sum += answer
                answer_tokens += batch.target_tokens
                step_tokens += int(batch.attention_mask.sum())
                if incident is None:
                    incident = find_nonfinite(
                        named,
                        step=step,
                        micro_batch=index,
                        micro_batches=len(micro),
                        forward_finite=math.isfinite(answer) and bool(torch.isfinite(objective.detach())),
                        shape=(batch.input_ids.size(0), batch.input_ids.size(1)),
                        backends=backends,
                    )
            # One non-finite update turns every LoRA weight into NaN for good (seen on an H200 with bf16
            # autocast: validation F1 0 from then on), so such a step is skipped, logged and counted instead.
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if config.max_grad_norm > 0 and incident is None
                else None
            )
            if incident is None:
                optimizer.step()
            else:
                result.skipped_steps.append(step)
                result.nonfinite.append(incident)
                log.write(event="nonfinite", member=member.name, **asdict(incident))
                logger.warning(
                    "%s step %d: non-finite %s in micro-batch %d of %d (%d x %d tokens, width %% 128 = %d); "
                    "first non-finite gradient in backward order: %s (%d of %d); update skipped",
                    member.name,
                    step,
                    "gradient" if incident.forward_finite else "loss",
                    incident.micro_batch + 1,
                    incident.micro_batches,
                    incident.rows,
                    incident.width,
                    incident.width_mod_128,
                    incident.first_nonfinite_grad,
                    incident.nonfinite_grads,
                    incident.trainable,
                )
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = answer_sum / max(1, answer_tokens)
            seconds = time.perf_counter() - started
            result.train_seconds += seconds
            result.train_tokens += step_tokens
            result.losses.append(loss)
            log.write(
                event="step",
                member=member.name,
                step=step,
                epoch=round(schedule.epoch_at(step), 4),
                loss=round(loss, 5),
                lr=scheduler.get_last_lr()[0],
                grad_norm=None if grad_norm is None else round(float(grad_norm), 4),
                tokens=step_tokens,
                seconds=round(seconds, 4),
            )
            postfix["loss"] = f"{loss:.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if step in schedule.eval_steps:
                validate(step)
    bar.close()
    if best_state is not None and result.best is not None and result.best.step != schedule.total_steps:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in best_state:
                    param.copy_(best_state[name].to(param.device, param.dtype))
    if result.best is None:  # no validation: the last step is the checkpoint
        result.best = EvalPoint(schedule.total_steps, round(result.epochs, 4), None, None)
    if device == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    return result
