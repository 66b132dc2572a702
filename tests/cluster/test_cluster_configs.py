"""The cluster files as shipped: launcher YAMLs against the schema Ray ships, KubeRay manifests
against the fields the operator needs, the runtime env against what a job needs to find `mtl`."""
import json
import os
import re

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

from search_spaces import PRESETS

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")
SCHEMA = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"]
SHARED_STORAGE = {"aws-gpu.yaml": "/mnt/efs", "gcp-gpu.yaml": "/mnt/filestore", "onprem.yaml": "/data"}
MANIFESTS = ["kuberay.yaml", "rayjob.yaml"]


def _load(name):
    with open(os.path.join(CLUSTER, name)) as fh:
        return yaml.safe_load(fh)


def _text(name):
    with open(os.path.join(CLUSTER, name)) as fh:
        return fh.read()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_matches_ray_schema(name):
    config = _load(name)
    with open(SCHEMA) as fh:
        jsonschema.validate(config, json.load(fh))
    assert any("-c constraints.txt -e ." in c for c in config["setup_commands"])  # the README's pins


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_autoscales_from_zero_with_venv_on_path(name):
    config = _load(name)
    assert config["max_workers"] > 0 and config["idle_timeout_minutes"] > 0
    head = config["head_start_ray_commands"][-1]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    workers = {k: v for k, v in config.get("available_node_types", {}).items() if k != config.get("head_node_type")}
    assert all(v["min_workers"] == 0 < v["max_workers"] for v in workers.values())  # none held idle
    # Ray commands run from the venv the setup made, and every later shell finds `mtl` on PATH.
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if re.search(r"\bray (start|stop)\b", command):
            assert "~/mtl/.venv/bin/ray " in command
    assert any("export PATH=$HOME/mtl/.venv/bin:$PATH" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_keeps_dashboard_on_loopback_with_a_shared_token(name):
    config = _load(name)
    head = config["head_start_ray_commands"][-1]
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in config["worker_start_ray_commands"][-1]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/mtl-study.token"  # one token, every node
    assert "0.0.0.0" not in _text(name).replace("0.0.0.0/0", "")  # only named, in a warning


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_refuses_to_start_ray_without_shared_storage(name):
    config, mount = _load(name), SHARED_STORAGE[name]
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert commands[0].startswith(f"mountpoint -q {mount} ||") and "exit 1" in commands[0]
    assert not any("|| true" in c for c in config["setup_commands"])  # a failed mount fails `ray up`


def test_aws_nodes_use_a_security_group_of_their_own():
    # Without SecurityGroupIds Ray creates a group with SSH open to 0.0.0.0/0 on every node.
    config = _load("aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name
    assert "--cidr" in _text("aws-gpu.yaml") and "--source-ranges" in _text("gcp-gpu.yaml")


def test_launcher_schema_catches_a_bad_field():
    config = _load("aws-gpu.yaml")
    config["max_workers"] = "eight"
    with open(SCHEMA) as fh, pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, json.load(fh))


def _cluster_specs():
    return [("kuberay.yaml", _load("kuberay.yaml")["spec"]), ("rayjob.yaml", _load("rayjob.yaml")["spec"]["rayClusterSpec"])]


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=MANIFESTS)
def test_kuberay_cluster_spec(name, spec):
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert "0.0.0.0" not in _text(name)
    workers = spec["workerGroupSpecs"]
    assert workers and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in workers)
    containers = [head["template"]["spec"]["containers"][0]] + [g["template"]["spec"]["containers"][0] for g in workers]
    for container in containers + [{"env": spec["autoscalerOptions"]["env"]}]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mtl-ray-token", "key": "token"}
    for container in containers:  # the image of cluster/Dockerfile: the project installed
        assert container["image"] == "registry.example.com/mtl-orchestrator:0.1.0"
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_manifest_kinds():
    assert (_load("kuberay.yaml")["apiVersion"], _load("kuberay.yaml")["kind"]) == ("ray.io/v1", "RayCluster")
    assert (_load("rayjob.yaml")["apiVersion"], _load("rayjob.yaml")["kind"]) == ("ray.io/v1", "RayJob")


def test_dockerfile_matches_the_manifests_ray():
    with open(os.path.join(CLUSTER, "Dockerfile")) as fh:
        text = fh.read()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert "-c /home/ray/mtl/constraints.txt -e /home/ray/mtl" in text


def test_rayjob_runs_an_existing_preset_through_the_head_pod():
    spec = _load("rayjob.yaml")["spec"]
    words = spec["entrypoint"].split()
    assert words[:2] == ["mtl", "run"] and words[2] in PRESETS
    assert spec["submissionMode"] == "SidecarMode"  # submits through the head pod's 127.0.0.1
    assert spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_runtime_env_installs_the_uploaded_project_offline():
    env = _load("runtime_env.yaml")
    assert env["pip"]["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]
    assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(env["pip"]["pip_install_options"])
    assert env["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields
