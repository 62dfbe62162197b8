"""deploy/kubernetes: the Kustomize base and overlays, rendered and checked against the Kubernetes schemas.

Rendering: ``kubectl kustomize`` where kubectl is installed; everywhere, :func:`render` resolves the
subset of Kustomize these files use (``resources`` and ``images``; any other field fails the test), and
where kubectl exists a test checks that both render the same objects. Core kinds are validated offline,
strictly (unknown fields fail), with ``kubernetes-validate``'s bundled schemas. The custom resources
(KEDA, Prometheus Operator) have no bundled schema: their references (the Deployment they scale, the
Service they scrape, the metrics they query, the rules they carry) are checked against the rest.

Regenerate the PrometheusRule from deploy/prometheus/alerts.yml with::

    python -m tests.test_kubernetes > deploy/kubernetes/overlays/monitoring/prometheusrule.yaml
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import ALERTS, assert_queries_use_exported_metrics

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
ENTRY_POINTS = {
    "default": KUBERNETES,
    "monitoring": KUBERNETES / "overlays" / "monitoring",
    "gateway": KUBERNETES / "overlays" / "gateway",
}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "images"}
KUBECTL = shutil.which("kubectl")
#: Kubernetes release whose schemas the core kinds are checked against.
KUBERNETES_VERSION = "1.30.0"
WORKER, GATEWAY = "streamscribe-worker", "streamscribe-gateway"
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


# --- rendering ------------------------------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` gives, for the subset of Kustomize used here."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}: fields {sorted(unknown)} are outside what render() resolves"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in pod_spec(obj).get("containers", []) if pod_spec(obj) else []:
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return objects


def kubectl_render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def identity(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def by_identity(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in objects:
        assert identity(obj) not in found, f"{identity(obj)} twice"
        found[identity(obj)] = obj
    return found


def rendered(entry: str) -> dict[tuple[str, str], dict[str, Any]]:
    return by_identity(render(ENTRY_POINTS[entry]))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- rendering and schemas ------------------------------------------------------------------------------


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_kubectl_kustomize_renders_the_same_objects_as_the_resolver(entry: str) -> None:
    assert by_identity(kubectl_render(ENTRY_POINTS[entry])) == rendered(entry)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_core_object_is_valid_against_the_kubernetes_schemas(entry: str) -> None:
    import kubernetes_validate

    objects = rendered(entry)
    core = [obj for key, obj in objects.items() if key[0] not in CUSTOM_KINDS]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_is_strict_about_misspelt_fields() -> None:
    import kubernetes_validate

    worker = copy.deepcopy(rendered("default")[("Deployment", WORKER)])
    worker["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)


def test_the_entry_points_hold_what_they_promise() -> None:
    base = set(rendered("default"))
    assert base == {
        ("ConfigMap", "streamscribe-worker"),
        ("Deployment", WORKER),
        ("PodDisruptionBudget", WORKER),
        ("Service", "streamscribe-worker-metrics"),
        ("ScaledObject", WORKER),
    }
    assert set(rendered("monitoring")) == base | {("ServiceMonitor", WORKER), ("PrometheusRule", "streamscribe")}
    assert set(rendered("gateway")) == base | {("Deployment", GATEWAY), ("Service", GATEWAY)}


# --- the worker -----------------------------------------------------------------------------------------


def worker_container() -> dict[str, Any]:
    spec = pod_spec(rendered("default")[("Deployment", WORKER)])
    assert spec is not None
    (container,) = spec["containers"]
    return container


def test_the_worker_takes_one_gpu_and_a_pinned_image() -> None:
    container = worker_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    name, _, tag = container["image"].partition(":")
    assert name == "streamscribe" and tag and tag != "latest"
    assert container["args"][-1] == "worker"


def test_the_worker_probes_cover_model_load_liveness_and_readiness_on_the_metrics_port() -> None:
    container = worker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = rendered("default")[("ConfigMap", "streamscribe-worker")]["data"]
    assert ports["metrics"] == int(config["STREAMSCRIBE_METRICS_PORT"])
    startup, liveness, readiness = (container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model download and load take minutes"
    assert liveness["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert config["STREAMSCRIBE_PRELOAD"], "readiness waits for the preloaded models"


def test_a_stopping_worker_has_time_to_hand_its_sessions_over_and_rollouts_keep_capacity() -> None:
    deployment = rendered("default")[("Deployment", WORKER)]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = float(rendered("default")[("ConfigMap", WORKER)]["data"]["STREAMSCRIBE_DRAIN_TIMEOUT_SEC"])
    assert grace >= drain + 10, "SIGKILL would come before the drain hands the sessions over"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = rendered("default")[("PodDisruptionBudget", WORKER)]
    assert selects(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])


def test_the_worker_config_names_only_real_settings_and_they_parse() -> None:
    from worker.settings import WorkerSettings

    data = rendered("default")[("ConfigMap", "streamscribe-worker")]["data"]
    env = {**data, "STREAMSCRIBE_REDIS_URL": "redis://redis:6379/0"}
    fields = {f"STREAMSCRIBE_{name.upper()}" for name in WorkerSettings.model_fields}
    asr_fields = {
        f"STREAMSCRIBE_ASR__{name.upper()}" for name in WorkerSettings.model_fields["asr"].annotation.model_fields
    }
    unknown = set(env) - fields - asr_fields
    assert not unknown, f"settings that do not exist (pydantic-settings would ignore them): {sorted(unknown)}"
    settings = _settings_from(env)
    assert settings.preload == ["base"] and settings.asr.device == "cuda"


def _settings_from(env: dict[str, str]) -> Any:
    import os

    from worker.settings import WorkerSettings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return WorkerSettings.build()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- custom resources -----------------------------------------------------------------------------------


def test_keda_scales_the_worker_deployment_on_active_plus_waiting_sessions() -> None:
    objects = rendered("default")
    scaled = objects[("ScaledObject", WORKER)]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in objects
    assert scaled["spec"]["minReplicaCount"] >= 1, "a Prometheus trigger cannot wake a fleet of zero"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "streamscribe_sessions_active" in query and "streamscribe_sessions_waiting" in query
    assert_queries_use_exported_metrics([("ScaledObject query", query)])
    max_sessions = int(objects[("ConfigMap", "streamscribe-worker")]["data"]["STREAMSCRIBE_MAX_SESSIONS"])
    assert 0 < float(trigger["metadata"]["threshold"]) <= max_sessions


def test_the_service_monitor_scrapes_the_metrics_service_as_the_worker_job() -> None:
    objects = rendered("monitoring")
    monitor = objects[("ServiceMonitor", WORKER)]
    service = objects[("Service", "streamscribe-worker-metrics")]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    # the rules, the dashboard and the KEDA query select job="streamscribe-worker"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "streamscribe-worker"
    worker_labels = objects[("Deployment", WORKER)]["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], worker_labels)


def prometheus_rule() -> dict[str, Any]:
    alerts = yaml.safe_load(ALERTS.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "streamscribe",
            "labels": {"app.kubernetes.io/name": "streamscribe", "release": "kube-prometheus-stack"},
        },
        "spec": alerts,
    }


def test_the_prometheus_rule_carries_the_same_alerts_as_the_compose_prometheus() -> None:
    assert rendered("monitoring")[("PrometheusRule", "streamscribe")] == prometheus_rule()


# --- the gateway ----------------------------------------------------------------------------------------


def test_the_gateway_service_reaches_the_gateway_pods_on_its_websocket_port() -> None:
    objects = rendered("gateway")
    deployment, service = objects[("Deployment", GATEWAY)], objects[("Service", GATEWAY)]
    spec = pod_spec(deployment)
    assert spec is not None
    (container,) = spec["containers"]
    assert "gateway" in container["args"] and "nvidia.com/gpu" not in container["resources"].get("limits", {})
    port = container["args"][container["args"].index("--port") + 1]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"websocket": int(port), "metrics": 9401}, "9401: the gateway's default --metrics-port"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


class _BlockStrings(yaml.SafeDumper):
    pass


_BlockStrings.add_representer(
    str,
    lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


if __name__ == "__main__":
    sys.stdout.write(
        "# Generated from deploy/prometheus/alerts.yml; tests/test_kubernetes.py checks that they agree:\n"
        "#   python -m tests.test_kubernetes > deploy/kubernetes/overlays/monitoring/prometheusrule.yaml\n"
    )
    yaml.dump(prometheus_rule(), sys.stdout, Dumper=_BlockStrings, sort_keys=False, width=110)
