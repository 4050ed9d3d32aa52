"""Check an adapter's `adapter_model.safetensors` against its config and the served base BEFORE any of it
reaches the model.

peft injects an adapter's layers into the shared model first and reads its weights second, so a truncated
file, NaN weights or a LoRA made for other layer sizes would fail half-way and leave a broken adapter inside
the model every request uses; and a config that disagrees with its weights (a rank `r` other than the
matrices', target modules the base lacks) loads, then breaks every request that runs it. `check_lora_weights`
reads the whole file with safetensors (never pickle) and checks that every tensor is a finite LoRA matrix,
that each A has its B, that their rank is the config's and their module one the config targets, that every
target the config names exists in the base, that each matrix fits its base layer and that B stays finite once
scaled; it raises `AdapterError` naming the problem, and only then does the generator hand the folder to a
backend. It loads nothing into the model. The config itself is `models.adapters.config`'s.
"""

from pathlib import Path

import torch

from models.adapters.config import LoraConfig
from models.errors import AdapterError

_A, _B = ".lora_A.weight", ".lora_B.weight"
_LORA_SUFFIXES = (_A, _B)
_PEFT_PREFIX = "base_model.model."


def check_lora_weights(path: Path, model: torch.nn.Module, *, name: str, config: LoraConfig) -> int:
    """Validate the safetensors file at `path` for `config` and `model` (a base model or a peft model
    wrapping one).

    Returns the number of tensors read. Raises `AdapterError` for an unreadable or corrupt file, a tensor
    that is not finite or not a LoRA matrix, a rank other than the config's, a module the config does not
    target or the base lacks, a target the base lacks, or a matrix whose shape does not fit its layer.
    """
    from safetensors import SafetensorError, safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    count, modules = 0, {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            for key in weights.keys():
                tensor = weights.get_tensor(key)
                count += 1
                if not key.endswith(_LORA_SUFFIXES):
                    raise AdapterError(f"adapter {name!r}: tensor {key} is not a LoRA matrix (lora_A/lora_B)")
                if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                    raise AdapterError(f"adapter {name!r}: tensor {key} holds NaN or infinite values")
                module_path = _check_shape(base, key, tuple(tensor.shape), name, config)
                modules.setdefault(module_path, []).append(key)
                if key.endswith(_B) and not bool(torch.isfinite(tensor.float() * config.scaling).all()):
                    raise AdapterError(
                        f"adapter {name!r}: tensor {key} is not finite once scaled by lora_alpha / r "
                        f"({config.scaling:.3g})"
                    )
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise AdapterError(
            f"adapter {name!r}: {path.name} is not a readable safetensors file ({type(exc).__name__})"
        ) from exc
    if not modules:
        raise AdapterError(f"adapter {name!r}: {path.name} holds no LoRA weights")
    for module_path, keys in modules.items():
        if len(keys) != 2:
            raise AdapterError(f"adapter {name!r}: {module_path} needs both lora_A and lora_B, has {keys[0]}")
    _check_targets(base, config, name)
    return count


def _check_targets(base: torch.nn.Module, config: LoraConfig, name: str) -> None:
    """Every module name the config targets exists among the base's layers (a regex matches one at least)."""
    paths = [path for path, module in base.named_modules() if hasattr(module, "in_features")]
    if isinstance(config.target_modules, str):
        missing = [] if any(config.targets(p) for p in paths) else [config.target_modules]
    else:
        leaves = {path.rsplit(".", 1)[-1] for path in paths}
        missing = [target for target in config.target_modules if target not in leaves]
    if missing:
        raise AdapterError(
            f"adapter {name!r}: adapter_config.json targets {', '.join(missing)}, which the base model does "
            "not have"
        )


def _check_shape(
    base: torch.nn.Module, key: str, shape: tuple[int, ...], name: str, config: LoraConfig
) -> str:
    """The module path `key` is for, once its matrix is checked against the config and the base layer."""
    module_path = key.removeprefix(_PEFT_PREFIX)
    for suffix in _LORA_SUFFIXES:
        module_path = module_path.removesuffix(suffix)
    if not config.targets(module_path):
        raise AdapterError(
            f"adapter {name!r}: tensor {key} is for {module_path}, which adapter_config.json does not target"
        )
    rank = shape[0] if key.endswith(_A) else shape[-1]
    if len(shape) != 2 or rank != config.rank:
        raise AdapterError(
            f"adapter {name!r}: tensor {key} has shape {list(shape)}, but adapter_config.json says r "
            f"{config.rank}"
        )
    try:
        module = base.get_submodule(module_path)
    except AttributeError:
        raise AdapterError(
            f"adapter {name!r}: tensor {key} targets {module_path}, which the base model does not have"
        ) from None
    module = getattr(module, "base_layer", module)  # already wrapped by another adapter's LoRA layer
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_features is None or out_features is None:
        raise AdapterError(f"adapter {name!r}: tensor {key} targets {module_path}, not a linear layer")
    expected = shape[1] == in_features if key.endswith(_A) else shape[0] == out_features
    if not expected:
        raise AdapterError(
            f"adapter {name!r}: tensor {key} has shape {list(shape)}, which does not fit {module_path} "
            f"({in_features} -> {out_features}); was it trained on another base?"
        )
    return module_path
