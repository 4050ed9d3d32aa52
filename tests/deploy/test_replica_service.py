"""A model replica's service in this process (no Ray cluster): it starts with the base alone, refuses names
outside its adapters folder as the single-process service does, and once an adapter set is held it answers
exactly as the single-process service with every adapter preloaded; released, the adapters are unloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve")

from app.schemas import AnswerRequest  # noqa: E402 - after the skip
from app.service import QAService, UnknownMemberError  # noqa: E402
from app.settings import ServiceSettings  # noqa: E402
from deploy.adapter_sets import AdapterHolds, adapter_set_id, adapter_set_names  # noqa: E402
from deploy.replica import ReplicaService  # noqa: E402

CONTEXT = "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다."


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return ServiceSettings(
        model=str(tiny_model_dir),
        adapters_dir=tiny_adapters_dir,
        cache_dir=tmp_path_factory.mktemp("cache"),
        load_in_background=False,
        default_max_new_tokens=5,
    )


def test_replica_service_loads_adapter_sets_on_demand_and_answers_alike(
    settings: ServiceSettings, comparable: Callable[[Any], Any]
) -> None:
    replica = ReplicaService(settings)
    replica.load()
    engine = replica.engine()
    assert engine.adapter_names == [] and replica.catalog.names() == ["alpha", "beta", "gamma"]
    with pytest.raises(UnknownMemberError, match="served: base, alpha, beta, gamma"):
        replica.resolve(["nope"], None, None)

    single = QAService(settings)
    single.load()
    holds = AdapterHolds(engine.load_adapter, engine.unload_adapter, replica.catalog.names())
    for adapters in (None, ["gamma", "base"], ["base"]):
        held = holds.hold(adapter_set_names(adapter_set_id(adapters), replica.catalog.names()))
        request = AnswerRequest(
            context=CONTEXT, question="대여소는 몇 개인가?", adapters=adapters, explain=True
        )
        got, want = replica.answer(request), single.answer(request)
        assert comparable(got.model_dump()) == comparable(want.model_dump()), adapters
        holds.release(held)
        assert engine.adapter_names == []
