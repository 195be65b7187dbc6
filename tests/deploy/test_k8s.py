"""The kustomize base renders and validates against the Kubernetes schemas, offline."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.31"


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out)}


def test_base_has_every_object(rendered):
    assert set(rendered) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_core_objects_match_the_schemas(rendered):
    for kind, doc in rendered.items():
        if kind != "ServiceMonitor":  # a CRD: checked below
            kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_is_not_vacuous(rendered):
    broken = copy.deepcopy(rendered["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_deployment_is_operable(rendered):
    deploy, service = rendered["Deployment"], rendered["Service"]
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    config = rendered["ConfigMap"]["metadata"]["name"]
    assert container["envFrom"][0]["configMapRef"]["name"] == config  # hashed name followed
    labels = pod["metadata"]["labels"]
    for selector in (
        deploy["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= labels.items()
    hpa = rendered["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "latentserve_num_requests_waiting"


def test_service_monitor_scrapes_the_service(rendered):
    monitor, service = rendered["ServiceMonitor"], rendered["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
