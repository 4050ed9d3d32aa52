"""Settings: which adapters a server serves when QA_ADAPTERS_DIR is not set, the default plan per device;
QA_DECODER and QA_DECODE_CACHE_MB reach the model."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from app.service import QAService
from app.settings import EMBEDDED_ADAPTERS, ServiceSettings
from engine.builder import default_ensemble
from models.adapters.registry import read_manifest
from models.base.loading import LoadConfig
from models.base.sources import DEFAULT_MODEL, get_source

SHIPPED_BUDGET_BYTES = 32_000_000
"""Every shipped adapter together (each device call carries the tracked tree)."""


def test_the_embedded_adapters_go_with_their_own_base(tmp_path: Path):
    assert DEFAULT_MODEL == "qwen2.5-coder-1.5b" == ServiceSettings().model
    assert ServiceSettings().resolved_adapters_dir() == EMBEDDED_ADAPTERS / DEFAULT_MODEL
    # Another base gets no set (no other base has one), nor do folders, hub ids or the tiny model.
    for model in ("qwen2.5-coder-0.5b", "tiny-random", str(tmp_path), "Qwen/Qwen2.5-1.5B", "../adapters"):
        assert ServiceSettings(model=model).resolved_adapters_dir() is None, model
    assert ServiceSettings(model="tiny-random", adapters_dir=tmp_path).resolved_adapters_dir() == tmp_path


def test_the_shipped_set_is_the_1_5b_members_within_the_size_budget():
    folder = EMBEDDED_ADAPTERS / DEFAULT_MODEL
    members = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert members == ["q15-pr-s2", "q15-zs-nef-s3", "q15-zs-s1"]
    fingerprint = get_source(DEFAULT_MODEL).gguf_sha256
    for name in members:
        manifest = read_manifest(folder / name)
        assert (manifest.base_model, manifest.base_fingerprint) == (DEFAULT_MODEL, fingerprint)
        validation = manifest.training["validation"]
        assert validation["best_f1"] > validation["baseline_f1"] + 10  # trained well past the base
        config = json.loads((folder / name / "adapter_config.json").read_text("utf-8"))
        assert config["r"] == 4
    weights = [p.stat().st_size for p in EMBEDDED_ADAPTERS.rglob("*") if p.is_file()]
    assert sum(weights) <= SHIPPED_BUDGET_BYTES
    # Only the default base has a set: the 0.5B adapters are retired.
    assert [p.name for p in EMBEDDED_ADAPTERS.iterdir() if p.is_dir()] == [DEFAULT_MODEL]


@pytest.mark.parametrize(
    ("device", "prompts", "strategy", "beams", "members"),
    [("cpu", ("zero-shot",), "greedy", 1, 1), ("cuda", ("zero-shot", "principled"), "beam", 3, None)],
)
def test_qa_serve_picks_the_default_plan_of_its_device(
    monkeypatch, device, prompts, strategy, beams, members
):
    monkeypatch.setattr(LoadConfig, "resolved_device", lambda self: device)
    config = QAService(ServiceSettings()).engine_config()
    assert config.default_prompts == prompts and config.default_members == members
    assert (config.default_decoding.strategy, config.default_decoding.num_beams) == (strategy, beams)
    # Whatever an operator sets wins over the device's default, one setting at a time.
    settings = ServiceSettings(default_prompts=("few-shot",), default_strategy="beam", default_members=2)
    config = QAService(settings).engine_config()
    assert config.default_prompts == ("few-shot",) and config.default_members == 2
    assert (config.default_decoding.strategy, config.default_decoding.num_beams) == ("beam", 3)
    settings = ServiceSettings(default_num_beams=5)
    assert QAService(settings).engine_config().default_decoding.num_beams == (5 if strategy == "beam" else 1)


def test_the_default_ensemble_keeps_the_members_best_on_held_out_data():
    f1 = {"a": 70.0, "b": 81.5, "c": 79.0, "d": None}

    def spec(name: str) -> SimpleNamespace:
        validation = {} if f1[name] is None else {"best_f1": f1[name]}
        return SimpleNamespace(manifest=SimpleNamespace(training={"validation": validation}))

    registry = SimpleNamespace(get=spec)
    names = ["a", "b", "c", "d"]
    assert default_ensemble(names, registry, 1) == ["b"]
    assert default_ensemble(names, registry, 2) == ["b", "c"]  # in served order
    assert default_ensemble(names, registry, 4) == names == default_ensemble(names, registry, None)


def test_qa_decoder_reaches_the_generator(tiny_settings: ServiceSettings, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import build_app

    monkeypatch.setenv("QA_DECODER", "loop")
    assert ServiceSettings().decoder == "loop"
    settings = tiny_settings.model_copy(update={"decoder": "loop"})
    with TestClient(build_app(settings)) as client:
        answer = client.post(
            "/answer", json={"context": "회의는 3시에 열린다.", "question": "회의는 몇 시에?"}
        )
        assert answer.status_code == 200 and answer.json()["n_candidates"] > 0
        assert client.app.state.service._engine.generator.decoder == "loop"


def test_qa_lora_kernel_reaches_the_stacked_lora(tiny_settings: ServiceSettings, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import build_app

    assert ServiceSettings().lora_kernel is True
    monkeypatch.setenv("QA_LORA_KERNEL", "false")
    assert ServiceSettings().lora_kernel is False
    for value in (False, True):
        with TestClient(build_app(tiny_settings.model_copy(update={"lora_kernel": value}))) as client:
            assert client.app.state.service.wait_ready(timeout=60)
            assert client.app.state.service._engine.generator._stacked.rows.kernel is value


def test_qa_attention_kernel_reaches_the_decode_loop(tiny_settings: ServiceSettings, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import build_app

    assert ServiceSettings().attention_kernel is True
    monkeypatch.setenv("QA_ATTENTION_KERNEL", "false")
    assert ServiceSettings().attention_kernel is False
    for value in (False, True):
        settings = tiny_settings.model_copy(update={"attention_kernel": value, "decoder": "loop"})
        with TestClient(build_app(settings)) as client:
            assert client.app.state.service.wait_ready(timeout=60)
            assert client.app.state.service._engine.generator._loop.attention_kernel is value


def test_qa_decode_cache_mb_bounds_the_decode_loops_shapes(
    tiny_settings: ServiceSettings, monkeypatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import build_app
    from models.decode.loop import MIN_CACHE_BYTES

    monkeypatch.setenv("QA_DECODE_CACHE_MB", "64")
    assert ServiceSettings().decode_cache_mb == 64
    monkeypatch.setenv("QA_DECODE_CACHE_MB", "0")
    with pytest.raises(ValidationError, match="decode_cache_mb"):
        ServiceSettings()
    for value, expected in ((64, 64 << 20), (None, MIN_CACHE_BYTES)):  # unset on the CPU: the 4 GiB floor
        settings = tiny_settings.model_copy(update={"decoder": "loop", "decode_cache_mb": value})
        with TestClient(build_app(settings)) as client:
            assert client.app.state.service.wait_ready(timeout=60)
            assert client.app.state.service._engine.generator._loop.cache_bytes == expected
