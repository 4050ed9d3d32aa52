"""A server with max_resident_adapters: pinned adapters are the default ensemble, others load when named."""

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.service import QAService
from app.settings import ServiceSettings

Q = {"context": "세종대왕은 1443년에 훈민정음을 창제하였다.", "question": "누가 창제했나?"}


def test_pins_are_the_default_and_named_adapters_come_and_go(tiny_settings: ServiceSettings) -> None:
    settings = tiny_settings.model_copy(update={"max_resident_adapters": 2, "pinned_adapters": ("alpha",)})
    with TestClient(build_app(settings)) as client:
        body = {**Q, "explain": True, "decoding": {"strategy": "greedy"}}
        default = client.post("/answer", json=body).json()
        assert {c["adapter"] for c in default["candidates"]} == {"alpha"}
        generator = client.app.state.service.engine().generator
        for name in ("beta", "gamma", "beta"):
            r = client.post("/answer", json={**body, "adapters": [name, "alpha"]})
            assert r.status_code == 200, r.text
            assert set(generator.resident_adapters) == {name, "alpha"}
        r = client.post("/answer", json={**body, "adapters": ["alpha", "beta", "gamma"]})
        assert r.status_code == 422
        assert r.json()["error_type"] == "limit_exceeded" and r.json()["detail"] == {"field": "adapters"}
        assert client.get("/adapters").json()["adapters"][1]["name"] == "beta"  # served, though not resident


def test_a_capacity_below_the_default_ensemble_needs_pins(tiny_settings: ServiceSettings) -> None:
    service = QAService(tiny_settings.model_copy(update={"max_resident_adapters": 2}))
    with pytest.raises(ValueError, match="pin the default ensemble"):
        service.load()
