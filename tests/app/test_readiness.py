"""Readiness: /healthz /readyz and /answer say 503 until the model is loaded, or if it failed."""

import threading

from fastapi.testclient import TestClient

import app.service
from app.main import build_app
from app.settings import ServiceSettings

BODY = {"context": "회의는 3시에 열린다.", "question": "회의는 몇 시에?"}


def test_loading_then_ready(tiny_settings: ServiceSettings, monkeypatch):
    release = threading.Event()
    real_build = app.service.build_engine

    def slow_build(config):
        release.wait(30)
        return real_build(config)

    monkeypatch.setattr(app.service, "build_engine", slow_build)
    settings = tiny_settings.model_copy(update={"load_in_background": True})
    with TestClient(build_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        answer = client.post("/answer", json=BODY)
        assert answer.status_code == 503
        assert answer.json()["error_type"] == "not_ready"
        assert answer.headers["retry-after"] == "5"
        release.set()
        assert client.app.state.service.wait_ready(timeout=60)
        assert client.get("/readyz").status_code == 200
        assert client.post("/answer", json=BODY).status_code == 200


def test_failed_load_is_reported(tiny_settings: ServiceSettings, tmp_path):
    settings = tiny_settings.model_copy(
        update={"model": str(tmp_path / "no-such-model"), "adapters_dir": None, "load_in_background": True}
    )
    with TestClient(build_app(settings)) as client:
        client.app.state.service.wait_ready(timeout=60)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert "no-such-model" in ready.json()["detail"]
        answer = client.post("/answer", json=BODY)
        assert answer.status_code == 503 and "failed" in answer.json()["error"]
        assert client.get("/healthz").status_code == 200  # the process itself is alive


def test_adapters_for_another_base_fail_the_start(
    tiny_settings: ServiceSettings, tiny_adapters_dir, tmp_path
):
    import shutil

    from models.adapters.registry import read_manifest, write_manifest

    foreign = tmp_path / "adapters"
    shutil.copytree(tiny_adapters_dir / "alpha", foreign / "alpha")
    manifest = read_manifest(foreign / "alpha")
    write_manifest(foreign / "alpha", type(manifest)(**{**manifest.__dict__, "base_fingerprint": "0" * 64}))
    settings = tiny_settings.model_copy(update={"adapters_dir": foreign, "load_in_background": True})
    with TestClient(build_app(settings)) as client:
        client.app.state.service.wait_ready(timeout=60)
        ready = client.get("/readyz").json()
        assert ready["status"] == "failed"
        assert "alpha" in ready["detail"]
