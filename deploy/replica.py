"""`QAModel`: the Ray Serve deployment whose replicas each hold the base model once and answer questions.

A replica is the single-process service's model half: one `QAService` (so one `Engine`: the base loaded once,
4-bit NF4 on CUDA), the same admission control (`app.admission`: slots, queue, deadline), the same checks and
the same pipeline. What differs is adapters: a replica starts with the base alone and loads an adapter set
when Serve routes one to it (`@serve.multiplexed`, keyed by the multiplexed model id the ingress sets from
the request's adapters, see `deploy.adapter_sets`); Serve then sends that set's later requests to the
replicas that hold it and evicts the least recently used set past `max_adapter_sets`. Every method answers a
`Reply` (status and body as the single-process app gives them); no HTTP here, no routing, no jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ray import serve

from app.adapter_admin import adapter_out
from app.admission import Admission
from app.batch import result as batch_result
from app.batch.input import ReceivedBatch
from app.schemas import AdaptersResponse, AnswerRequest, ReadyResponse
from app.service import BASE_MEMBER, QAService, UnknownMemberError
from app.settings import ServiceSettings
from deploy.adapter_sets import AdapterHolds, AdapterSetLease, adapter_set_names
from deploy.reply import Reply, error_reply
from engine import EngineConfig
from engine.builder import default_ensemble
from ensemble.batch import BatchOptions, BatchResult
from ensemble.datasets import QAExample
from ensemble.plan import Member
from models.adapters.registry import AdapterRegistry


class ReplicaService(QAService):
    """A `QAService` whose adapters come and go with the adapter sets routed to its replica.

    The base loads without adapters; the adapters folder is read once (manifests checked, as at a
    single-process start) into `catalog`, the adapters this replica may load. The default ensemble is the
    catalog in name order (cut to `default_members` as the engine cuts it), the order the single-process
    service serves it in, so both answer alike; a
    name outside the catalog is refused as the single-process service refuses an adapter it does not serve.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(settings)
        self.catalog = AdapterRegistry()

    def engine_config(self) -> EngineConfig:
        return dataclasses.replace(super().engine_config(), preload_adapters=False)

    def load(self) -> None:
        super().load()
        engine = self.engine()
        if engine.config.adapters_dir is not None:
            self.catalog = AdapterRegistry.from_dir(
                engine.config.adapters_dir,
                base_key=engine.resolved.key,
                base_fingerprint=engine.resolved.fingerprint,
            )

    def default_adapters(self) -> list[str]:
        names = default_ensemble(self.catalog.names(), self.catalog, self.engine().config.default_members)
        return names or [BASE_MEMBER]

    def _members(self, names: list[str] | None) -> list[Member] | None:
        wanted = self.default_adapters() if names is None else names
        for name in dict.fromkeys(wanted):
            if name != BASE_MEMBER and name not in self.catalog:
                raise UnknownMemberError(name, [BASE_MEMBER, *self.catalog.names()])
        return super()._members(wanted)


# max_ongoing_requests: past it Serve sends a set's requests to another replica (which loads the set too);
# small spreads a hot adapter set over replicas, large keeps sets on fewer replicas. The rest waits in the
# ingress (max_queued_requests, then 429). The Serve config sets these per cluster.
@serve.deployment(name="QAModel", max_ongoing_requests=4, ray_actor_options={"num_cpus": 1})
class QAModel:
    """One model replica. `settings`: `ServiceSettings` fields (env `QA_*` on the node fills the rest)."""

    def __init__(self, settings: Mapping[str, Any], max_adapter_sets: int = 4) -> None:
        self.service = ReplicaService(ServiceSettings(**{**settings, "load_in_background": False}))
        self.service.load()  # in the constructor: Serve routes nothing here before the model is loaded
        engine = self.service.engine()
        self.holds = AdapterHolds(
            load=engine.load_adapter, unload=engine.unload_adapter, available=self.service.catalog.names()
        )
        s = self.service.settings
        self.admission = Admission(s.max_concurrent_requests, s.max_queue, s.request_timeout_s)
        self.replica_id: str = serve.get_replica_context().replica_id.unique_id

        async def load_adapter_set(set_id: str) -> AdapterSetLease:
            names = adapter_set_names(set_id, self.service.default_adapters())
            return await asyncio.to_thread(AdapterSetLease, self.holds, set_id, names)

        # Wired here, not as a decorated method, so the number of sets kept is an application argument.
        self._adapter_set = serve.multiplexed(max_num_models_per_replica=max_adapter_sets)(load_adapter_set)

    @asynccontextmanager
    async def _holding_adapter_set(self) -> AsyncIterator[None]:
        """The request's adapter set loaded (Serve's multiplexer) and held until the request ends."""
        lease = await self._adapter_set(serve.get_multiplexed_model_id())
        # Usually no load at all; it keeps the adapters even if the set is evicted while this request runs.
        held = await asyncio.to_thread(self.holds.hold, lease.names)
        try:
            yield
        finally:
            await asyncio.to_thread(self.holds.release, held)

    async def answer(self, request: AnswerRequest) -> Reply:
        """`POST /answer`: the same checks in the same order as `app.routes.answer`, then the pipeline."""
        service = self.service
        try:
            await asyncio.to_thread(service.check_lengths, request.context, request.question)
            async with self._holding_adapter_set():
                plan = await asyncio.to_thread(
                    service.resolve, request.adapters, request.prompts, request.decoding
                )
                response = await self.admission.run(functools.partial(service.answer, request, plan))
        except Exception as exc:  # noqa: BLE001 - every error becomes its HTTP reply, as app.errors maps it
            return await error_reply(exc, path="/answer", replica=self.replica_id)
        return Reply(200, response.model_dump(mode="json"), self.replica_id)

    async def submit_batch(self, received: ReceivedBatch) -> Reply:
        """`POST /batch`: prepared (every row checked) here; answered here when small, else handed back."""
        service = self.service
        try:
            async with self._holding_adapter_set():
                batch = await asyncio.to_thread(received.prepare, service)
                if len(batch.examples) > service.settings.batch_sync_max_rows:
                    return Reply(202, None, self.replica_id, prepared=batch)
                work = functools.partial(batch_result.run, service, batch)
                result = await self.admission.run(work)
        except Exception as exc:  # noqa: BLE001 - as in answer
            return await error_reply(exc, path="/batch", replica=self.replica_id)
        return Reply(200, result.model_dump(mode="json"), self.replica_id)

    async def run_part(
        self, examples: Sequence[QAExample], options: BatchOptions, lengths: Sequence[int] | None = None
    ) -> tuple[str, BatchResult]:
        """One part of a batch job (whole chunks, see `ensemble.batch.split_parts`, cut by the part's
        `lengths` as the whole was), with this replica's id.

        Rows fail alone inside `run_batch`; anything else raises to the job, which then fails, as a
        single-process job does.
        """
        async with self._holding_adapter_set():
            result = await asyncio.to_thread(
                functools.partial(self.service.run_batch, list(examples), options, lengths=lengths)
            )
        return self.replica_id, result

    async def ready(self) -> ReadyResponse:
        service = self.service
        return ReadyResponse(
            status=service.status,
            model=service.settings.model,
            device=service.device,
            adapters=service.catalog.names(),
            detail=f"replica {self.replica_id}; adapters loaded here: {self.holds.loaded() or 'none'}",
        )

    async def adapters(self) -> AdaptersResponse:
        """The adapters this deployment serves (the catalog), whether or not this replica holds them now."""
        catalog = [adapter_out(spec) for spec in self.service.catalog]
        return AdaptersResponse(base_model=self.service.settings.model, adapters=catalog)
