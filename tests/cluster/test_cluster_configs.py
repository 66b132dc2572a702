"""Cluster-launcher YAMLs validate offline against the JSON schema Ray ships."""
import json
import os

import jsonschema
import pytest
import ray.autoscaler
import yaml

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")
SCHEMA = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_launcher_yaml_matches_ray_schema(name):
    with open(os.path.join(CLUSTER, name)) as fh:
        config = yaml.safe_load(fh)
    with open(SCHEMA) as fh:
        jsonschema.validate(config, json.load(fh))
    assert any("constraints.txt" in c for c in config["setup_commands"])  # same pins as the README


def test_launcher_schema_catches_a_bad_field():
    with open(os.path.join(CLUSTER, "aws-gpu.yaml")) as fh:
        config = yaml.safe_load(fh)
    config["max_workers"] = "eight"
    with open(SCHEMA) as fh, pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, json.load(fh))


def test_kuberay_manifest_shape():
    with open(os.path.join(CLUSTER, "kuberay.yaml")) as fh:
        manifest = yaml.safe_load(fh)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["spec"]["rayVersion"] == ray.__version__
    worker = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_runtime_env_pins_match_constraints():
    with open(os.path.join(CLUSTER, "runtime_env.yaml")) as fh:
        env = yaml.safe_load(fh)
    with open(os.path.join(CLUSTER, "..", "constraints.txt")) as fh:
        pins = {line.strip() for line in fh if "==" in line}
    for requirement in env["pip"]:
        if "==" in requirement:
            assert requirement in pins
