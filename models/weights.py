"""Check an adapter's `adapter_model.safetensors` against the served base BEFORE any of it reaches the model.

peft injects an adapter's layers into the shared model first and reads its weights second, so a truncated
file, NaN weights or a LoRA made for other layer sizes would fail half-way and leave a broken adapter inside
the model every request uses. `check_lora_weights` reads the whole file with safetensors (never pickle),
checks every tensor is finite and every LoRA matrix fits the base layer it targets, and raises `AdapterError`
naming the problem; only then does the generator hand the folder to peft. It loads nothing into the model.
"""

from pathlib import Path

import torch

from models.errors import AdapterError

_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_PEFT_PREFIX = "base_model.model."


def check_lora_weights(path: Path, model: torch.nn.Module, *, name: str) -> int:
    """Validate the safetensors file at `path` for `model` (a base model or a peft model wrapping one).

    Returns the number of tensors read. Raises `AdapterError` for an unreadable or corrupt file, a tensor
    that is not finite, a LoRA matrix for a module the base lacks, or one whose shape does not fit it.
    """
    from safetensors import SafetensorError, safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    count, lora = 0, 0
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            for key in weights.keys():
                tensor = weights.get_tensor(key)
                count += 1
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise AdapterError(f"adapter {name!r}: tensor {key} holds NaN or infinite values")
                if key.endswith(_LORA_SUFFIXES):
                    lora += 1
                    _check_shape(base, key, tuple(tensor.shape), name)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise AdapterError(
            f"adapter {name!r}: {path.name} is not a readable safetensors file ({exc})"
        ) from exc
    if lora == 0:
        raise AdapterError(f"adapter {name!r}: {path.name} holds no LoRA weights")
    return count


def _check_shape(base: torch.nn.Module, key: str, shape: tuple[int, ...], name: str) -> None:
    module_path = key.removeprefix(_PEFT_PREFIX)
    for suffix in _LORA_SUFFIXES:
        module_path = module_path.removesuffix(suffix)
    try:
        module = base.get_submodule(module_path)
    except AttributeError:
        raise AdapterError(
            f"adapter {name!r}: tensor {key} targets {module_path}, which the base model does not have"
        ) from None
    module = getattr(module, "base_layer", module)  # already wrapped by another adapter's LoRA layer
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_features is None or out_features is None or len(shape) != 2:
        return  # not a linear layer (e.g. an embedding): peft checks those itself
    expected = shape[1] == in_features if key.endswith(".lora_A.weight") else shape[0] == out_features
    if not expected:
        raise AdapterError(
            f"adapter {name!r}: tensor {key} has shape {list(shape)}, which does not fit {module_path} "
            f"({in_features} -> {out_features}); was it trained on another base?"
        )
