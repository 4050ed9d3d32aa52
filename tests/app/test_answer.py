"""POST /answer on the real service object (tiny random model, 3 random LoRA adapters)."""

from fastapi.testclient import TestClient

CONTEXT = (
    "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다. 사업비는 35억 원이다."
)
QUESTION = "서울시가 새로 설치하는 대여소는 몇 개인가?"


def ask(client: TestClient, **body):
    return client.post("/answer", json={"context": CONTEXT, "question": QUESTION, **body})


def test_default_plan_is_adapters_x_prompts_x_beams(client):
    response = ask(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["answer"], str)
    # 3 adapters x 2 default prompts x 3 beam outputs
    assert body["n_candidates"] == 18
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["candidates"] is None and body["adapter_agreement"] is None


def test_explain_gives_provenance_for_every_candidate(client):
    body = ask(client, explain=True).json()
    candidates = body["candidates"]
    assert len(candidates) == 18
    plan = {(c["adapter"], c["prompt"], c["beam_rank"]) for c in candidates}
    assert plan == {
        (a, p, r) for a in ("alpha", "beta", "gamma") for p in ("zero-shot", "principled") for r in range(3)
    }
    assert set(body["adapter_agreement"]) == {"alpha", "beta", "gamma"}
    for c in candidates:
        if c["grounded"]:
            assert c["text"] in CONTEXT  # grounding snaps to an exact span
        assert isinstance(c["score"], float)
    winners = [c for c in candidates if c["cluster"] == 0]
    assert len(winners) == body["support"]


def test_request_chooses_members_prompts_and_decoding(client):
    body = ask(
        client,
        adapters=["alpha", "base"],
        prompts=["few-shot"],
        decoding={"strategy": "greedy", "max_new_tokens": 4},
        explain=True,
    ).json()
    assert body["n_candidates"] == 2
    assert {c["adapter"] for c in body["candidates"]} == {"alpha", "base"}
    assert {c["prompt"] for c in body["candidates"]} == {"few-shot"}


def test_sampling_with_a_seed_is_reproducible(client):
    decoding = {"strategy": "sample", "num_return_sequences": 2, "top_k": 20, "top_p": 0.9, "seed": 7}
    first = ask(client, adapters=["beta"], decoding=decoding, explain=True).json()
    second = ask(client, adapters=["beta"], decoding=decoding, explain=True).json()
    assert first["n_candidates"] == 4  # 1 adapter x 2 prompts x 2 samples
    assert [c["raw"] for c in first["candidates"]] == [c["raw"] for c in second["candidates"]]


def test_adapters_route_lists_served_adapters(client):
    body = client.get("/adapters").json()
    assert [a["name"] for a in body["adapters"]] == ["alpha", "beta", "gamma"]
    assert all(a["prompt_style"] == "zero-shot" for a in body["adapters"])


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["adapters"] == ["alpha", "beta", "gamma"]


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"/answer", "/adapters", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "422" in spec["paths"]["/answer"]["post"]["responses"]
