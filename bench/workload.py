"""What the serving benchmarks run on: the base model folder, LoRA adapters, KorQuAD questions, and the facts
a result must carry (card, versions, date).

`serving_speed.py` and `http_latency.py` share this module so that both measure the same workload. It builds
things (a random-initialised base in the shape of a config, random LoRA adapters with manifests the registry
accepts) and reads the data at run time; it measures nothing and never changes the project's packages.
Run the scripts from the repository root (`python -m bench.serving_speed ...`) so `bench` is importable.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ensemble.datasets import QAExample, load_korquad
from models.adapters.registry import AdapterManifest, AdapterRegistry, AdapterSpec, write_manifest
from models.base.sources import ResolvedModel, default_cache_dir, resolve_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
"""Files copied as they are from a config folder into a random-initialised model folder (when present)."""


def default_out(name: str) -> Path:
    """`bench/results/<date>-<name>/`."""
    return ROOT / "bench" / "results" / f"{datetime.now(UTC).strftime('%Y-%m-%d')}-{name}"


def add_base_args(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    """The arguments every speed bench takes for its base and questions: --model, --random-init, --cache-dir
    and (with `data`) --data."""
    parser.add_argument(
        "--model", default="qwen2.5-coder-0.5b", help="model key, folder or hub id (QA_MODEL)"
    )
    parser.add_argument(
        "--random-init", type=Path, help="folder with config.json + tokenizer: random weights in its shape"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="$QA_CACHE_DIR")
    if data:
        parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="KorQuAD 1.0 JSON")


def load_questions(path: Path, *, split: str, count: int, seed: int = 0) -> list[QAExample]:
    """A fixed random sample of `count` questions of `split` ("eval", "train" or "all"), read now."""
    examples = load_korquad(path, split)  # type: ignore[arg-type]  # checked by load_korquad
    if not examples:
        raise ValueError(f"{path}: no questions in split {split!r}")
    if count >= len(examples):
        return examples
    return random.Random(seed).sample(examples, count)


def random_init_base(config_dir: Path, dest: Path, *, seed: int = 0, device: str = "cpu") -> Path:
    """A model folder with random weights in the shape of `config_dir/config.json` and its tokenizer files.

    The weights are initialised on `device` in bf16 (fast on a GPU even for billions of parameters), saved,
    and freed: the caller loads the folder back through `models.base.loading.load_base`, so the serving load
    path (4-bit NF4 or bf16) applies exactly as for a real base.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dir = Path(config_dir)
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"--random-init {config_dir}: no config.json there")
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    copied = [name for name in TOKENIZER_FILES if (config_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(config_dir / name, dest / name)
    if not any(name.startswith("tokenizer") or name == "vocab.json" for name in copied):
        raise FileNotFoundError(f"--random-init {config_dir}: no tokenizer files there")
    return dest


def resolve_base(
    model: str | None,
    random_init: Path | None,
    scratch: Path,
    cache_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
) -> ResolvedModel:
    """The base folder: a model spec resolved as the server does, or a random-initialised folder."""
    if random_init is not None:
        folder = random_init_base(
            random_init, scratch / f"random-{Path(random_init).resolve().name}", seed=seed, device=device
        )
        return resolve_model(str(folder), cache_dir)
    return resolve_model(model or "tiny-random", cache_dir)


def make_lora_adapters(
    base: ResolvedModel, root: Path, names: Sequence[str], *, r: int = 16, alpha: int = 32, seed: int = 0
) -> list[AdapterSpec]:
    """Random LoRA adapters (peft, `init_lora_weights=False`) on every projection, with `qa_adapter.json`.

    Made on the CPU from the base folder in bf16 (the dtype the shipped adapters are saved in); each adapter
    gets its own seed, so their outputs differ.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.bfloat16)
    specs = []
    for i, name in enumerate(names):
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed + i)
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=False)  # saved in bf16
        peft_model.save_pretrained(str(root / name))
        model = peft_model.unload()
        manifest = AdapterManifest(
            name=name,
            base_model=base.key,
            base_fingerprint=base.fingerprint,
            prompt_style="zero-shot",
            training={
                "note": "random LoRA weights for benchmarks",
                "r": r,
                "lora_alpha": alpha,
                "seed": seed + i,
            },
        )
        write_manifest(root / name, manifest)
        specs.append(AdapterSpec(name=name, path=root / name, manifest=manifest))
    return specs


def adapter_specs(
    base: ResolvedModel, adapters_dir: Path | None, count: int, scratch: Path, *, r: int = 16, alpha: int = 32
) -> tuple[list[AdapterSpec], list[str]]:
    """`count` adapters: the real ones of `adapters_dir` first (checked by the registry against the base),
    then random ones to make up the number. Returns the specs and the names of the random ones."""
    real: list[AdapterSpec] = []
    if adapters_dir is not None:
        registry = AdapterRegistry.from_dir(
            adapters_dir, base_key=base.key, base_fingerprint=base.fingerprint
        )
        real = list(registry)[:count]
    synthetic = [f"bench-lora-{i:02d}" for i in range(1, count - len(real) + 1)]
    made = make_lora_adapters(base, scratch / "adapters", synthetic, r=r, alpha=alpha) if synthetic else []
    return real + made, synthetic


def environment(device: str, started: datetime | None = None) -> dict[str, Any]:
    """Date (`started`, default now), machine, card and software versions of this run."""
    import bitsandbytes
    import peft
    import torch
    import transformers

    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or "cpu")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": (started or datetime.now(UTC)).isoformat(timespec="seconds"),
        "device": device,
        "card": card,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-style table; None prints as '-'."""

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
