"""Adapter management over HTTP: load by name at run time, unload, and every bad adapter refused cleanly.

The server starts with alpha and beta from a private adapters folder; gamma (and broken adapters) are put
into the folder afterwards. After every refusal the served adapters still answer and the shared model holds
no trace of the refused one.
"""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings
from models.adapters.registry import ADAPTER_WEIGHTS, read_manifest, write_manifest

ASK = {"context": "회의는 3시에 열린다.", "question": "회의는 몇 시에?", "decoding": {"strategy": "greedy"}}


@pytest.fixture(scope="module")
def folder(tiny_adapters_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served") / "adapters"
    for name in ("alpha", "beta"):
        shutil.copytree(tiny_adapters_dir / name, root / name)
    return root


@pytest.fixture(scope="module")
def admin(tiny_settings: ServiceSettings, folder: Path, tmp_path_factory) -> Iterator[TestClient]:
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": folder,
            "jobs_dir": tmp_path_factory.mktemp("jobs"),
            "default_prompts": ("zero-shot",),
        }
    )
    with TestClient(build_app(settings)) as client:
        yield client


def add_adapter(tiny_adapters_dir: Path, folder: Path, name: str, source: str = "gamma") -> Path:
    """Copy a test adapter into the served folder under `name` (its manifest renamed to match)."""
    target = folder / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tiny_adapters_dir / source, target)
    manifest = read_manifest(target)
    write_manifest(target, type(manifest)(**{**manifest.__dict__, "name": name}))
    return target


def served(client: TestClient) -> list[str]:
    return [a["name"] for a in client.get("/adapters").json()["adapters"]]


def check_still_serving(client: TestClient, expected: list[str]) -> None:
    assert served(client) == expected
    assert sorted(client.app.state.service.engine().generator.resident_adapters) == expected
    response = client.post("/answer", json=ASK)
    assert response.status_code == 200, response.text
    assert response.json()["n_candidates"] == len(expected)


def test_load_use_and_unload_at_run_time(admin, folder, tiny_adapters_dir):
    check_still_serving(admin, ["alpha", "beta"])
    add_adapter(tiny_adapters_dir, folder, "gamma")
    loaded = admin.post("/adapters/gamma/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"name": "gamma", "status": "loaded", "adapters": ["alpha", "beta", "gamma"]}
    again = admin.post("/adapters/gamma/load")
    assert again.status_code == 200 and again.json()["status"] == "already_loaded"
    check_still_serving(admin, ["alpha", "beta", "gamma"])  # default members include it
    only = admin.post("/answer", json={**ASK, "adapters": ["gamma"], "explain": True}).json()
    assert {c["adapter"] for c in only["candidates"]} == {"gamma"}

    unloaded = admin.delete("/adapters/gamma")
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    gone = admin.delete("/adapters/gamma")
    assert gone.status_code == 404 and gone.json()["error_type"] == "adapter_not_found"
    named = admin.post("/answer", json={**ASK, "adapters": ["gamma"]})
    assert named.status_code == 422 and named.json()["error_type"] == "unknown_adapter"
    check_still_serving(admin, ["alpha", "beta"])


@pytest.mark.parametrize(
    ("path", "status", "error_type"),
    [
        ("/adapters/delta/load", 404, "adapter_not_found"),
        ("/adapters/..%2F..%2Fetc/load", 404, "not_found"),  # a slash never reaches the route
        ("/adapters/../load", 404, "not_found"),
        ("/adapters/%2E%2E/load", 422, "invalid_adapter"),
        ("/adapters/.hidden/load", 422, "invalid_adapter"),
        ("/adapters/base/load", 422, "invalid_adapter"),
        ("/adapters/a%00b/load", 422, "invalid_adapter"),
        ("/adapters/" + "a" * 300 + "/load", 422, "validation_error"),
    ],
)
def test_names_that_are_not_adapters_are_refused(admin, path, status, error_type):
    response = admin.post(path)
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == error_type


def refused(client: TestClient, name: str, error_type: str, words: str) -> None:
    response = client.post(f"/adapters/{name}/load")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == error_type and words in body["error"], body
    assert body["detail"] == {"field": "name"}
    check_still_serving(client, ["alpha", "beta"])


def test_a_corrupt_weights_file_is_refused_and_the_others_keep_answering(admin, folder, tiny_adapters_dir):
    weights = add_adapter(tiny_adapters_dir, folder, "torn") / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(admin, "torn", "invalid_adapter", "not a readable safetensors file")


def test_a_manifest_for_another_base_is_refused(admin, folder, tiny_adapters_dir):
    target = add_adapter(tiny_adapters_dir, folder, "foreign")
    manifest = read_manifest(target)
    write_manifest(target, type(manifest)(**{**manifest.__dict__, "base_fingerprint": "f" * 64}))
    refused(admin, "foreign", "adapter_base_mismatch", "served base")


def test_pickled_weights_are_never_loaded(admin, folder, tiny_adapters_dir):
    target = add_adapter(tiny_adapters_dir, folder, "pickled")
    (target / ADAPTER_WEIGHTS).rename(target / "adapter_model.bin")
    refused(admin, "pickled", "invalid_adapter", "pickled weights are not loaded")


def test_links_out_of_the_folder_are_refused(admin, folder, tiny_adapters_dir, tmp_path):
    outside = tmp_path / "outside"
    add_adapter(tiny_adapters_dir, tmp_path, "outside")
    os.symlink(outside, folder / "outside")
    refused(admin, "outside", "invalid_adapter", "leads out of the adapters folder")
    target = add_adapter(tiny_adapters_dir, folder, "sneaky")
    shutil.move(target / ADAPTER_WEIGHTS, tmp_path / "weights.safetensors")
    os.symlink(tmp_path / "weights.safetensors", target / ADAPTER_WEIGHTS)
    refused(admin, "sneaky", "invalid_adapter", "leads out of the adapters folder")


def test_a_bad_manifest_is_refused(admin, folder, tiny_adapters_dir):
    target = add_adapter(tiny_adapters_dir, folder, "noname")
    (target / "qa_adapter.json").write_text("{not json")
    refused(admin, "noname", "invalid_adapter", "not valid JSON")


BIG_INT = "4" * 5_000


def set_config(target: Path, **changes: object) -> None:
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **changes}))


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # conftest's
DEEP = "[" * 100_000 + "]" * 100_000
# (what to do to a copy of a good adapter, error_type, words of the message): a config that disagrees with its
# weights or the base, or one serving cannot run, is refused at load, never left to fail every request.
BAD_ADAPTERS = [
    (lambda t: set_config(t, r=8), "invalid_adapter", "says r 8"),  # the tensors are rank 4
    (lambda t: set_config(t, r=2), "invalid_adapter", "says r 2"),
    (lambda t: set_config(t, r=True), "invalid_adapter", "field 'r'"),
    (lambda t: set_config(t, r=0), "invalid_adapter", "field 'r'"),
    (lambda t: set_config(t, lora_alpha=1e30), "invalid_adapter", "scales LoRA"),
    (lambda t: set_config(t, lora_alpha=-8), "invalid_adapter", "field 'lora_alpha'"),
    (lambda t: set_config(t, lora_alpha="8"), "invalid_adapter", "field 'lora_alpha'"),
    (lambda t: set_config(t, target_modules=[*LORA_TARGETS, "nope_proj"]), "invalid_adapter", "nope_proj"),
    (lambda t: set_config(t, target_modules=["q_proj"]), "invalid_adapter", "does not target"),
    (lambda t: set_config(t, target_modules=".*nope"), "invalid_adapter", "does not target"),
    (lambda t: set_config(t, target_modules=[]), "invalid_adapter", "target_modules"),
    (lambda t: set_config(t, modules_to_save=["lm_head"]), "invalid_adapter", "modules_to_save"),
    (lambda t: set_config(t, layers_to_transform=[0]), "invalid_adapter", "layers_to_transform"),
    (lambda t: set_config(t, use_dora=True), "invalid_adapter", "DoRA"),
    (lambda t: set_config(t, peft_type="IA3"), "invalid_adapter", "peft_type LORA"),
    (lambda t: (t / "adapter_config.json").write_text(DEEP), "invalid_adapter", "not valid JSON"),
    (lambda t: (t / "adapter_config.json").write_text('{"r": ' + BIG_INT + "}"), "invalid_adapter", "JSON"),
    (lambda t: (t / "adapter_config.json").unlink(), "invalid_adapter", "has no adapter_config.json"),
    (lambda t: (t / "qa_adapter.json").write_text(DEEP), "invalid_adapter", "not valid JSON"),
    (lambda t: (t / "qa_adapter.json").write_text("[" + BIG_INT + "]"), "invalid_adapter", "JSON"),
    (lambda t: (t / "qa_adapter.json").write_bytes(b"\xff\xfe"), "invalid_adapter", "UTF-8"),
    (lambda t: (t / "qa_adapter.json").unlink(), "invalid_adapter", "has no qa_adapter.json"),
    (lambda t: set_manifest(t, prompt_style="no-such-style"), "invalid_adapter", "prompt_style"),
    (lambda t: set_manifest(t, weight=10**400), "invalid_adapter", "weight"),
]


def set_manifest(target: Path, **changes: object) -> None:
    data = json.loads((target / "qa_adapter.json").read_text())
    (target / "qa_adapter.json").write_text(json.dumps({**data, **changes}))


@pytest.mark.parametrize(("spoil", "error_type", "words"), BAD_ADAPTERS)
def test_a_config_that_cannot_serve_is_refused_without_a_path(
    admin, folder, tiny_adapters_dir, spoil, error_type, words
):
    target = add_adapter(tiny_adapters_dir, folder, "spoilt")
    spoil(target)
    response = admin.post("/adapters/spoilt/load")
    assert str(folder.parent) not in response.text and "/tmp" not in response.text  # names, never paths
    refused(admin, "spoilt", error_type, words)
