"""Training with TRL's SFTTrainer (`training.sft`) on the tiny model: the answer-only labels under
padding-free and packed batches, the same loss whichever way a batch is laid out, the prompt-loss weight, a
skipped non-finite step, resume from a checkpoint, and two data-parallel processes (gloo) against one."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from ensemble.datasets import load_examples
from training.backends import PeftBase
from training.config import MemberConfig, TrainConfig
from training.data import IGNORE_INDEX, PromptEncoder, encode_examples
from training.sft import (
    BEST_FILE,
    STATE_FILE,
    MemberTrainer,
    last_checkpoint,
    make_trainer,
    noise_width,
    token_weights,
    train_member_sft,
)
from training.trainer import NEFTune

MEMBER = MemberConfig(name="m", seed=0, r=4, alpha=8, dropout=0.05, learning_rate=1e-2)
REPO = Path(__file__).resolve().parents[2]


def _config(**kw) -> TrainConfig:
    defaults = dict(
        device="cpu",
        quantization="none",
        backend="peft",
        batch_size=2,
        grad_accum=1,
        warmup_ratio=0.0,
        gradient_checkpointing=False,
        progress=False,
        eval_at_start=False,
        batching="padding_free",
    )
    return TrainConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def encoded(news_fixture, tiny_tokenizer):
    examples = load_examples(news_fixture)
    # Contexts cut around the answer (short sequences, fast steps); each example's ids are distinct.
    return encode_examples(
        examples, PromptEncoder(tiny_tokenizer), "zero-shot", max_seq_len=280, policy="window"
    )[0]


def _model(tiny_model_dir, config: TrainConfig, member: MemberConfig = MEMBER):
    from models.base.sources import resolve_model

    resolved = resolve_model(str(tiny_model_dir), tiny_model_dir.parent)
    base = PeftBase(resolved, config, "cpu")
    model, _ = base.attach(member)
    return base, model


def _train(tiny_model_dir, encoded, tmp_path, config, member=MEMBER, **kw):
    base, model = _model(tiny_model_dir, config, member)
    result = train_member_sft(
        model,
        encoded,
        member,
        config,
        tokenizer=base.tokenizer,
        device="cpu",
        bf16=False,
        checkpoints=tmp_path / "checkpoints",
        **kw,
    )
    return model, result


def _lora(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("batching", ["padding_free", "packed", "padded"])
def test_labels_are_ignored_exactly_on_the_prompt_tokens(tiny_model_dir, encoded, tmp_path, batching):
    config = _config(batching=batching, batch_size=3, max_steps=1)
    base, model = _model(tiny_model_dir, config)
    trainer, _ = make_trainer(
        model, encoded, MEMBER, config, tokenizer=base.tokenizer, device="cpu", bf16=False,
        checkpoints=tmp_path,
    )  # fmt: skip
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    if batching == "packed":
        assert len(rows) < len(encoded), "short examples share a packed row"
    batch = trainer.data_collator(rows)
    by_ids = {ex.input_ids: ex for ex in encoded}
    seen = []
    for r in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][r].tolist(), batch["labels"][r].tolist()
        if batching == "padded":
            real = int(batch["attention_mask"][r].sum())
            starts, ends = [0], [real]
            assert set(labels[real:]) <= {IGNORE_INDEX}
        else:
            assert "attention_mask" not in batch
            positions = batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(positions) if p == 0]
            ends = [*starts[1:], len(positions)]
        for start, end in zip(starts, ends, strict=True):
            ex = by_ids[tuple(ids[start:end])]  # every sequence is one example, whole
            assert labels[start:end] == ex.labels  # -100 on each prompt token, the answer ids after
            seen.append(ex.id)
    assert sorted(seen) == sorted(ex.id for ex in encoded)


def test_padding_free_steps_equal_padded_steps(tiny_model_dir, encoded, tmp_path):
    member = dataclasses.replace(MEMBER, dropout=0.0)  # dropout masks are drawn per tensor shape
    runs = {}
    for batching in ("padded", "padding_free"):
        config = _config(batching=batching, max_steps=3, grad_accum=2, batch_size=2)
        model, result = _train(tiny_model_dir, encoded, tmp_path / batching, config, member)
        runs[batching] = (result.losses, _lora(model))
    (padded, w_padded), (free, w_free) = runs["padded"], runs["padding_free"]
    assert len(padded) == 3 and padded == pytest.approx(free, abs=1e-4)
    for name, weight in w_padded.items():
        torch.testing.assert_close(w_free[name], weight, atol=1e-4, rtol=1e-4)


def test_prompt_loss_weight_counts_the_prompt_tokens(tiny_model_dir, encoded, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"input_ids": list(ex.input_ids), "labels": ex.labels} for ex in encoded[:3]]
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    free = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    answer = sum(len(ex.input_ids) - ex.prompt_len for ex in encoded[:3])
    prompt = sum(ex.prompt_len - 1 for ex in encoded[:3])  # a sequence's first token is nobody's target
    for batch in (padded, free):
        assert float(token_weights(batch, 0.25).sum()) == pytest.approx(answer + 0.25 * prompt)
    losses, member = {}, dataclasses.replace(MEMBER, dropout=0.0)
    for batching in ("padded", "padding_free"):
        config = _config(batching=batching, max_steps=2, prompt_loss_weight=0.1)
        _, result = _train(tiny_model_dir, encoded, tmp_path / batching, config, member)
        losses[batching] = result.losses
    _, answer_only = _train(tiny_model_dir, encoded, tmp_path / "zero", _config(max_steps=2))
    assert losses["padded"] == pytest.approx(losses["padding_free"], abs=1e-4)
    assert losses["padded"] != pytest.approx(answer_only.losses, abs=1e-3)


def test_a_non_finite_step_is_skipped(tiny_model_dir, encoded, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = MemberTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        calls["n"] += 1
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(MemberTrainer, "compute_loss", poisoned)
    log = tmp_path / "log.jsonl"
    from training.trainer import JsonlLog

    model, result = _train(tiny_model_dir, encoded, tmp_path, _config(max_steps=4), log=JsonlLog(log))
    assert result.skipped_steps == [2] and [n.forward_finite for n in result.nonfinite] == [False]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "nonfinite"] == [2]
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3, 4]


class StopAt(TrainerCallback):
    """Ends training after `step` (after its checkpoint is saved), as a killed run would have."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_model_dir, encoded, tmp_path):
    # 2 steps an epoch, a validation (and a checkpoint) every half epoch; dropout on: the RNG is restored too.
    config = _config(max_steps=5, eval_every=0.5, grad_accum=1)
    scores = iter(range(100))

    def evaluate():
        return 0.0, float([3, 9, 4, 1, 2][next(scores) % 5])  # best at step 2, before the stop

    model, whole = _train(tiny_model_dir, encoded, tmp_path / "whole", config, evaluate=evaluate)
    want = _lora(model)

    scores = iter(range(100))
    stopped_dir = tmp_path / "stopped"
    _, first = _train(tiny_model_dir, encoded, stopped_dir, config, evaluate=evaluate, callbacks=[StopAt(3)])
    assert len(first.losses) == 3, "stopped after step 3"
    kept = last_checkpoint(stopped_dir / "checkpoints")
    assert kept is not None and kept.name == "checkpoint-3" and (kept / BEST_FILE).is_file()
    assert json.loads((kept / STATE_FILE).read_text())["best"]["step"] == 2
    model, resumed = _train(tiny_model_dir, encoded, stopped_dir, config, evaluate=evaluate, resume=True)
    assert resumed.best is not None and whole.best is not None and resumed.best.step == whole.best.step == 2
    assert [p.step for p in resumed.curve] == [p.step for p in whole.curve] == [1, 2, 3, 4, 5]
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    got = _lora(model)
    for name, weight in want.items():  # both hold the best (step 2) weights at the end
        torch.testing.assert_close(got[name], weight, atol=1e-6, rtol=1e-6)


def _last_weights_run(make_recipe, folder: Path, processes: int, batch_size: int) -> tuple[dict, list]:
    from safetensors.torch import load_file

    recipe = make_recipe(folder, batch_size=batch_size, grad_accum=2, max_steps=3, eval_every=10.0)
    command = [
        "--config", str(recipe), "--only", "pr-s1", "--set", "members.shuffle=false",
        "--set", "members.dropout=0.0", "--log-level", "warning",
    ]  # fmt: skip
    if processes == 1:
        prefix = [sys.executable, "-m", "training.cli"]
    else:
        with socket.socket() as free:  # a port nobody listens on (torchrun's port 0 does not rendezvous)
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                  "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "training.cli"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(prefix + command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = folder / "adapters" / "pr-s1"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    log = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    return weights, [r["loss"] for r in log if r["event"] == "step"]


def test_two_gloo_processes_train_as_one(make_recipe, tmp_path):
    """`torchrun --nproc_per_node 2 -m training.cli`, one sequence a micro-batch each, against one process
    with two: the same global batches (file order), the same losses and the same adapter."""
    one, one_losses = _last_weights_run(make_recipe, tmp_path / "one", 1, 2)
    two, two_losses = _last_weights_run(make_recipe, tmp_path / "two", 2, 1)
    assert len(one_losses) == 3 and two_losses == pytest.approx(one_losses, abs=1e-4)
    assert one.keys() == two.keys()
    for name, weight in one.items():
        torch.testing.assert_close(two[name].float(), weight.float(), atol=2e-3, rtol=1e-2)


def test_a_packed_step_holds_more_sequences(tiny_model_dir, encoded, tmp_path):
    config = _config(batching="packed", batch_size=2, max_steps=1)
    base, model = _model(tiny_model_dir, config)
    trainer, watch = make_trainer(
        model, encoded, MEMBER, config, tokenizer=base.tokenizer, device="cpu", bf16=False,
        checkpoints=tmp_path,
    )  # fmt: skip
    rows = len(trainer.train_dataset)
    assert rows < len(encoded) and watch.schedule.n_examples == rows
    assert trainer.args.per_device_train_batch_size == 1


def test_neftune_adds_the_padded_batchs_noise_under_every_batching(tiny_model_dir, encoded, tmp_path):
    """transformers' hook scales by the row's width, all of a padding-free row's sequences together: ours by
    the longest sequence, the padded batch's width, so alpha means what it meant in the loop."""
    alpha, amplitudes = 5.0, {}
    for batching in ("padded", "padding_free"):
        config = _config(batching=batching, batch_size=2, max_steps=1)
        base, model = _model(tiny_model_dir, config)
        trainer, _ = make_trainer(
            model, encoded, MEMBER, config, tokenizer=base.tokenizer, device="cpu", bf16=False,
            checkpoints=tmp_path / batching,
        )  # fmt: skip
        assert trainer.args.neftune_noise_alpha is None  # no second hook of transformers' own
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        trainer.width = noise_width(batch)
        embeddings = model.get_input_embeddings()
        embeddings.train()
        with NEFTune(model, alpha, lambda t=trainer: t.width), torch.no_grad():
            noise = embeddings(batch["input_ids"]) - embeddings.weight[batch["input_ids"]]
        if batching == "padding_free":
            assert trainer.width == max(len(trainer.train_dataset[i]["input_ids"]) for i in range(2))
            assert trainer.width < batch["input_ids"].shape[1]  # the row holds both sequences
        else:
            assert trainer.width is None
        amplitudes[batching] = float(noise.abs().max())
    longest = max(len(trainer.train_dataset[i]["input_ids"]) for i in range(2))
    scale = alpha / (longest * embeddings.weight.shape[1]) ** 0.5
    for batching, amplitude in amplitudes.items():
        assert 0.95 * scale < amplitude <= scale * 1.0001, batching


def test_a_neftune_member_trains_with_one_hook_of_the_batchs_width(tiny_model_dir, encoded, tmp_path):
    member = dataclasses.replace(MEMBER, neftune_noise_alpha=5.0)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(len(model.get_input_embeddings()._forward_hooks))

    config = _config(batching="padding_free", batch_size=2, max_steps=2)
    model, result = _train(tiny_model_dir, encoded, tmp_path, config, member, callbacks=[Probe()])
    assert seen == [1, 1] and all(torch.isfinite(torch.tensor(result.losses)))
    assert not model.get_input_embeddings()._forward_hooks  # removed once the member is trained


def test_the_sfttrainer_takes_the_loops_steps(tiny_model_dir, encoded, tmp_path):
    """The same member, examples in the same order, the same schedule: TRL's trainer and the project's loop
    give the same losses and weights (what keeps a recipe's members reproducible on the new path)."""
    from training.trainer import train_member

    member = dataclasses.replace(MEMBER, dropout=0.0, shuffle=False)  # dropout masks are drawn per shape
    config = _config(batching="padded", max_steps=3, grad_accum=2, batch_size=2, warmup_ratio=0.34)
    model, sft = _train(tiny_model_dir, encoded, tmp_path, config, member)
    base, loop_model = _model(tiny_model_dir, config, member)
    loop = train_member(
        loop_model, encoded, member, config, pad_id=base.tokenizer.pad_token_id, device="cpu", bf16=False
    )
    assert len(sft.losses) == 3 and sft.losses == pytest.approx(loop.losses, abs=1e-4)
    weights = _lora(loop_model)
    for name, weight in _lora(model).items():
        torch.testing.assert_close(weight, weights[name], atol=1e-4, rtol=1e-4)
