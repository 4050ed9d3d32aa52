"""Adapter registry: valid folders load, anything doubtful is refused with a message naming it."""

import json
import shutil

import pytest

from models.adapters.registry import (
    MANIFEST_NAME,
    AdapterManifest,
    AdapterRegistry,
    read_manifest,
    write_manifest,
)
from models.base.folders import read_base_info
from models.errors import AdapterBaseMismatchError, AdapterError, UnknownAdapterError


@pytest.fixture
def base(tiny_model_dir):
    info = read_base_info(tiny_model_dir)
    return {"base_key": info.key, "base_fingerprint": info.fingerprint}


@pytest.fixture
def one_adapter(tiny_adapters_dir, tmp_path):
    """A private copy of the 'alpha' adapter in its own root, free to be broken."""
    root = tmp_path / "adapters"
    shutil.copytree(tiny_adapters_dir / "alpha", root / "alpha")
    return root


def test_valid_directory_loads(tiny_adapters_dir, base):
    registry = AdapterRegistry.from_dir(tiny_adapters_dir, **base)
    assert registry.names() == ["alpha", "beta", "gamma"]
    spec = registry.get("beta")
    assert spec.path == tiny_adapters_dir / "beta"
    assert spec.manifest.prompt_style == "zero-shot" and spec.manifest.weight == 1.0
    assert "gamma" in registry and len(registry) == 3


def test_unknown_adapter_message_is_plain(tiny_adapters_dir, base):
    registry = AdapterRegistry.from_dir(tiny_adapters_dir, **base)
    with pytest.raises(UnknownAdapterError) as caught:
        registry.get("delta")
    assert str(caught.value).startswith("unknown adapter 'delta'; known adapters: alpha, beta, gamma")
    assert isinstance(caught.value, KeyError)


def test_adapter_for_another_base_is_refused(tiny_adapters_dir):
    with pytest.raises(AdapterBaseMismatchError) as caught:
        AdapterRegistry.from_dir(
            tiny_adapters_dir, base_key="qwen2.5-coder-0.5b", base_fingerprint="1d96" * 16
        )
    message = str(caught.value)
    assert "'alpha'" in message and "'tiny-random'" in message and "'qwen2.5-coder-0.5b'" in message
    assert isinstance(caught.value, ValueError)


def test_same_key_other_fingerprint_is_refused(tiny_adapters_dir, base):
    with pytest.raises(AdapterBaseMismatchError, match="fingerprint"):
        AdapterRegistry.from_dir(tiny_adapters_dir, base_key=base["base_key"], base_fingerprint="0" * 64)


def test_missing_manifest_is_refused(one_adapter, base):
    (one_adapter / "alpha" / MANIFEST_NAME).unlink()
    with pytest.raises(AdapterError, match=f"no {MANIFEST_NAME}"):
        AdapterRegistry.from_dir(one_adapter, **base)


def test_pickled_weights_only_are_refused(one_adapter, base):
    folder = one_adapter / "alpha"
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(
        AdapterError, match="adapter 'alpha' has no adapter_model.safetensors.*adapter_model.bin"
    ):
        AdapterRegistry.from_dir(one_adapter, **base)


@pytest.mark.parametrize("bad", ["-dash", "has space", "x" * 65, "__base__", "ünï"])
def test_bad_folder_name_is_refused(one_adapter, base, bad):
    (one_adapter / "alpha").rename(one_adapter / bad)
    with pytest.raises(AdapterError, match="folder name"):
        AdapterRegistry.from_dir(one_adapter, **base)


def test_manifest_name_must_match_folder(one_adapter, base):
    (one_adapter / "alpha").rename(one_adapter / "renamed")
    with pytest.raises(AdapterError, match="'renamed' has a manifest named 'alpha'"):
        AdapterRegistry.from_dir(one_adapter, **base)


def test_hidden_folders_and_files_are_skipped(one_adapter, base):
    (one_adapter / ".staging").mkdir()
    (one_adapter / "README.md").write_text("adapters")
    assert AdapterRegistry.from_dir(one_adapter, **base).names() == ["alpha"]


def test_missing_root_is_refused(tmp_path, base):
    with pytest.raises(AdapterError, match="does not exist"):
        AdapterRegistry.from_dir(tmp_path / "nope", **base)


def _manifest_dict(**changes):
    data = {
        "name": "alpha",
        "base_model": "tiny-random",
        "base_fingerprint": "f" * 64,
        "prompt_style": "few-shot",
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"weight": -1}, "weight"),
        ({"weight": "heavy"}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"prompt_style": ""}, "prompt_style"),
        ({"base_model": None}, "base_model"),
        ({"training": []}, "training"),
        ({"format_version": 2}, "format_version"),
        ({"colour": "red"}, "colour"),
        ({"name": "bad name"}, "name"),
    ],
)
def test_manifest_validation_names_the_field(changes, field):
    with pytest.raises(AdapterError, match=field) as caught:
        AdapterManifest.from_json(json.dumps(_manifest_dict(**changes)), source="x/qa_adapter.json")
    assert "x/qa_adapter.json" in str(caught.value)


def test_manifest_missing_field_and_bad_json():
    data = _manifest_dict()
    del data["base_fingerprint"]
    with pytest.raises(AdapterError, match="missing field.*base_fingerprint"):
        AdapterManifest.from_json(json.dumps(data))
    with pytest.raises(AdapterError, match="not valid JSON"):
        AdapterManifest.from_json("{nope")


def test_manifest_round_trip(tmp_path):
    manifest = AdapterManifest(**_manifest_dict(weight=2, training={"steps": 100, "data": "news_qa"}))
    write_manifest(tmp_path, manifest)
    again = read_manifest(tmp_path)
    assert again == manifest and again.created and again.format_version == 1
