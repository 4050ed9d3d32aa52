"""Settings: which adapters a server serves when QA_ADAPTERS_DIR is not set; QA_DECODER reaches the model."""

from pathlib import Path

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
