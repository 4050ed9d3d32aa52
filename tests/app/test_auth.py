"""API key: every route but /healthz and /readyz needs it; one 401 for every way of getting it wrong."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings

KEY = "s3cret-key-0123456789"
ANSWER = {
    "context": "회의는 3시에 열린다.",
    "question": "회의는 몇 시에?",
    "decoding": {"strategy": "greedy"},
}


@pytest.fixture(scope="module")
def keyed(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[TestClient]:
    settings = tiny_settings.model_copy(
        update={"adapters_dir": None, "api_key": KEY, "jobs_dir": tmp_path_factory.mktemp("jobs")}
    )
    with TestClient(build_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"X-API-Key": ""},
        {"X-API-Key": "wrong"},
        {"X-Api-Key": KEY.upper()},
    ],
    ids=["none", "wrong-bearer", "longer", "shorter", "basic", "no-scheme", "empty", "wrong-header", "case"],
)
def test_missing_or_wrong_keys_get_the_same_401(keyed, headers):
    for method, path in (("POST", "/answer"), ("GET", "/adapters"), ("GET", "/batch/x"), ("GET", "/nope")):
        response = keyed.request(method, path, headers=headers, json=ANSWER)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "error": "unauthorized: send the API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            "error_type": "unauthorized",
            "detail": None,
        }


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, {"X-API-Key": KEY}],
    ids=["bearer", "lowercase", "x-api-key"],
)
def test_the_right_key_in_either_header_is_accepted(keyed, headers):
    assert keyed.post("/answer", json=ANSWER, headers=headers).status_code == 200
    assert keyed.get("/adapters", headers=headers).status_code == 200


def test_probes_stay_open(keyed):
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200


def test_docs_and_spec_need_the_key_and_declare_it(keyed):
    assert keyed.get("/docs").status_code == 401
    assert keyed.get("/openapi.json").status_code == 401
    spec = keyed.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in spec["paths"]["/answer"]["post"]["responses"]
    assert "security" in spec["paths"]["/answer"]["post"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert keyed.get("/docs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_unauthenticated_bodies_are_never_read(keyed):
    # 401 comes first, even for a body far past the size limit.
    response = keyed.post("/answer", content=b"x" * 3_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 401


def test_key_file(tiny_settings: ServiceSettings, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "api_key_file": key_file,
            "load_in_background": True,
            "jobs_dir": tmp_path,
        }
    )
    with TestClient(build_app(settings)) as client:
        assert client.get("/adapters").status_code == 401
        assert client.get("/openapi.json", headers={"X-API-Key": "from-a-file"}).status_code == 200


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_key_refuses_to_start(tiny_settings: ServiceSettings, tmp_path, content):
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(ValueError, match="empty"):
        build_app(tiny_settings.model_copy(update={"api_key_file": key_file}))
    with pytest.raises(ValueError, match="cannot read"):
        build_app(tiny_settings.model_copy(update={"api_key_file": tmp_path / "missing"}))


def test_no_key_means_open(client):
    assert client.get("/adapters").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})
