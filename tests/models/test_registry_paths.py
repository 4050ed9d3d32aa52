"""`find_adapter_folder`: a client-given name resolves only to a folder inside the adapters folder."""

import os
import shutil

import pytest

from models.adapters.registry import ADAPTER_WEIGHTS, AdapterRegistry, find_adapter_folder
from models.errors import AdapterError, AdapterNotFoundError


@pytest.fixture
def root(tiny_adapters_dir, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(tiny_adapters_dir / "alpha", adapters / "alpha")
    return adapters


def test_a_plain_name_finds_its_folder(root):
    assert find_adapter_folder(root, "alpha") == root / "alpha"


@pytest.mark.parametrize(
    "name",
    ["..", "../alpha", "alpha/../alpha", "/etc", ".hidden", "a" * 65, "", "al pha", "base", "BASE", "~"],
)
def test_names_that_are_not_plain_are_refused(root, name):
    with pytest.raises(AdapterError):
        find_adapter_folder(root, name)


def test_a_missing_folder_is_not_found(root):
    with pytest.raises(AdapterNotFoundError, match="no such folder"):
        find_adapter_folder(root, "delta")
    (root / "file").write_text("x")
    with pytest.raises(AdapterNotFoundError):
        find_adapter_folder(root, "file")


def test_a_folder_link_out_of_the_root_is_refused(root, tmp_path):
    outside = tmp_path / "outside" / "evil"
    shutil.copytree(root / "alpha", outside)
    os.symlink(outside, root / "evil")
    with pytest.raises(AdapterError, match="leads out of the adapters folder"):
        find_adapter_folder(root, "evil")


def test_a_file_link_out_of_the_root_is_refused(root, tmp_path):
    secret = tmp_path / "secret.safetensors"
    shutil.copy(root / "alpha" / ADAPTER_WEIGHTS, secret)
    (root / "alpha" / ADAPTER_WEIGHTS).unlink()
    os.symlink(secret, root / "alpha" / ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match=f"{ADAPTER_WEIGHTS} leads out"):
        find_adapter_folder(root, "alpha")


def test_a_link_inside_the_root_is_fine(root):
    os.symlink(root / "alpha", root / "alias")
    assert find_adapter_folder(root, "alias") == root / "alias"


def test_registry_add_and_remove(tiny_adapters_dir, tiny_model_dir):
    from models.base.folders import read_base_info

    info = read_base_info(tiny_model_dir)
    full = AdapterRegistry.from_dir(tiny_adapters_dir, base_key=info.key, base_fingerprint=info.fingerprint)
    registry = AdapterRegistry()
    registry.add(full.get("alpha"))
    registry.add(full.get("alpha"))  # idempotent
    assert registry.names() == ["alpha"]
    other = type(full.get("beta"))(
        name="alpha", path=full.get("beta").path, manifest=full.get("beta").manifest
    )
    with pytest.raises(AdapterError, match="already registered"):
        registry.add(other)
    registry.remove("alpha")
    registry.remove("alpha")
    assert registry.names() == [] and "alpha" not in registry
