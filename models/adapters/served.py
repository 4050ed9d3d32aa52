"""The adapters a generator serves on its one base model: which rows may name, which are on the model now, and
putting them on and taking them off.

`ServedAdapters` owns the model reference, because with peft's backend the base becomes a `PeftModel` with the
first adapter and the base again after the last. With the default stacked backend
(`models.adapters.multi_lora`) the model stays the base and the adapters go in and out of its stacks. Which
adapters stay resident (least recently used out first, pins, a capacity) is
`models.adapters.residency.AdapterResidency`'s bookkeeping; loading a served adapter that a capacity had
unloaded is done here when a row names it (`prepare`). An adapter already on a peft model passed in
(training's) can be attached by name: rows may name it, but it is not owned, so it is never unloaded. Not
thread-safe: `models.decode.generator.Generator` calls it under its lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from models.adapters.config import LoraConfig, read_lora_config
from models.adapters.multi_lora import StackedLora, read_lora
from models.adapters.registry import ADAPTER_WEIGHTS, AdapterSpec
from models.adapters.residency import AdapterResidency
from models.adapters.weights import check_lora_weights
from models.errors import AdapterError, UnknownAdapterError

logger = logging.getLogger(__name__)


class ServedAdapters:
    """Served adapters (loaded from folders, or attached), their residency on `model`, and the loading."""

    def __init__(self, model: Any, stacked: StackedLora | None, residency: AdapterResidency) -> None:
        self.model = model
        """The base, or (peft's backend, with an adapter resident) a `PeftModel` wrapping it."""
        self._stacked, self._residency = stacked, residency
        self._specs: dict[str, AdapterSpec] = {}  # served: resident, or loaded again when a row names it
        self._attached: set[str] = set()
        self.faulty: dict[str, str] = {}
        """Adapters taken out of service because their rows failed at run time (`quarantine`): name -> why,
        in words for operators (no paths). Loading one again clears it."""

    @property
    def names(self) -> list[str]:
        """Names rows may use: the loaded adapters and the attached ones."""
        return sorted(self._specs.keys() | self._attached)

    @property
    def resident(self) -> list[str]:
        """Adapters on the model now, least recently used first."""
        return self._residency.resident

    @property
    def named_per_row(self) -> bool:
        """Whether a pass names every row's adapter (an adapter is on the model, or peft wraps it)."""
        return hasattr(self.model, "peft_config") or bool(self._residency.resident)

    def attach(self, name: str) -> None:
        """Let rows name `name`, an adapter already on the peft model passed in (not owned: not unloaded)."""
        if name not in (getattr(self.model, "peft_config", None) or {}):
            raise UnknownAdapterError(f"adapter {name!r} is not attached to the model passed in")
        self._attached.add(name)

    def check(self, spec: AdapterSpec) -> None:
        """Check a new adapter's weights (readable, finite, agreeing with its config, shaped for this base)
        before it touches the model; nothing for a name already served. Safe without the lock: it reads the
        files and the shapes only."""
        if spec.name not in self._specs:
            check_lora_weights(spec.path / ADAPTER_WEIGHTS, self.model, name=spec.name, config=_config(spec))

    def load(self, spec: AdapterSpec) -> None:
        """Serve `spec` and make it resident now (idempotent by name; another folder under a served name is
        refused). With a capacity, the least recently used unpinned adapters make room."""
        if spec.name in self._specs:
            if self._specs[spec.name].path != spec.path:
                raise AdapterError(f"adapter {spec.name!r} is already loaded from another folder")
            return
        self._make_resident([spec.name], {spec.name: spec})
        self._specs[spec.name] = spec
        self.faulty.pop(spec.name, None)

    def quarantine(self, name: str, reason: str) -> None:
        """Stop serving `name`, whose rows failed at run time while other rows of the batch did not: off the
        model and out of `names` (rows may no longer name it), remembered in `faulty`."""
        self.faulty[name] = reason
        self._specs.pop(name, None)
        self._attached.discard(name)
        if name in self._residency:
            self._evict(name)

    def unload(self, name: str) -> None:
        """Stop serving a loaded adapter; the last one out unwraps peft's model again."""
        if name not in self._specs:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded")
        del self._specs[name]
        if name in self._residency:
            self._evict(name)

    def prepare(self, adapters: Sequence[str | None]) -> None:
        """Refuse names not served; make the served ones that rows name resident (`None`: the base)."""
        for name in adapters:
            if name is not None and name not in self._specs and name not in self._attached:
                raise UnknownAdapterError(
                    f"unknown adapter {name!r}; loaded: {', '.join(self.names) or 'none'}"
                )
        self._make_resident([a for a in adapters if a is not None and a in self._specs], self._specs)

    def _make_resident(self, names: Sequence[str], specs: dict[str, AdapterSpec]) -> None:
        """Load the named adapters that are not resident, first unloading what the capacity requires."""
        missing = [n for n in dict.fromkeys(names) if n not in self._residency]
        for name in self._residency.evictions_for(names):
            logger.info("adapter %s unloaded from the model to make room (least recently used)", name)
            self._evict(name)
        for name in missing:
            self._put_on(specs[name])
            self._residency.added(name)
        self._residency.touch(names)

    def _put_on(self, spec: AdapterSpec) -> None:
        if self._stacked is not None:
            self._stacked.add(read_lora(spec.path, spec.name, _config(spec)))
            return
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(spec.path), adapter_name=spec.name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(spec.path), adapter_name=spec.name, is_trainable=False
                )
        except Exception as e:  # noqa: BLE001 - peft raises many types for a bad folder
            if isinstance(self.model, PeftModel) and spec.name in self.model.peft_config:
                self.model.delete_adapter(spec.name)  # never leave a half-loaded adapter in the model
            logger.exception("adapter %s could not be loaded by peft", spec.name)
            raise AdapterError(f"adapter {spec.name!r} could not be loaded ({type(e).__name__})") from e
        self.model.eval()

    def _evict(self, name: str) -> None:
        self._residency.removed(name)
        if self._stacked is not None:
            self._stacked.remove(name)
            return
        others = [n for n in self.model.peft_config if n != name]
        if others and name in self.model.active_adapters:
            # Rows name their adapter explicitly, so which one is "active" never matters; switching first
            # only spares peft's warning about deleting the active adapter.
            self.model.set_adapter(others[0])
        self.model.delete_adapter(name)
        if not others:
            self.model = self.model.unload()
        self.model.eval()


def _config(spec: AdapterSpec) -> LoraConfig:
    """The spec's LoRA config as the registry checked it, or read now (a spec made without the registry)."""
    return spec.lora if spec.lora is not None else read_lora_config(spec.path, spec.name)
