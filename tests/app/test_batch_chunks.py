"""POST /batch on the CPU (tiny random model, 3 random adapters): chunks cut by token length across the whole
batch, every row answered exactly as the same question asked alone through /answer, in input order, and the
greedy pass of a beam batch decoded on the beam pass's prefill."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings
from ensemble.chunks import CHUNK_LIMITS, cut_chunks

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BEAMS = {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4}


def rows() -> list[dict]:
    """Twelve questions of mixed lengths, in no length order: the fixture's four, each also with its
    context repeated twice and cut to a third (our own text)."""
    lines = (FIXTURES / "news_qa.jsonl").read_text("utf-8").splitlines()
    out = []
    for row in (json.loads(line) for line in lines if line):
        context = row["context"]
        for tag, text in (
            ("x2", f"{context} {context}"),
            ("full", context),
            ("third", context[: len(context) // 3]),
        ):
            out.append({**row, "id": f"{row['id']}-{tag}", "context": text})
    return out


@pytest.fixture(scope="module")
def cpu_client(tiny_settings: ServiceSettings) -> Iterator[TestClient]:
    """Every row of a 12-row batch answered inline; chunks by the CPU's limits, a token budget small enough
    to cut the tiny tokenizer's long prompts apart."""
    settings = tiny_settings.model_copy(update={"batch_sync_max_rows": 20, "batch_chunk_tokens": 1200})
    with TestClient(build_app(settings)) as client:
        yield client


def test_the_cpu_cuts_chunks_by_padded_tokens_and_margin() -> None:
    cpu = CHUNK_LIMITS["cpu"]
    assert cpu.tokens is not None and cpu.margin is not None and cpu.rows <= 16  # QA_MAX_BATCH_SIZE


@pytest.mark.parametrize(
    "decoding", [BEAMS, {"strategy": "greedy", "max_new_tokens": 4}], ids=["beam", "greedy"]
)
def test_every_row_answers_as_it_would_alone_in_input_order(cpu_client: TestClient, decoding: dict) -> None:
    batch_rows = rows()
    body = {"prompts": ["zero-shot", "principled"], "decoding": decoding}
    service = cpu_client.app.state.service
    pipeline, loop = service.engine().pipeline, service.engine().generator._loop
    calls, reused = pipeline.stats.generate_calls, loop.reused
    response = cpu_client.post("/batch", json={"rows": batch_rows, **body, "explain": True})
    assert response.status_code == 200, response.text
    batch = response.json()
    assert [row["id"] for row in batch["rows"]] == [row["id"] for row in batch_rows]
    assert batch["failed_rows"] == 0

    # the chunks the service cut: by tokens of context and question, across the whole batch
    generator = service.engine().generator
    lengths = [
        generator.count_tokens(r["context"]) + generator.count_tokens(r["question"]) for r in batch_rows
    ]
    chunks = cut_chunks(lengths, service.chunk_limits())
    assert 1 < len(chunks) < len(batch_rows)
    greedy = decoding["strategy"] == "greedy"
    passes = 1 if greedy else 2  # with gold answers, strategies: beams add a greedy pass, greedy does not
    assert pipeline.stats.generate_calls - calls == passes * len(chunks)
    assert batch["passes"] == {"greedy:*": "main" if greedy else "greedy", "*": "main"}
    # each chunk's greedy pass decoded on its beam pass's prefill: no second prefill
    assert loop.reused - reused == (0 if greedy else len(chunks))

    for got, row in zip(batch["rows"], batch_rows, strict=True):
        alone = cpu_client.post(
            "/answer", json={"context": row["context"], "question": row["question"], **body, "explain": True}
        ).json()
        assert got["answer"] == alone["answer"], row["id"]
        assert [c["raw"] for c in got["candidates"]] == [c["raw"] for c in alone["candidates"]], row["id"]
        assert [c["score"] for c in got["candidates"]] == pytest.approx(
            [c["score"] for c in alone["candidates"]], abs=1e-4
        )
    if not greedy:  # the greedy strategies are the greedy answers of each member and prompt, asked alone
        row = batch_rows[0]
        member = service.engine().adapter_names[0]
        alone = cpu_client.post(
            "/answer",
            json={
                "context": row["context"],
                "question": row["question"],
                "adapters": [member],
                "prompts": ["principled"],
                "decoding": {"strategy": "greedy", "max_new_tokens": 4},
            },
        ).json()
        assert batch["rows"][0]["strategies"][f"greedy:{member}:principled"] == alone["answer"]
