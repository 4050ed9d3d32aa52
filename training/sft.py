"""Training one member with TRL's `SFTTrainer`: the field's own stack, with this project's member semantics.

What comes from the libraries (TRL, transformers' Trainer, accelerate), through their options: AdamW;
gradient accumulation with the loss divided by the answer tokens of the whole optimizer step (of every
process, under data parallelism); clipping; bf16 autocast; the answer-only loss (TRL's `completion_only_loss`
over a `completion_mask`: labels -100 on every prompt token); padding-free and BFD-packed batches (TRL's
collator flattens a micro-batch into one row with position ids and no attention mask, from which
transformers builds the block-diagonal mask, so SDPA, FlashAttention and Unsloth keep each sequence to
itself; `training.backends.batching_for` says where that is cheap); the fused LM head (log-probabilities in
chunks, never the full logits); checkpoints with the optimizer, scheduler, RNG and data position (`qa-train
--resume`); data parallelism under `accelerate launch` or `torchrun` (DDP); the logging integrations
(`report_to`). Unsloth on CUDA is its documented path: its patched model trained by this trainer.

What is ours, because no option of theirs does it:
- The F1-chosen checkpoint (`MemberCallback`): at the recipe's validation points the member answers the
  held-out questions through the serving pipeline (`training.validation`); the best F1's adapter weights are
  kept (in memory, and in every checkpoint, so a resumed run knows its best) and put back at the end.
  Trainer's `load_best_model_at_end` ranks `evaluate()` metrics of teacher-forced batches, not generated
  answers.
- Skipping a non-finite step (`MemberTrainer.training_step`, then `MemberCallback.on_pre_optimizer_step`
  drops the step's gradients, so AdamW leaves every weight as it was): one NaN update turns every LoRA
  weight into NaN for good (seen on an H200: `training.stability`); Trainer's `logging_nan_inf_filter` only
  hides the loss from the log.
- The optional prompt-loss weight (`MemberTrainer.compute_loss`): TRL weighs a token 0 or 1.
- The learning-rate schedule (`MemberTrainer.create_scheduler`, the loop's `lr_factor`): transformers'
  warmup spends its first step at a learning rate of 0, so a member would train one step behind the loop
  that trained the shipped members; with it the two give the same losses and weights.
- NEFTune (`training.trainer.NEFTune` with `noise_width`): transformers' hook divides the noise by the
  row's width, in a padding-free row all its sequences together.
- The member's JSONL train log and `TrainResult`, the loop's (`training.trainer`), so the runner, the
  manifest and the reports are the same whichever trainer ran.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from training.config import MemberConfig, TrainConfig
from training.data import IGNORE_INDEX, TrainExample
from training.stability import NonFinite, attention_kernels, find_nonfinite
from training.trainer import (
    EvalPoint,
    Evaluate,
    JsonlLog,
    NEFTune,
    Schedule,
    TrainResult,
    lr_factor,
    neftune_alpha,
    trainable_state,
)

logger = logging.getLogger(__name__)
STATE_FILE = "qa_member_state.json"
"""In each checkpoint: the curve, losses, skipped steps and best point so far (what `TrainResult` holds)."""
BEST_FILE = "qa_best_adapter.safetensors"
"""In each checkpoint: the trainable weights of the best validation point so far."""


def to_dataset(examples: Sequence[TrainExample]) -> Any:
    """The tokenized examples as TRL's pre-tokenized form: `input_ids` and a `completion_mask` (0 on the
    prompt, 1 on the answer and its end token), which TRL turns into labels -100 on the prompt."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [list(ex.input_ids) for ex in examples],
            "completion_mask": [
                [0] * ex.prompt_len + [1] * (len(ex.input_ids) - ex.prompt_len) for ex in examples
            ],
        }
    )


def sft_config(
    member: MemberConfig, config: TrainConfig, schedule: Schedule, *, output: Path, device: str, bf16: bool
) -> SFTConfig:
    """The recipe as SFTTrainer arguments (every default that differs from the recipe's set explicitly)."""
    packed = config.batching == "packed"
    return SFTConfig(
        output_dir=str(output),
        per_device_train_batch_size=1 if packed else config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_steps=schedule.total_steps,
        learning_rate=member.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=schedule.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        bf16=bf16,
        fp16=False,
        use_cpu=device == "cpu",
        # NEFTune is `MemberTrainer`'s (`training.trainer.NEFTune`): transformers' hook scales the noise by
        # the row's width, which in a padding-free or packed row is that of all its sequences together.
        neftune_noise_alpha=None,
        seed=member.seed,
        data_seed=member.order_seed,
        train_sampling_strategy="random" if member.shuffle else "sequential",
        # The backends set checkpointing up (peft's kbit preparation, or Unsloth's own variant).
        gradient_checkpointing=False,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",  # `MemberCallback` saves at the validation points
        save_total_limit=config.save_total_limit,
        report_to=list(config.report_to) or "none",
        disable_tqdm=not config.progress,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        completion_only_loss=True,
        padding_free=config.batching == "padding_free",
        packing=packed,
        packing_strategy="bfd",
        # Examples are already within `max_seq_len` (the length policy never cuts an answer); a packed row
        # holds up to the padded batch's worst case.
        max_length=config.batch_size * config.max_seq_len if packed else None,
    )


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_zero() -> bool:
    return not _distributed() or torch.distributed.get_rank() == 0


class MemberTrainer(SFTTrainer):
    """SFTTrainer plus the non-finite watch of every micro-batch, the optional prompt-loss weight, and NEFTune
    with the loop's scale under every batching (`noise_width`)."""

    def __init__(
        self,
        *args: Any,
        prompt_loss_weight: float = 0.0,
        fused_head: bool = True,
        watch: MemberCallback,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_loss_weight, self.fused_head, self.watch = prompt_loss_weight, fused_head, watch
        self.width: int | None = None
        """The micro-batch's `noise_width`, read by the NEFTune hook in its forward."""

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The loop's schedule (`training.trainer.lr_factor`): transformers' warmup runs its first step at a
        learning rate of 0 (step / warmup), the loop's at (step + 1) / (warmup + 1), so with warmup the two
        would train one step apart. The recipe's members keep the schedule they were trained with."""
        if self.lr_scheduler is None:
            kind = self.watch.config.scheduler
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda step: lr_factor(step, self.watch.schedule, kind)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.width = noise_width(inputs)
        shape = tuple(inputs["input_ids"].shape)
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else shape[0] * shape[1]  # padding-free: all real
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.watch.after_backward(loss, shape, tokens)
        return loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        """With a prompt weight, the step's loss is divided by its summed token weight (answer tokens + the
        weight x prompt tokens), as the loop does; otherwise Trainer's count of answer tokens."""
        if self.prompt_loss_weight == 0:
            return super()._get_num_items_in_batch(batch_samples, device)
        total = sum(float(token_weights(b, self.prompt_loss_weight).sum()) for b in batch_samples)
        count = torch.tensor(total, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if self.prompt_loss_weight == 0 or not model.training:
            if self.fused_head:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's fused LM head is a Triton kernel (a GPU's): elsewhere the model's own loss, as Trainer
            # computes it (the same sum over answer tokens / the step's answer tokens of every process).
            return Trainer.compute_loss(
                self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch
            )
        weights = token_weights(inputs, self.prompt_loss_weight)
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**forward, use_cache=False).logits
        per_token = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), inputs["input_ids"][:, 1:], reduction="none"
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else weights.sum()
        loss = (per_token * weights).sum() / torch.as_tensor(denominator).clamp(min=1e-8)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss


def noise_width(batch: dict[str, torch.Tensor]) -> int | None:
    """NEFTune's length of a micro-batch: in a padding-free or packed row (position ids, no attention mask)
    its longest sequence, the width the padded batch would have had; None for a padded batch (its width)."""
    positions = batch.get("position_ids")
    if positions is None or batch.get("attention_mask") is not None:
        return None
    return int(positions.max()) + 1


def token_weights(batch: dict[str, torch.Tensor], prompt_loss_weight: float) -> torch.Tensor:
    """[rows, width - 1] the loss weight of each next-token target: 1 on answer tokens, `prompt_loss_weight`
    on the other real tokens, 0 on padding and on the first token of each packed sequence (nothing before it
    in its own sequence predicts it)."""
    labels = batch["labels"][:, 1:]
    if "attention_mask" in batch:
        real = batch["attention_mask"][:, 1:].bool()
    else:  # padding-free: position 0 starts a sequence (and pads the row's end)
        real = batch["position_ids"][:, 1:] != 0
    answer = labels != IGNORE_INDEX
    return answer.float() + (real & ~answer).float() * prompt_loss_weight


class MemberCallback(TrainerCallback):
    """The project's member semantics on the SFTTrainer (see the module doc): validation at the recipe's
    points with the best F1 kept, the non-finite step skipped, the JSONL log, the `TrainResult`."""

    def __init__(
        self,
        model: Any,
        member: MemberConfig,
        config: TrainConfig,
        schedule: Schedule,
        *,
        evaluate: Evaluate | None,
        eval_mode: Callable[[Any], None],
        train_mode: Callable[[Any], None],
        log: JsonlLog,
        resume_from: Path | None = None,
    ) -> None:
        self.model, self.member, self.config, self.schedule = model, member, config, schedule
        self.evaluate, self.eval_mode, self.train_mode = evaluate, eval_mode, train_mode
        self.log, self.resume_from = log, resume_from
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        total = schedule.total_steps
        self.result = TrainResult(steps=total, epochs=schedule.epoch_at(total), best=None)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.incident: NonFinite | None = None
        self.micro, self.step_started, self.step_tokens = 0, 0.0, 0
        self.backends: dict[str, bool] | None = None
        self.current_step = 1

    # -- every micro-batch (called by MemberTrainer.training_step after its backward) --
    def after_backward(self, loss: torch.Tensor, shape: tuple[int, ...], tokens: int) -> None:
        self.step_tokens += tokens
        if self.incident is None:
            self.incident = find_nonfinite(
                self.named,
                step=self.current_step,
                micro_batch=self.micro,
                micro_batches=self.config.grad_accum,
                forward_finite=bool(torch.isfinite(loss)),
                shape=(shape[0], shape[1]),
                backends=self.backends,
            )
        self.micro += 1

    # -- Trainer events --
    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.current_step = state.global_step + 1
        if state.global_step > 0 and self.resume_from is not None:
            self._restore(self.resume_from)
        elif self.config.eval_at_start:
            self._validate(0)

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.current_step, self.micro, self.incident, self.step_tokens = state.global_step + 1, 0, None, 0
        self.step_started = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.incident is None:
            return
        # No gradient, no update: AdamW skips a parameter whose grad is None (its moments stay as they were).
        for _, param in self.named:
            param.grad = None
        incident = self.incident
        self.result.skipped_steps.append(incident.step)
        self.result.nonfinite.append(incident)
        if state.is_world_process_zero:
            self.log.write(event="nonfinite", member=self.member.name, **asdict(incident))
        logger.warning(
            "%s step %d: non-finite %s in micro-batch %d of %d (%d x %d tokens, width %% 128 = %d); "
            "first non-finite gradient in backward order: %s (%d of %d); update skipped",
            self.member.name,
            incident.step,
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

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.result.train_seconds += time.perf_counter() - self.step_started
        if state.global_step in self.schedule.eval_steps:
            control.should_save = True  # a resumable checkpoint at every validation point
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not logs or "loss" not in logs or "train_runtime" in logs:
            return
        step = state.global_step
        tokens = self.step_tokens
        if _distributed():  # every process's tokens
            count = torch.tensor([tokens], dtype=torch.long, device=args.device)
            torch.distributed.all_reduce(count)
            tokens = int(count.item())
        loss = float(logs["loss"])
        self.result.losses.append(loss)
        self.result.train_tokens += tokens
        if state.is_world_process_zero:
            grad_norm = logs.get("grad_norm")
            self.log.write(
                event="step",
                member=self.member.name,
                step=step,
                epoch=round(self.schedule.epoch_at(step), 4),
                loss=round(loss, 5),
                lr=logs.get("learning_rate"),
                grad_norm=None if grad_norm is None or not math.isfinite(grad_norm) else round(grad_norm, 4),
                tokens=tokens,
                seconds=round(time.perf_counter() - self.step_started, 4),
            )
        if step in self.schedule.eval_steps:
            self._validate(step)

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        result = self.result
        facts = {
            "curve": [asdict(p) for p in result.curve],
            "best": asdict(result.best) if result.best else None,
            "losses": result.losses,
            "skipped_steps": result.skipped_steps,
            "nonfinite": [asdict(n) for n in result.nonfinite],
            "train_tokens": result.train_tokens,
            "train_seconds": result.train_seconds,
            "eval_seconds": result.eval_seconds,
        }
        (folder / STATE_FILE).write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")
        if self.best_state is not None:
            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(folder / BEST_FILE))

    # -- ours --
    def _restore(self, folder: Path) -> None:
        facts = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        result = self.result
        result.curve = [EvalPoint(**p) for p in facts["curve"]]
        result.best = EvalPoint(**facts["best"]) if facts["best"] else None
        result.losses = list(facts["losses"])
        result.skipped_steps = list(facts["skipped_steps"])
        result.nonfinite = [NonFinite(**n) for n in facts["nonfinite"]]
        result.train_tokens, result.train_seconds = facts["train_tokens"], facts["train_seconds"]
        result.eval_seconds = facts["eval_seconds"]
        if (folder / BEST_FILE).is_file():
            from safetensors.torch import load_file

            self.best_state = load_file(str(folder / BEST_FILE))
        logger.info("%s: resumed from %s (best F1 so far %s)", self.member.name, folder, result.best)

    def _scores(self) -> tuple[float, float]:
        """Validation runs on the first process; every process gets its scores (so all keep the same best)."""
        assert self.evaluate is not None
        if not _distributed() or torch.distributed.get_world_size() == 1:
            return self.evaluate()
        box: list[Any] = [None]
        if torch.distributed.get_rank() == 0:
            box[0] = self.evaluate()
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _validate(self, step: int) -> None:
        if self.evaluate is None or any(p.step == step for p in self.result.curve):
            return
        started = time.perf_counter()
        self.eval_mode(self.model)
        exact_match, f1 = self._scores()
        self.train_mode(self.model)
        self.result.eval_seconds += time.perf_counter() - started
        point = EvalPoint(step, round(self.schedule.epoch_at(step), 4), exact_match, f1)
        self.result.curve.append(point)
        if _rank_zero():
            self.log.write(event="eval", member=self.member.name, **asdict(point))
        # Step 0 is the base model's baseline, never a checkpoint; on a tie the earlier checkpoint stays.
        if step > 0 and (self.result.best is None or f1 > (self.result.best.f1 or 0.0)):
            self.result.best, self.best_state = point, trainable_state(self.model)
        logger.info(
            "%s step %d (epoch %.3f): loss %s, validation EM %.2f F1 %.2f (%.1fs)",
            self.member.name,
            step,
            point.epoch,
            f"{self.result.losses[-1]:.4f}" if self.result.losses else "-",
            exact_match,
            f1,
            time.perf_counter() - started,
        )


def fused_head_for(backend: str, device: str) -> bool:
    """TRL's fused LM head (a Triton kernel) on CUDA with plain peft; an Unsloth model computes its loss with
    its own fused cross-entropy when given labels, and its patched forward takes no `fused_lm_head`."""
    return device == "cuda" and backend != "unsloth"


def last_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` under `folder` that holds our state file (a complete save), or None."""
    found = [p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit() and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name[11:]), default=None)


def make_trainer(
    model: Any,
    examples: Sequence[TrainExample],
    member: MemberConfig,
    config: TrainConfig,
    *,
    tokenizer: Any,
    device: str,
    bf16: bool,
    checkpoints: Path,
    resume_from: Path | None = None,
    evaluate: Evaluate | None = None,
    eval_mode: Callable[[Any], None] = lambda m: m.eval(),
    train_mode: Callable[[Any], None] = lambda m: m.train(),
    log: JsonlLog | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    fused_head: bool | None = None,
) -> tuple[MemberTrainer, MemberCallback]:
    """The SFTTrainer of one member, its dataset prepared (packed when the recipe says so) and its schedule
    planned over it, with the callback that holds its `TrainResult`."""
    if config.batching == "auto":
        raise ValueError('train.batching "auto" is resolved by the caller (training.backends.batching_for)')
    packed = config.batching == "packed"
    # Examples (packed: rows) a step over every process: `batch_size` is each process's micro-batch.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    plan_config = replace(config, batch_size=(1 if packed else config.batch_size) * processes)
    schedule = Schedule.plan(len(examples), plan_config)  # packed: planned again over the packed rows below
    args = sft_config(member, config, schedule, output=checkpoints, device=device, bf16=bf16)
    watch = MemberCallback(
        model,
        member,
        config,
        schedule,
        evaluate=evaluate,
        eval_mode=eval_mode,
        train_mode=train_mode,
        log=log or JsonlLog(None),
        resume_from=resume_from,
    )
    torch.manual_seed(member.seed)
    trainer = MemberTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(examples),
        processing_class=tokenizer,
        callbacks=[watch, *callbacks],
        prompt_loss_weight=config.prompt_loss_weight,
        fused_head=device == "cuda" if fused_head is None else fused_head,
        watch=watch,
    )
    trainer.remove_callback(PrinterCallback)  # the member's JSONL log and our logger say it already
    if packed:
        schedule = Schedule.plan(len(trainer.train_dataset), plan_config)
        trainer.args.max_steps, trainer.args.warmup_steps = schedule.total_steps, schedule.warmup_steps
        watch.schedule = schedule
        total = schedule.total_steps
        watch.result.steps, watch.result.epochs = total, schedule.epoch_at(total)
    # TRL casts a quantized model's LoRA weights to bf16 (the QLoRA paper's recipe). They stay fp32 here, as
    # in the loop and as peft makes them: bf16 autocast still runs the matmuls in bf16, while an AdamW update
    # of a small LoRA weight held in bf16 loses most of its bits.
    for _, param in watch.named:
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return trainer, watch


def train_member_sft(
    model: Any,
    examples: Sequence[TrainExample],
    member: MemberConfig,
    config: TrainConfig,
    *,
    tokenizer: Any,
    device: str,
    bf16: bool,
    checkpoints: Path,
    resume: bool = False,
    evaluate: Evaluate | None = None,
    eval_mode: Callable[[Any], None] = lambda m: m.eval(),
    train_mode: Callable[[Any], None] = lambda m: m.train(),
    log: JsonlLog | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    fused_head: bool | None = None,
) -> TrainResult:
    """Train the active adapter of `model` on `examples` with SFTTrainer; on return it holds the best-F1
    checkpoint. `checkpoints`: this member's checkpoint folder; `resume`: continue from its newest one.
    `fused_head`: TRL's fused LM head for the loss (default: on CUDA); off, the model's own loss, which is
    what an Unsloth model computes with its own fused cross-entropy (`fused_head_for`)."""
    resume_from = last_checkpoint(checkpoints) if resume else None
    trainer, watch = make_trainer(
        model,
        examples,
        member,
        config,
        tokenizer=tokenizer,
        device=device,
        bf16=bf16,
        checkpoints=checkpoints,
        resume_from=resume_from,
        evaluate=evaluate,
        eval_mode=eval_mode,
        train_mode=train_mode,
        log=log,
        callbacks=callbacks,
        fused_head=fused_head,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    neftune = NEFTune(model, neftune_alpha(member, config), lambda: trainer.width)
    with neftune, attention_kernels(cudnn=config.cudnn_sdpa, device=device) as backends:
        watch.backends = backends
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    result, total = watch.result, watch.schedule.total_steps
    if watch.best_state is not None and result.best is not None and result.best.step != total:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in watch.best_state:
                    param.copy_(watch.best_state[name].to(param.device, param.dtype))
    if result.best is None:  # no validation: the last step is the checkpoint
        result.best = EvalPoint(total, round(result.epochs, 4), None, None)
    if device == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    return result
