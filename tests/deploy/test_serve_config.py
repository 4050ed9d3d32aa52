"""The shipped Serve configs are valid for Ray Serve (its own schema), name this app's builder and
deployments, and their `args` build the application; bad arguments fail at build time, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from ray.serve import Application  # noqa: E402 - after the skip
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from deploy.ray_serve import RayServeArgs, build_app  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "deploy").glob("serve_config*.yaml"))


def test_both_configs_are_shipped() -> None:
    assert [p.name for p in CONFIGS] == ["serve_config.local.yaml", "serve_config.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_and_builds(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    [app] = config.applications
    assert app.import_path == "deploy.ray_serve:build_app"
    assert {d.name for d in app.deployments} == {"QAModel", "QAIngress"}
    RayServeArgs.model_validate(app.args)
    assert isinstance(build_app(app.args), Application)


def test_gpu_config_settings_that_matter() -> None:
    config = yaml.safe_load((CONFIGS[1]).read_text(encoding="utf-8"))
    [app] = config["applications"]
    model = next(d for d in app["deployments"] if d["name"] == "QAModel")
    ingress = next(d for d in app["deployments"] if d["name"] == "QAIngress")
    assert model["ray_actor_options"]["num_gpus"] == 1  # one replica per GPU, the base loaded once in each
    scaling = model["autoscaling_config"]
    assert scaling["min_replicas"] >= 1 and scaling["max_replicas"] >= scaling["min_replicas"]
    assert scaling["target_ongoing_requests"] == app["args"]["settings"]["max_concurrent_requests"]
    settings = app["args"]["settings"]
    # Serve never routes more to a replica than its own queue takes: overload is Serve's back-pressure (429).
    assert model["max_ongoing_requests"] <= settings["max_concurrent_requests"] + settings["max_queue"]
    assert model["max_queued_requests"] > 0
    assert ingress["num_replicas"] == 1  # batch jobs live in the ingress
    assert settings["quantization"] == "4bit"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"settings": {"modle": "tiny-random"}}, "unknown ServiceSettings fields modle"),
        ({"settings": {"api_key": "secret"}}, "do not put the key in the config"),
        ({"settings": {"max_queue": -1}}, "max_queue"),
        ({"max_adapter_sets_per_replica": 0}, "max_adapter_sets_per_replica"),
        ({"replicas": 2}, "replicas"),
    ],
)
def test_bad_args_fail_at_build_time(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_app(args)


def test_kuberay_rayservice_serves_the_same_config() -> None:
    manifest = yaml.safe_load((CONFIGS[1].parent / "rayservice.yaml").read_text(encoding="utf-8"))
    assert manifest["kind"] == "RayService"
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == yaml.safe_load(CONFIGS[1].read_text("utf-8"))
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the version the ray extra pins
    [gpu] = cluster["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
