"""An adapter's `adapter_config.json` (peft's), read and validated once: `read_lora_config` -> `LoraConfig`.

The one reading of it that serving trusts, for both LoRA backends and for adapters loaded at start and at run
time alike (the registry calls it from `check_adapter_folder`): plain LoRA only (no DoRA, bias, rank or alpha
patterns, fan-in-fan-out, `modules_to_save`, `layers_to_transform`), a positive integer rank, a finite
`lora_alpha` whose scaling stays within `MAX_SCALING`, and target modules given by name or one regular
expression. That the weights agree with it (their rank, their modules) and fit the base is checked in
`models.adapters.weights`, which needs torch; this module does not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import bounded_json
from models.errors import AdapterError

ADAPTER_CONFIG = "adapter_config.json"
MAX_RANK = 1024
MAX_SCALING = 1_000.0
"""Largest `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA) accepted; trained adapters use about 0.5 to 16, and
far larger values only push the logits out of range (scores that are not finite)."""
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA bias",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "fan_in_fan_out": "fan_in_fan_out",
    "modules_to_save": "modules_to_save",
    "layers_to_transform": "layers_to_transform",
    "layers_pattern": "layers_pattern",
    "use_qalora": "QALoRA",
    "trainable_token_indices": "trainable_token_indices",
    "target_parameters": "target_parameters",
    "layer_replication": "layer_replication",
    "alora_invocation_tokens": "aLoRA",
}


@dataclass(frozen=True)
class LoraConfig:
    """What serving uses of an adapter's LoRA settings."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...] | str
    """Module names (the last part of a path, e.g. `q_proj`), or peft's one regular expression over paths."""

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    def targets(self, module_path: str) -> bool:
        """Does the config name the module at `module_path` (`model.layers.0.self_attn.q_proj`)?"""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module_path) is not None
        return module_path.rsplit(".", 1)[-1] in self.target_modules


def read_lora_config(folder: Path, name: str) -> LoraConfig:
    """Read and validate `<folder>/adapter_config.json`; `AdapterError` naming the field (never the path)."""
    try:
        data = bounded_json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"), max_chars=1 << 20)
    except FileNotFoundError:
        raise AdapterError(f"adapter {name!r} has no {ADAPTER_CONFIG}") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON, or past bounded_json's bounds
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} is not valid JSON ({_reason(e)})") from e
    return parse_lora_config(data, name)


def parse_lora_config(data: object, name: str) -> LoraConfig:
    where = f"adapter {name!r}: {ADAPTER_CONFIG}"
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise AdapterError(f"{where} must describe a LoRA adapter (peft_type LORA)")
    found = [label for key, label in _UNSUPPORTED.items() if data.get(key) not in (None, False, {}, [], "")]
    if data.get("bias", "none") != "none":
        found.append(f"bias {data.get('bias')!r}")
    if found:
        raise AdapterError(f"{where}: {', '.join(found)} cannot be served (plain LoRA only)")
    rank, alpha = data.get("r"), data.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise AdapterError(f"{where}: field 'r' must be an integer from 1 to {MAX_RANK}, got {rank!r}")
    if not is_finite_number(alpha) or alpha <= 0:
        raise AdapterError(f"{where}: field 'lora_alpha' must be a positive finite number, got {alpha!r}")
    rslora = data.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise AdapterError(f"{where}: field 'use_rslora' must be true or false, got {rslora!r}")
    config = LoraConfig(rank, float(alpha), rslora, _targets(data.get("target_modules"), where))
    if config.scaling > MAX_SCALING:
        raise AdapterError(
            f"{where}: lora_alpha {alpha!r} with r {rank} scales LoRA by {config.scaling:.3g}, more than "
            f"{MAX_SCALING:g}"
        )
    return config


def is_finite_number(value: object) -> bool:
    """A JSON number (not a boolean) that is finite as a float: an integer of 400 digits is not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _targets(value: object, where: str) -> tuple[str, ...] | str:
    if isinstance(value, str) and value:
        try:
            re.compile(value)
        except re.error as e:
            raise AdapterError(f"{where}: field 'target_modules' is not a regular expression ({e})") from e
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise AdapterError(f"{where}: field 'target_modules' must name modules (a list of names or a regex)")


def _reason(exc: Exception) -> str:
    # The message of a JSON error names no file; an OSError's strerror names none either.
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
