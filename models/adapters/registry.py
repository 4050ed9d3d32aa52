"""The adapters this server may use: validated LoRA folders, each with a `qa_adapter.json` manifest.

An adapter folder holds peft's `adapter_config.json` and `adapter_model.safetensors` (pickled `.bin` weights
are never accepted) plus our manifest, which pins the base model it was trained on and the prompt style it
expects.
The registry is built from a directory and looked up by name: clients never pass paths. At run time an
adapter can be added by name (`find_adapter_folder` resolves a name to a folder strictly inside the adapters
folder, refusing links out of it) and removed again. It does not load weights (see `generator`) and does
not know the prompt texts (see `ensemble.prompts`).
"""

import json
import re
import threading
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bounded_json
from models.adapters.config import ADAPTER_CONFIG, LoraConfig, is_finite_number, read_lora_config
from models.errors import AdapterBaseMismatchError, AdapterError, AdapterNotFoundError, UnknownAdapterError

MANIFEST_NAME = "qa_adapter.json"
FORMAT_VERSION = 1
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = frozenset({"base", "__base__"})
"""Clients say "base" for the base model alone (and peft says "__base__"): no adapter may take those names."""


def _check_name(name: str, what: str) -> None:
    if not ADAPTER_NAME.match(name):
        raise AdapterError(f"{what} {name!r} must match {ADAPTER_NAME.pattern}")
    if name.lower() in RESERVED_NAMES:
        raise AdapterError(f"{what} {name!r} is reserved for the base model; rename the adapter")


_STR_FIELDS = ("name", "base_model", "base_fingerprint", "prompt_style", "created")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AdapterManifest:
    """What `qa_adapter.json` says about an adapter."""

    name: str
    """Equals the folder name; what clients use to pick the adapter."""
    base_model: str
    """The key of the base model it was trained on (`qwen2.5-coder-0.5b`, ...)."""
    base_fingerprint: str
    """The base's fingerprint (see `sources.ResolvedModel`); another base is refused."""
    prompt_style: str
    """The prompt style it was trained with (a name from `ensemble.prompts.PROMPT_STYLES`)."""
    weight: float = 1.0
    """Its default vote weight in the ensemble."""
    training: dict[str, Any] = field(default_factory=dict)
    """Free-form facts about the training run (data, steps, scores), for people and the API's listing."""
    created: str = field(default_factory=_now)
    """ISO 8601 time the adapter was made."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise AdapterError(f"manifest field {name!r} must be a non-empty string, got {value!r}")
        _check_name(self.name, "manifest field 'name'")
        weight = self.weight
        if not is_finite_number(weight) or weight <= 0:
            raise AdapterError(f"manifest field 'weight' must be a positive number, got {weight!r}")
        if not isinstance(self.training, dict):
            raise AdapterError(
                f"manifest field 'training' must be an object, got {type(self.training).__name__}"
            )
        if self.format_version != FORMAT_VERSION:
            raise AdapterError(
                f"manifest field 'format_version' is {self.format_version!r}; only {FORMAT_VERSION} is read"
            )

    @classmethod
    def from_json(cls, text: str, *, source: str = MANIFEST_NAME) -> "AdapterManifest":
        """Parse and validate; errors name `source` (the file, as clients may see it: never a path) and the
        offending field."""
        try:
            data = bounded_json.loads(text, max_chars=1 << 20)
        except ValueError as e:  # not JSON, or past bounded_json's bounds
            raise AdapterError(f"{source}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise AdapterError(f"{source}: expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        missing = sorted({"name", "base_model", "base_fingerprint", "prompt_style"} - set(data))
        if unknown or missing:
            parts = [
                f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                f"missing field(s) {', '.join(missing)}" if missing else "",
            ]
            raise AdapterError(f"{source}: " + "; ".join(p for p in parts if p))
        try:
            return cls(**data)
        except AdapterError as e:
            raise AdapterError(f"{source}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def write_manifest(folder: Path, manifest: AdapterManifest) -> Path:
    """Write `qa_adapter.json` into an adapter folder (training and tests call this)."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def read_manifest(folder: Path) -> AdapterManifest:
    """The folder's manifest; errors name the adapter (the folder's name), never the server's path."""
    path = Path(folder) / MANIFEST_NAME
    where = f"adapter {Path(folder).name!r}"
    if not path.is_file():
        raise AdapterError(f"{where} has no {MANIFEST_NAME}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterError(f"{where}: {MANIFEST_NAME} is not readable UTF-8 text") from e
    return AdapterManifest.from_json(text, source=f"{where}: {MANIFEST_NAME}")


@dataclass(frozen=True)
class AdapterSpec:
    """A validated adapter: its name, its folder (server-side only), its manifest and its LoRA config."""

    name: str
    path: Path
    manifest: AdapterManifest
    lora: LoraConfig | None = None
    """Its `adapter_config.json` as `check_adapter_folder` read it (None: read when it is loaded)."""


def find_adapter_folder(root: Path, name: str) -> Path:
    """The folder of adapter `name` directly inside `root`, with every file the server reads inside `root`.

    The name must match `ADAPTER_NAME` (no separators, no leading dot), and the folder and its files are
    resolved through any links: one that leads out of `root` is refused (`AdapterError`), so a client naming
    an adapter can never make the server read elsewhere. A missing folder is `AdapterNotFoundError`.
    """
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        raise AdapterError(f"adapter name {name!r} must match {ADAPTER_NAME.pattern}")
    if name.lower() in RESERVED_NAMES:
        raise AdapterError(f"adapter name {name!r} is reserved for the base model")
    real_root = Path(root).resolve()
    folder = Path(root) / name
    if not folder.is_dir():
        raise AdapterNotFoundError(f"adapter {name!r}: no such folder in the adapters folder")
    for path in (folder, *(folder / f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST_NAME))):
        if path.exists() and not path.resolve().is_relative_to(real_root):
            raise AdapterError(f"adapter {name!r}: {path.name} leads out of the adapters folder; refused")
    return folder


def check_adapter_folder(
    folder: Path, *, base_key: str, base_fingerprint: str, prompt_styles: Collection[str] | None = None
) -> AdapterSpec:
    """Validate one adapter folder against the served base; raise `AdapterError` naming what is wrong.

    The one check of a folder, at start (`AdapterRegistry.from_dir`) and at run time alike: the weights file
    is safetensors, the LoRA config is one serving runs (`models.adapters.config`), the manifest is valid, for
    this base and (given `prompt_styles`, the registry of `ensemble.prompts`) names a known prompt style.
    The weights themselves are checked against the config and the model when they are loaded
    (`models.adapters.weights`). Messages name the adapter, never a path.
    """
    name = folder.name
    _check_name(name, "adapter folder name")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = (
            f" (found {', '.join(pickles)}: pickled weights are not loaded; re-save with safetensors)"
            if pickles
            else ""
        )
        raise AdapterError(f"adapter {name!r} has no {ADAPTER_WEIGHTS}{hint}")
    lora = read_lora_config(folder, name)
    manifest = read_manifest(folder)
    if manifest.name != name:
        raise AdapterError(f"adapter folder {name!r} has a manifest named {manifest.name!r}; they must match")
    if manifest.base_model != base_key or manifest.base_fingerprint != base_fingerprint:
        raise AdapterBaseMismatchError(
            f"adapter {name!r} was trained on base {manifest.base_model!r} "
            f"(fingerprint {manifest.base_fingerprint[:12]}), but the served base is {base_key!r} "
            f"(fingerprint {base_fingerprint[:12]})"
        )
    if prompt_styles is not None and manifest.prompt_style not in prompt_styles:
        raise AdapterError(
            f"adapter {name!r}: {MANIFEST_NAME} field 'prompt_style' is {manifest.prompt_style!r}; known: "
            f"{', '.join(sorted(prompt_styles))}"
        )
    return AdapterSpec(name=name, path=folder, manifest=manifest, lora=lora)


class AdapterRegistry:
    """Adapters by name; `add` and `remove` change it at run time (thread-safe)."""

    def __init__(self, specs: dict[str, AdapterSpec] | None = None) -> None:
        self._specs = dict(specs or {})
        self._lock = threading.Lock()

    @classmethod
    def from_dir(
        cls,
        root: Path,
        *,
        base_key: str,
        base_fingerprint: str,
        prompt_styles: Collection[str] | None = None,
    ) -> "AdapterRegistry":
        """Every subfolder of `root` (hidden ones skipped) must be a valid adapter for this base."""
        root = Path(root)
        if not root.is_dir():
            raise AdapterError(f"adapters directory {root} does not exist")
        specs = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            spec = check_adapter_folder(
                folder, base_key=base_key, base_fingerprint=base_fingerprint, prompt_styles=prompt_styles
            )
            specs[spec.name] = spec
        return cls(specs)

    def add(self, spec: AdapterSpec) -> None:
        """Register a validated adapter (idempotent for the same folder; another folder is refused)."""
        with self._lock:
            known = self._specs.get(spec.name)
            if known is not None and known.path != spec.path:
                raise AdapterError(f"adapter {spec.name!r} is already registered from another folder")
            self._specs[spec.name] = spec

    def remove(self, name: str) -> None:
        """Forget an adapter (nothing happens when it is not registered)."""
        with self._lock:
            self._specs.pop(name, None)

    def get(self, name: str) -> AdapterSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownAdapterError(f"unknown adapter {name!r}; known adapters: {known}") from None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[AdapterSpec]:
        with self._lock:
            specs = dict(self._specs)
        return iter(specs[n] for n in sorted(specs))

    def __len__(self) -> int:
        return len(self._specs)
