"""The training loop on the tiny model: schedule, loss going down, prompt-loss weighting, NEFTune, and the
checkpoint chosen by validation F1 (not by loss)."""

import dataclasses

import pytest
import torch

from ensemble.datasets import load_examples
from training.backends import PeftBase
from training.config import MemberConfig, TrainConfig
from training.data import PromptEncoder, encode_examples
from training.trainer import NEFTune, Schedule, batch_loss, collate, lr_factor, step_weight, train_member

MEMBER = MemberConfig(name="m", seed=0, r=4, alpha=8, dropout=0.0, learning_rate=1e-2)


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
    )
    return TrainConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def encoded(news_fixture, tiny_tokenizer):
    examples = load_examples(news_fixture)
    # Contexts cut to a few words around the answer: short sequences keep these loop tests fast.
    return encode_examples(
        examples, PromptEncoder(tiny_tokenizer), "zero-shot", max_seq_len=280, policy="window"
    )[0]


def _base(tiny_model_dir, config: TrainConfig) -> PeftBase:
    from models.base.sources import resolve_model

    resolved = resolve_model(str(tiny_model_dir), tiny_model_dir.parent)
    return PeftBase(resolved, config, "cpu")


def test_schedule_counts_fractional_epochs_and_validates_on_time():
    schedule = Schedule.plan(100, _config(epochs=0.6, eval_every=0.05, batch_size=4, grad_accum=2))
    assert schedule.examples_per_step == 8 and schedule.total_steps == 8  # ceil(60 / 8)
    assert schedule.eval_steps == (1, 2, 3, 4, 5, 6, 7, 8)
    assert schedule.epoch_at(8) == pytest.approx(0.64)
    schedule = Schedule.plan(1000, _config(epochs=0.6, eval_every=0.05, batch_size=8, grad_accum=2))
    assert schedule.total_steps == 38 and len(schedule.eval_steps) == 12
    assert schedule.eval_steps[0] == 3 and schedule.eval_steps[-1] == 38  # 0.05 epoch = 3.1 steps
    assert Schedule.plan(1000, _config(max_steps=5)).total_steps == 5


def test_learning_rate_warms_up_then_decays_to_zero():
    schedule = Schedule.plan(100, _config(epochs=1, batch_size=1, warmup_ratio=0.1))
    factors = [lr_factor(s, schedule, "cosine") for s in range(schedule.total_steps)]
    assert factors[0] < factors[9] < factors[10] == 1.0 and factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(50, schedule, "constant") == 1.0
    assert lr_factor(99, schedule, "linear") == pytest.approx(1 / 90)


def test_a_few_steps_lower_the_loss(tiny_model_dir, encoded):
    config = _config(max_steps=12)
    base = _base(tiny_model_dir, config)
    model, _ = base.attach(MEMBER)
    result = train_member(
        model, encoded, MEMBER, config, pad_id=base.tokenizer.pad_token_id, device="cpu", bf16=False
    )
    assert len(result.losses) == 12 and result.best.step == 12 and result.best.f1 is None
    assert sum(result.losses[-3:]) / 3 < 0.8 * sum(result.losses[:3]) / 3
    assert result.train_tokens > 0 and result.tokens_per_second > 0


def test_prompt_loss_weight_adds_the_prompt_tokens(tiny_model_dir, encoded, tiny_tokenizer):
    base = _base(tiny_model_dir, _config())
    model, _ = base.attach(MEMBER)
    model.eval()
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        answer_only = collate(encoded[:2], pad, 0.0, "cpu")
        objective, answer_sum = batch_loss(model, answer_only, 0.0)
        # The model's own loss (mean over answer tokens, un-averaged here) equals the per-token path with w=0.
        per_token, per_token_answer = batch_loss(model, answer_only, 1e-9)
        assert objective.item() == pytest.approx(per_token_answer.item(), rel=1e-4)
        assert objective.item() == pytest.approx(answer_sum.item())
        weighted = collate(encoded[:2], pad, 0.05, "cpu")
        objective_w, answer_w = batch_loss(model, weighted, 0.05)
    assert answer_w.item() == pytest.approx(answer_sum.item(), rel=1e-4)
    assert objective_w.item() > answer_w.item()
    prompt_tokens = sum(e.prompt_len - 1 for e in encoded[:2])  # the first token is never predicted
    assert step_weight(weighted) == pytest.approx(answer_only.target_tokens + 0.05 * prompt_tokens)
    assert (answer_only.labels != -100).sum() == answer_only.target_tokens


def test_neftune_adds_noise_only_while_training(tiny_model_dir):
    base = _base(tiny_model_dir, _config())
    model, _ = base.attach(MEMBER)
    ids = torch.tensor([[5, 6, 7, 8]])
    embed = model.get_input_embeddings()
    clean = embed(ids)
    with NEFTune(model, 5.0):
        model.train()
        noisy = embed(ids)
        model.eval()
        assert torch.equal(embed(ids), clean)
    scale = 5.0 / (4 * clean.shape[-1]) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= scale + 1e-6
    assert torch.equal(embed(ids), clean)  # the hook is gone


def test_the_checkpoint_with_the_best_validation_f1_is_kept(tiny_model_dir, encoded):
    config = _config(
        max_steps=6, eval_every=0.5, eval_at_start=True
    )  # 4 examples, 2 per step: eval every step
    base = _base(tiny_model_dir, config)
    model, _ = base.attach(MEMBER)
    scripted = iter([90.0, 10.0, 30.0, 60.0, 60.0, 40.0, 20.0])  # step 0 is a baseline, never kept
    snapshots = {}

    def evaluate():
        step = len(snapshots)
        snapshots[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return 0.0, next(scripted)

    result = train_member(
        model,
        encoded,
        MEMBER,
        config,
        pad_id=base.tokenizer.pad_token_id,
        device="cpu",
        bf16=False,
        evaluate=evaluate,
    )
    assert [p.step for p in result.curve] == [0, 1, 2, 3, 4, 5, 6]
    assert (result.best.step, result.best.f1, result.best.epoch) == (3, 60.0, 1.5)  # the first of the tie
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, snapshots[3][name])
            assert not torch.equal(param, snapshots[6][name]) or "lora_A" in name


def test_qlora_on_the_cpu_trains_after_generating(tiny_model_dir, encoded, news_fixture):
    # 4-bit NF4 through the project's one bnb config, validation (generation) first, then training: the
    # path that fails without backends._keep_cpu_4bit_layout on CPUs with AVX512-BF16.
    pytest.importorskip("bitsandbytes")
    from training.validation import Validator

    config = _config(quantization="4bit", max_steps=2, gradient_checkpointing=True, eval_at_start=True)
    base = _base(tiny_model_dir, config)
    model, adapter = base.attach(MEMBER)
    assert getattr(model, "is_loaded_in_4bit", False)
    validator = Validator(
        model,
        base.tokenizer,
        adapter,
        load_examples(news_fixture)[:2],
        prompt_style="zero-shot",
        batch_size=2,
        max_new_tokens=3,
    )

    def evaluate():
        scores = validator()
        return scores.exact_match, scores.f1

    result = train_member(
        model,
        encoded,
        MEMBER,
        config,
        pad_id=base.tokenizer.pad_token_id,
        device="cpu",
        bf16=False,
        evaluate=evaluate,
    )
    assert [p.step for p in result.curve] == [0, 1, 2] and len(result.losses) == 2


def test_members_on_one_base_get_fresh_adapters(tiny_model_dir):
    base = _base(tiny_model_dir, _config())
    first, name = base.attach(MEMBER)
    trainable = {n for n, p in first.named_parameters() if p.requires_grad}
    assert trainable and all(".m." in n for n in trainable)
    base.detach(name)
    second, name = base.attach(dataclasses.replace(MEMBER, name="n", seed=1))
    assert list(second.peft_config) == ["n"]
    assert {n for n, p in second.named_parameters() if p.requires_grad} == {
        n.replace(".m.", ".n.") for n in trainable
    }


def test_a_non_finite_step_is_skipped_and_the_weights_stay_finite(tiny_model_dir, encoded, monkeypatch):
    import training.trainer as trainer

    calls = {"n": 0}
    real = trainer.batch_loss

    def poisoned(model, batch, weight):
        calls["n"] += 1
        objective, answer = real(model, batch, weight)
        if calls["n"] == 2:  # the second step's loss overflows
            return objective * float("nan"), answer * float("nan")
        return objective, answer

    monkeypatch.setattr(trainer, "batch_loss", poisoned)
    config = _config(max_steps=4)
    base = _base(tiny_model_dir, config)
    model, _ = base.attach(MEMBER)
    result = train_member(
        model, encoded, MEMBER, config, pad_id=base.tokenizer.pad_token_id, device="cpu", bf16=False
    )
    assert result.skipped_steps == [2]
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(bool(torch.isfinite(p).all()) for p in lora)
    assert all(v == v for i, v in enumerate(result.losses) if i != 1)  # later steps train normally
    assert [n.forward_finite for n in result.nonfinite] == [False]  # the loss itself was NaN


def test_a_nan_entering_in_backward_is_traced_to_its_parameter(tiny_model_dir, encoded, tmp_path):
    # Like cuDNN's SDPA bug (pytorch/pytorch#196678): the forward is finite, the gradient of the last
    # layer's query projection is NaN, and the NaN spreads to every layer below it.
    import json

    from training.trainer import JsonlLog

    config = _config(max_steps=3, grad_accum=2)
    base = _base(tiny_model_dir, config)
    model, _ = base.attach(MEMBER)
    layers = [n for n, _ in model.named_modules() if n.endswith("self_attn.q_proj")]
    q_proj = model.get_submodule(layers[-1])
    calls = {"forward": 0}

    def poison(module, args, output):
        calls["forward"] += 1
        if calls["forward"] == 4:  # step 2, its second micro-batch
            output.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return output

    handle = q_proj.register_forward_hook(poison)
    log = tmp_path / "log.jsonl"
    try:
        result = train_member(
            model,
            encoded,
            MEMBER,
            config,
            pad_id=base.tokenizer.pad_token_id,
            device="cpu",
            bf16=False,
            log=JsonlLog(log),
        )
    finally:
        handle.remove()
    assert result.skipped_steps == [2]
    (found,) = result.nonfinite
    assert found.forward_finite and found.first_nonfinite_grad == f"{layers[-1]}.lora_B.m.weight"
    assert (found.step, found.micro_batch, found.micro_batches) == (2, 1, 2)
    assert found.nonfinite_grads == 2 + 14 and found.trainable == 28  # its own A and B, all of layer 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (logged,) = [r for r in records if r["event"] == "nonfinite"]
    assert logged["first_nonfinite_grad"] == found.first_nonfinite_grad and logged["step"] == 2
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def test_the_loop_runs_inside_the_attention_setting(tiny_model_dir, encoded, monkeypatch):
    import contextlib

    import training.trainer as trainer

    seen = []

    @contextlib.contextmanager
    def recording(*, cudnn, device):
        seen.append((cudnn, device))
        yield None

    monkeypatch.setattr(trainer, "attention_kernels", recording)
    config = _config(max_steps=1, cudnn_sdpa=True)
    base = _base(tiny_model_dir, config)
    model, _ = base.attach(MEMBER)
    train_member(model, encoded, MEMBER, config, pad_id=base.tokenizer.pad_token_id, device="cpu", bf16=False)
    assert seen == [(True, "cpu")]
