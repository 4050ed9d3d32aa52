"""One training run: read the data, report token lengths, load the base once, train every member in turn.

Each member gets a fresh adapter (see `backends`), is trained and validated (`sft` with TRL's SFTTrainer, or
the loop of `trainer`; `validation`) and is written as `<output>/<name>/` with its manifest (`export`);
run-level reports go to `<output>/.training/` (hidden, so the output folder stays a valid adapters directory
for `qa-serve --adapters-dir`), the SFTTrainer's checkpoints to `<output>/.training/checkpoints/<name>/` until
the member is exported. `resume=True` (`qa-train --resume`): members already exported are kept, a member with
a checkpoint continues from its newest one, the others train from the start.

Under `accelerate launch` / `torchrun` every process runs this (each loads the base and the data and trains
its shard of every batch); only the first writes reports, logs and adapters. Call `backends.prepare()` before
importing this module when the backend may be unsloth.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.adapters.registry import AdapterManifest
from models.base.loading import load_tokenizer
from models.base.sources import ResolvedModel, resolve_model
from training.backends import batching_for, load_training_base, software_versions
from training.config import ConfigError, MemberConfig, RunConfig, TrainConfig
from training.data import LengthReport, PromptEncoder, TrainingData, encode_examples, load_training_data
from training.export import write_adapter_folder
from training.lengths import measure, table, write_report
from training.trainer import JsonlLog, TrainResult, train_member
from training.validation import Validator

logger = logging.getLogger(__name__)
REPORT_DIR = ".training"
CHECKPOINTS = "checkpoints"
"""Under REPORT_DIR: one folder of SFTTrainer checkpoints per member being trained."""
TRAIN_LOG = "train_log.jsonl"
HOLDOUT_IDS = "holdout_ids.json"
"""The held-out question ids of the run (`qa-eval run --ids` reads them): never trained on, never eval."""
MAX_NONFINITE_IN_MANIFEST = 20
"""Skipped steps described in the manifest (every one is in the member's train log)."""


@dataclass(frozen=True)
class MemberOutcome:
    name: str
    folder: Path
    result: TrainResult


def resolve_base(config: TrainConfig) -> ResolvedModel:
    """The base model folder and fingerprint for `train.base` (fetched and converted once if it is a key)."""
    gguf = Path(config.gguf).expanduser() if config.gguf else None
    return resolve_model(config.base, config.cache_path(), gguf_path=gguf)


def write_lengths(run: RunConfig) -> tuple[str, list[Path]]:
    """Only the length analysis (`qa-train lengths`): the Markdown table and the files written."""
    config = run.train
    resolved = resolve_base(config)
    encoder = PromptEncoder(load_tokenizer(resolved.path))
    data = load_training_data(config)
    styles = list(dict.fromkeys(m.prompt_style for m in run.members))
    stats, raw = measure(data.train, encoder, styles, config.max_seq_len)
    paths = write_report(
        stats, raw, config.output_path() / REPORT_DIR, title=f"{resolved.key}, {config.split}"
    )
    return table(stats), paths


def longest_validation_input(
    data: TrainingData, encoder: PromptEncoder, styles: list[str], answer_budget: int
) -> int:
    """Tokens of the longest validation prompt (over the members' prompt styles) plus the answer budget:
    the longest sequence validation gives the model (0 without validation)."""
    longest = max(
        (len(encoder.prompt_ids(s, ex.context, ex.question)) for ex in data.validation for s in styles),
        default=0,
    )
    return longest + answer_budget if longest else 0


def is_main_process() -> bool:
    """The process that writes (rank 0 of a data-parallel run; the only one otherwise)."""
    return int(os.environ.get("RANK", "0")) == 0


def run_training(run: RunConfig, *, device: str, backend: str, resume: bool = False) -> list[MemberOutcome]:
    """Train every member of `run` and write its adapter folder; returns what each run produced (a
    resumed run: the members it trained now)."""
    # `auto` batching resolved once, so the trainer and the manifest say what ran
    run = replace(run, train=replace(run.train, batching=batching_for(run.train, backend, device)))
    config = run.train
    output = config.output_path()
    existing = [m.name for m in run.members if (output / m.name).exists()]
    if existing and not config.overwrite and not resume:
        raise FileExistsError(
            f"{output} already holds {', '.join(existing)}; set train.overwrite=true, resume with --resume "
            "or choose another train.output_dir"
        )
    if resume and config.trainer != "sft":
        raise ConfigError('train.trainer: --resume needs trainer = "sft" (the loop keeps no checkpoints)')
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and config.trainer != "sft":
        raise ConfigError(
            'train.trainer: data parallelism (WORLD_SIZE > 1) needs trainer = "sft" (the loop trains on one '
            "device: every process would train the whole member alone)"
        )
    main = is_main_process()
    reports = output / REPORT_DIR
    reports.mkdir(parents=True, exist_ok=True)
    resolved = resolve_base(config)
    data = load_training_data(config)
    logger.info(
        "data: %d training questions (%d articles); validating on %d held-out questions "
        "(%d articles held out)",
        len(data.train),
        data.train_articles,
        len(data.validation),
        data.held_out_articles,
    )
    encoder = PromptEncoder(load_tokenizer(resolved.path))
    styles = list(dict.fromkeys(m.prompt_style for m in run.members))
    stats, raw = measure(data.train, encoder, styles, config.max_seq_len)
    if main:
        write_report(stats, raw, reports, title=f"{resolved.key}, {config.split}")
    encoded = {
        s: encode_examples(
            data.train, encoder, s, max_seq_len=config.max_seq_len, policy=config.length_policy
        )
        for s in styles
    }
    if main:
        (reports / HOLDOUT_IDS).write_text(
            json.dumps({"held_out_ids": list(data.held_out_ids)}, indent=1) + "\n", encoding="utf-8"
        )
        (reports / "length_policy.json").write_text(
            json.dumps({s: r.as_dict() for s, (_, r) in encoded.items()}, indent=2, ensure_ascii=False)
            + "\n",
            encoding="utf-8",
        )

    longest = longest_validation_input(data, encoder, styles, config.val_max_new_tokens)
    base = load_training_base(backend, resolved, config, device, longest_input=longest)
    outcomes = []
    for member in run.members:
        if resume and (output / member.name).exists():
            logger.info("member %s: already exported; kept (--resume)", member.name)
            continue
        examples, length_report = encoded[member.prompt_style]
        log_path = reports / f"{member.name}.{TRAIN_LOG}"
        checkpoints = reports / CHECKPOINTS / member.name
        if main:
            if resume:
                from training.sft import last_checkpoint

                kept = last_checkpoint(checkpoints)
                trim_log(log_path, int(kept.name.split("-")[1]) if kept else 0)
            else:
                log_path.unlink(missing_ok=True)
                shutil.rmtree(checkpoints, ignore_errors=True)
        started = time.perf_counter()
        model, adapter = base.attach(member)
        evaluate = None
        if data.validation:
            validator = Validator(
                model,
                base.tokenizer,
                adapter,
                data.validation,
                prompt_style=member.prompt_style,
                batch_size=config.val_batch_size,
                max_new_tokens=config.val_max_new_tokens,
            )

            def evaluate(validator: Validator = validator) -> tuple[float, float]:
                scores = validator()
                return scores.exact_match, scores.f1

        logger.info(
            "member %s: %d examples, %s prompt, r=%d, lr=%g",
            member.name,
            len(examples),
            member.prompt_style,
            member.r,
            member.learning_rate,
        )
        log = JsonlLog(log_path if main else None)
        if config.trainer == "sft":
            from training.sft import fused_head_for, train_member_sft

            result = train_member_sft(
                model,
                examples,
                member,
                config,
                tokenizer=base.tokenizer,
                device=device,
                bf16=base.bf16,
                checkpoints=checkpoints,
                resume=resume,
                evaluate=evaluate,
                eval_mode=base.eval_mode,
                train_mode=base.train_mode,
                log=log,
                fused_head=fused_head_for(backend, device),
            )
        else:
            result = train_member(
                model,
                examples,
                member,
                config,
                pad_id=base.tokenizer.pad_token_id,
                device=device,
                bf16=base.bf16,
                evaluate=evaluate,
                eval_mode=base.eval_mode,
                train_mode=base.train_mode,
                log=log,
            )
        facts = training_facts(
            run,
            member,
            data,
            length_report,
            result,
            backend=backend,
            device=device,
            quantization=base.quantization,
            bf16=base.bf16,
            attention=base.attention(),
            max_seq_length=base.max_seq_length,
            seconds=time.perf_counter() - started,
        )
        manifest = AdapterManifest(
            name=member.name,
            base_model=resolved.key,
            base_fingerprint=resolved.fingerprint,
            prompt_style=member.prompt_style,
            weight=member.weight,
            training=facts,
        )
        folder = output / member.name
        if main:
            folder = write_adapter_folder(
                model,
                adapter,
                output,
                manifest,
                resolved,
                save_dtype=config.save_dtype,
                overwrite=config.overwrite,
                extra_files={TRAIN_LOG: log_path},
            )
            shutil.rmtree(checkpoints, ignore_errors=True)  # exported: nothing left to resume
        base.detach(adapter)
        best = result.best
        logger.info(
            "member %s: %s %s (best F1 %s at epoch %s, step %s of %s)",
            member.name,
            "saved" if main else "trained (the first process saves it to)",
            folder,
            best.f1 if best else None,
            best.epoch if best else None,
            best.step if best else None,
            result.steps,
        )
        outcomes.append(MemberOutcome(member.name, folder, result))
    summary = {
        "recipe": run.source,
        "overrides": list(run.overrides),
        "backend": backend,
        "device": device,
        "base": {"key": resolved.key, "fingerprint": resolved.fingerprint},
        "members": {
            o.name: {
                "folder": str(o.folder),
                "best": asdict(o.result.best) if o.result.best else None,
                "tokens_per_second": round(o.result.tokens_per_second, 1),
                "skipped_steps": o.result.skipped_steps,
            }
            for o in outcomes
        },
    }
    if main:
        (reports / "run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return outcomes


def trim_log(path: Path, step: int) -> None:
    """Keep a member's train log up to `step` (a resumed run logs the steps after its checkpoint again)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def training_facts(
    run: RunConfig,
    member: MemberConfig,
    data: TrainingData,
    lengths: LengthReport,
    result: TrainResult,
    *,
    backend: str,
    device: str,
    quantization: str,
    bf16: bool,
    attention: dict[str, Any],
    max_seq_length: int,
    seconds: float,
) -> dict[str, Any]:
    """The manifest's `training` object: everything needed to know how this adapter was made."""
    best = result.best
    assert best is not None
    return {
        "recipe": {"path": run.source, "overrides": list(run.overrides)},
        "member": asdict(member),
        "train": asdict(run.train),
        "data": data.describe(),
        "length_policy": lengths.as_dict(),
        "steps": result.steps,
        "max_epochs": round(result.epochs, 4),
        "best_step": best.step,
        "epochs_trained": best.epoch,
        "final_loss": round(result.losses[-1], 5) if result.losses else None,
        "validation": {
            "questions": len(data.validation),
            "metric": "korquad",
            "decoding": {"strategy": "greedy", "max_new_tokens": run.train.val_max_new_tokens},
            "best_exact_match": best.exact_match,
            "best_f1": best.f1,
            "baseline_f1": next((p.f1 for p in result.curve if p.step == 0), None),
            "curve": [asdict(p) for p in result.curve],
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {"python": platform.python_version(), **software_versions(backend)},
        "backend": backend,
        "device": device,
        "quantization": quantization,
        "precision": "bf16" if bf16 else "fp32",
        "attention": attention,
        "max_seq_length": max_seq_length,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "skipped_steps": result.skipped_steps,
        "nonfinite_steps": [asdict(n) for n in result.nonfinite[:MAX_NONFINITE_IN_MANIFEST]],
        "train_seconds": round(result.train_seconds, 1),
        "eval_seconds": round(result.eval_seconds, 1),
        "wall_seconds": round(seconds, 1),
        "peak_gpu_memory_bytes": result.peak_memory_bytes,
    }
