"""Model folders on disk: the `qa_base.json` stamp and atomic publication of a finished folder.

A folder is trusted only once its stamp exists, and the stamp is written last, inside a temporary sibling
that is then renamed into place, so a crash never leaves a half-written folder that looks finished. This
module does not know how a folder's weights are made (see `sources` and `tiny`).
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bounded_json
from models.errors import ModelSourceError

BASE_INFO_NAME = "qa_base.json"


@dataclass(frozen=True)
class BaseInfo:
    """What `qa_base.json` says about a base model folder."""

    key: str
    """The model key (`qwen2.5-coder-0.5b`, `tiny-random`, ...) or a label for a local or hub model."""
    fingerprint: str
    """A sha256 hex digest that changes whenever the weights do; adapters are pinned to it."""
    source: str = ""
    """Where the weights came from, for people reading the folder."""


def read_base_info(folder: Path) -> BaseInfo | None:
    """The folder's stamp, or None when there is none (an unfinished or foreign folder)."""
    stamp = folder / BASE_INFO_NAME
    if not stamp.is_file():
        return None
    try:
        data = bounded_json.loads(stamp.read_text(encoding="utf-8"))
        return BaseInfo(
            key=str(data["key"]), fingerprint=str(data["fingerprint"]), source=data.get("source", "")
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ModelSourceError(f"{stamp} is not a valid {BASE_INFO_NAME}: {e}") from e


def write_base_info(folder: Path, info: BaseInfo) -> None:
    """Write the stamp; call it last, once every other file of the folder is in place."""
    payload = {"key": info.key, "fingerprint": info.fingerprint, "source": info.source}
    (folder / BASE_INFO_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def staging_dir(dest: Path) -> Path:
    """A fresh temporary folder beside `dest` (same file system, so the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    staged.chmod(0o755)  # mkdtemp makes it private; a model cache is meant to be readable
    return staged


def publish(staged: Path, dest: Path) -> Path:
    """Move a finished staging folder to `dest`, replacing an unstamped or stale `dest`.

    When another process published the same fingerprint first, its folder is kept and ours is dropped.
    """
    new = read_base_info(staged)
    assert new is not None, "stamp the staged folder before publishing it"
    old = read_base_info(dest) if dest.exists() else None
    if old is not None and old.fingerprint == new.fingerprint:
        shutil.rmtree(staged, ignore_errors=True)
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staged, dest)
    return dest
