"""Write one trained member as an adapter folder the server accepts: peft config, safetensors, manifest.

The LoRA weights are saved in `train.save_dtype` (bf16 by default: half of fp32, and the server computes in
bf16 on CUDA anyway); peft casts them back to the adapter's dtype when it loads them. The folder is written
under a hidden temporary name and renamed into place, then checked with the same validation the server runs
(`models.adapters.registry.check_adapter_folder`), so a bad adapter fails here and not at serving time.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models.adapters.registry import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterManifest,
    check_adapter_folder,
    write_manifest,
)
from models.base.sources import ResolvedModel

REQUIRED_TRAINING_KEYS = (
    "recipe",
    "member",
    "train",
    "data",
    "length_policy",
    "steps",
    "epochs_trained",
    "best_step",
    "validation",
    "date",
    "software",
    "backend",
    "attention",
    "tokens_per_second",
    "peak_gpu_memory_bytes",
)
"""Keys every manifest's `training` object has (tests check them)."""


def save_adapter(model: Any, adapter: str, folder: Path, *, base_key: str, save_dtype: str) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` for the adapter named `adapter` on `model`."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    dtype = getattr(torch, save_dtype)
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config[adapter])
    config.inference_mode = True
    config.base_model_name_or_path = base_key
    config.save_pretrained(str(folder))
    assert (folder / ADAPTER_CONFIG).is_file()


def write_adapter_folder(
    model: Any,
    adapter: str,
    output: Path,
    manifest: AdapterManifest,
    resolved: ResolvedModel,
    *,
    save_dtype: str,
    overwrite: bool,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write `<output>/<manifest.name>/` atomically and validate it as the server would; return its path."""
    output.mkdir(parents=True, exist_ok=True)
    dest = output / manifest.name
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; set train.overwrite=true to replace it")
    staged = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.tmp-", dir=output))
    try:
        staged.chmod(0o755)
        save_adapter(model, adapter, staged, base_key=resolved.key, save_dtype=save_dtype)
        write_manifest(staged, manifest)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staged / name)
        for path in staged.iterdir():
            path.chmod(0o644)  # readable by a server running as another user
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    check_adapter_folder(dest, base_key=resolved.key, base_fingerprint=resolved.fingerprint)
    return dest
