"""A whole `qa-train` run on the tiny model: members differ, manifests are complete, the server accepts the
adapters for this base and refuses them for another."""

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.main import build_app
from app.settings import ServiceSettings
from models.adapters.registry import ADAPTER_WEIGHTS, AdapterRegistry, read_manifest
from models.base.folders import read_base_info
from models.base.tiny import build_tiny_model
from models.errors import AdapterBaseMismatchError
from training.data import file_sha256
from training.export import REQUIRED_TRAINING_KEYS
from training.runner import CHECKPOINTS, HOLDOUT_IDS, REPORT_DIR, TRAIN_LOG


def test_every_member_is_an_adapter_folder_and_reports_are_hidden(trained_dir: Path, members):
    assert sorted(p.name for p in trained_dir.iterdir() if not p.name.startswith(".")) == sorted(members)
    for name in members:
        assert (trained_dir / name / TRAIN_LOG).is_file()
    reports = trained_dir / REPORT_DIR
    for report in ("lengths.md", "lengths.json", "lengths.png", "length_policy.json", "run.json"):
        assert (reports / report).is_file(), report
    # The held-out questions (one of the fixture's two articles): never trained on, what qa-eval --ids reads.
    held_out = json.loads((reports / HOLDOUT_IDS).read_text("utf-8"))["held_out_ids"]
    assert held_out and set(held_out) < {"news-001", "news-002", "news-003", "news-004"}


def test_members_differ(trained_dir: Path, members):
    a, b = (load_file(trained_dir / name / ADAPTER_WEIGHTS) for name in members)
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert all(not torch.equal(a[k], b[k]) for k in a)
    # Saved in bf16 (half the bytes of fp32), and every B moved away from its zero initialisation.
    assert all(t.dtype == torch.bfloat16 for t in a.values())
    assert all(t.abs().sum() > 0 for k, t in a.items() if "lora_B" in k)


def test_manifest_is_complete(trained_dir: Path, tiny_model_dir: Path, members, news_fixture):
    base = read_base_info(tiny_model_dir)
    for name, (seed, style) in members.items():
        manifest = read_manifest(trained_dir / name)
        assert (manifest.name, manifest.prompt_style) == (name, style)
        assert (manifest.base_model, manifest.base_fingerprint) == (base.key, base.fingerprint)
        facts = manifest.training
        assert set(REQUIRED_TRAINING_KEYS) <= set(facts)
        member = facts["member"]
        assert (member["seed"], member["r"], member["alpha"], member["learning_rate"]) == (seed, 4, 8, 5e-3)
        assert member["target_modules"] == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        assert facts["train"]["max_seq_len"] == 1024 and facts["train"]["epochs"] == 1
        data = facts["data"]
        assert data["files"] == [
            {"path": str(news_fixture), "sha256": file_sha256(news_fixture), "questions": 4}
        ]
        assert data["train_questions"] + data["holdout"]["questions"] == 4
        assert len(data["holdout"]["ids_sha256"]) == 64
        lengths = facts["length_policy"]
        assert lengths["kept"] + lengths["shortened"] + lengths["dropped"] == lengths["total"]
        validation = facts["validation"]
        curve = validation["curve"]
        assert [p["step"] for p in curve] == [0, 1]  # the baseline, then every half epoch (1 step)
        # Step 0 is the base model's baseline; max keeps the first of equal scores, as training does.
        best = max(curve[1:], key=lambda p: p["f1"])
        assert validation["baseline_f1"] == curve[0]["f1"]
        assert (facts["best_step"], facts["epochs_trained"], validation["best_f1"]) == (
            best["step"],
            best["epoch"],
            best["f1"],
        )
        assert facts["steps"] == 1 and facts["max_epochs"] == 1
        software = {"torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate"}
        assert software <= set(facts["software"])
        # Trained through TRL's SFTTrainer (the default), padded: `auto` batching as resolved on the CPU (no
        # variable-length attention), recorded as what ran; its checkpoints went with the export.
        assert (facts["train"]["trainer"], facts["train"]["batching"]) == ("sft", "padded")
        assert not (trained_dir / REPORT_DIR / CHECKPOINTS / name).exists()
        assert facts["backend"] == "peft" and facts["tokens_per_second"] > 0
        # The attention used in training (cuDNN SDPA is a CUDA matter: None on the CPU), no skipped step.
        assert facts["attention"] == {"implementation": "sdpa", "cudnn_sdpa": None}
        assert facts["train"]["cudnn_sdpa"] is False and facts["train"]["attn_implementation"] == "sdpa"
        assert facts["skipped_steps"] == [] and facts["nonfinite_steps"] == []
        assert facts["date"][:2] == "20"
        log = [json.loads(line) for line in (trained_dir / name / TRAIN_LOG).read_text().splitlines()]
        assert [r["step"] for r in log if r["event"] == "eval"] == [0, 1]
        assert all(r["loss"] > 0 for r in log if r["event"] == "step")


def test_the_server_serves_a_trained_adapter(
    trained_dir: Path, tiny_model_dir: Path, tmp_path: Path, members
):
    base = read_base_info(tiny_model_dir)
    registry = AdapterRegistry.from_dir(trained_dir, base_key=base.key, base_fingerprint=base.fingerprint)
    assert registry.names() == sorted(members)
    settings = ServiceSettings(
        model=str(tiny_model_dir),
        adapters_dir=trained_dir,
        cache_dir=tmp_path,
        load_in_background=False,
        default_max_new_tokens=4,
    )
    with TestClient(build_app(settings)) as client:
        listed = client.get("/adapters").json()["adapters"]
        assert sorted(a["name"] for a in listed) == sorted(members)
        assert {a["name"]: a["prompt_style"] for a in listed} == {n: s for n, (_, s) in members.items()}
        response = client.post(
            "/answer",
            json={
                "context": "해담시는 강변에 수변공원을 개방했다.",
                "question": "무엇을 개방했나?",
                "adapters": ["zs-s2"],
                "prompts": ["zero-shot"],
                "decoding": {"strategy": "greedy"},
            },
        )
        assert response.status_code == 200, response.text


def test_a_server_with_another_base_refuses_the_adapters(trained_dir: Path, tmp_path: Path):
    other = build_tiny_model(tmp_path / "tiny-random", seed=1)  # same key, other weights
    info = read_base_info(other)
    with pytest.raises(AdapterBaseMismatchError, match="fingerprint"):
        AdapterRegistry.from_dir(trained_dir, base_key=info.key, base_fingerprint=info.fingerprint)
    settings = ServiceSettings(
        model=str(other), adapters_dir=trained_dir, cache_dir=tmp_path, load_in_background=True
    )
    with TestClient(build_app(settings)) as client:
        assert client.app.state.service.wait_ready(timeout=60) is False
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "AdapterBaseMismatchError" in ready.json()["detail"]


def test_a_member_trained_alone_equals_the_same_member_trained_after_another(
    trained_dir: Path, make_recipe, tmp_path: Path
):
    # One base serves every member in turn: the second member must not depend on the first.
    from training.cli import main

    assert main(["--config", str(make_recipe(tmp_path)), "--only", "zs-s2"]) == 0
    alone = load_file(tmp_path / "adapters" / "zs-s2" / ADAPTER_WEIGHTS)
    after = load_file(trained_dir / "zs-s2" / ADAPTER_WEIGHTS)
    assert alone.keys() == after.keys()
    assert all(torch.equal(alone[k], after[k]) for k in alone)


def test_the_loop_refuses_resume_and_data_parallelism(make_recipe, tmp_path: Path, monkeypatch):
    """Both need the SFTTrainer: the loop keeps no checkpoints and trains on one device (under accelerate
    launch every process would train the whole member alone)."""
    from training.config import ConfigError, load_recipe
    from training.runner import run_training

    run = load_recipe(make_recipe(tmp_path, trainer="loop"))
    with pytest.raises(ConfigError, match='^train.trainer: --resume needs trainer = "sft"'):
        run_training(run, device="cpu", backend="peft", resume=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^train.trainer: data parallelism \(WORLD_SIZE > 1\) needs"):
        run_training(run, device="cpu", backend="peft")
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())
