"""Settings: which adapters a server serves when QA_ADAPTERS_DIR is not set; QA_DECODER and QA_DECODE_CACHE_MB
reach the model."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import EMBEDDED_ADAPTERS_BASE, REPO_ROOT, ServiceSettings


def test_the_embedded_adapters_go_with_the_default_base_only(tmp_path: Path):
    assert (REPO_ROOT / "adapters").is_dir()
    assert ServiceSettings(model=EMBEDDED_ADAPTERS_BASE).resolved_adapters_dir() == REPO_ROOT / "adapters"
    assert ServiceSettings(model="tiny-random").resolved_adapters_dir() is None
    assert ServiceSettings(model="tiny-random", adapters_dir=tmp_path).resolved_adapters_dir() == tmp_path


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
    from models.decode_loop import MIN_CACHE_BYTES

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
