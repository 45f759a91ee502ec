"""The example Kubernetes manifests in deploy/ agree with each other and with the service they run."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def manifests() -> dict[str, dict]:
    documents = [d for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents)  # one of each kind
    return by_kind


def test_the_autoscaler_scales_the_deployment_the_service_fronts():
    m = manifests()
    assert set(m) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    deployment, service, hpa, pdb = (
        m[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set: `kubectl apply` would reset it
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    # A CPU utilisation target is a share of the request: without one the autoscaler cannot act.
    cpu_targets = [x for x in hpa["spec"]["metrics"] if x["type"] == "Resource" and x["resource"]["name"] == "cpu"]
    assert cpu_targets and 0 < cpu_targets[0]["resource"]["target"]["averageUtilization"] < 100
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]  # so 100% of the request is the limit
    # One answering replica always, even while another drains or is evicted.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_pod_runs_as_many_threads_as_cores_and_drains_before_it_is_killed():
    container_spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container_spec["containers"][0]["env"]}
    assert env["STACKSERVE_INTRA_OP_THREADS"] == container_spec["containers"][0]["resources"]["limits"]["cpu"]
    assert container_spec["terminationGracePeriodSeconds"] > Settings.model_fields["graceful_timeout_s"].default
