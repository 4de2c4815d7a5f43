"""The deployment, checked offline: deploy/k8s (base and every overlay), Dockerfile and Dockerfile.gpu.

Each kustomization is rendered with `kubectl kustomize` and validated with `kubernetes-validate --strict`
against Kubernetes 1.33 (unknown fields fail); kinds that validator does not know (KEDA's ScaledObject)
are validated here against their CRD's schema (npm @kubernetes-models/keda, deploy/k8s/crd-schemas) with
unknown fields refused too; both Dockerfiles pass hadolint. Then the invariants nobody should loosen by
accident: the drain fits the grace period, probes are native gRPC, the autoscaler follows open streams,
PDBs cover workers and Envoy, every pod runs non-root on a read-only root without capabilities, Envoy
drains before it stops, and every ANTIPHON_* variable is a real setting.

The tools come from requirements-deploy.txt and `npm ci --prefix deploy/k8s/crd-schemas` (`make
deploy-check` installs both). Missing ones skip these tests, or fail them with ANTIPHON_REQUIRE_DEPLOY=1.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no annotations (types-PyYAML is not installed)
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from antiphon.config import ConfigError, Settings, load_settings
from antiphon.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/keda", "overlays/sentinel", "overlays/triton")
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "antiphon"
REQUIRED = os.environ.get("ANTIPHON_REQUIRE_DEPLOY") == "1"
# Kinds kubernetes-validate knows; anything else must have a CRD schema below, or the test fails.
BUILTIN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
NODE_MODULES = K8S / "crd-schemas" / "node_modules" / "@kubernetes-models"
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): NODE_MODULES / "keda" / "keda.sh" / "v1alpha1" / "ScaledObject.js"}
WORKER, ENVOY, STREAMS_METRIC = "antiphon-worker", "antiphon-envoy", "antiphon_active_streams"

Obj = dict[str, Any]


def _unavailable(why: str) -> NoReturn:
    if REQUIRED:
        pytest.fail(f"{why} (ANTIPHON_REQUIRE_DEPLOY=1; `make deploy-check` installs the deploy tools)")
    pytest.skip(f"{why}; `make deploy-check` installs it")


def _tool(name: str) -> str:
    """The venv's copy first (requirements-deploy.txt pins it), else one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        _unavailable(f"{name} not found")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


_RENDERED: dict[str, list[Obj]] = {}


def render(kustomization: str) -> list[Obj]:
    """`kubectl kustomize` of one directory, parsed (once per test session)."""
    if kustomization not in _RENDERED:
        done = _run(_tool("kubectl"), "kustomize", str(K8S / kustomization))
        assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr}"
        _RENDERED[kustomization] = [o for o in yaml.safe_load_all(done.stdout) if o]
    return _RENDERED[kustomization]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]


def container(workload: Obj, name: str) -> Obj:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(found)


def worker_env(objects: list[Obj]) -> dict[str, str]:
    env = container(find(objects, "Deployment", WORKER), "antiphon")["env"]
    return {e["name"]: str(e["value"]) for e in env}


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_manifests_validate_strictly(kustomization: str, tmp_path: Path) -> None:
    objects = render(kustomization)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    done = _run(_tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", "--quiet", str(rendered))
    assert done.returncode == 0, f"{kustomization}:\n{done.stdout}{done.stderr}"
    for o in objects:
        kind = (o["apiVersion"], o["kind"])
        assert kind in BUILTIN_KINDS or kind in CRD_SCHEMAS, f"{kind}: no schema checks it (add one here)"
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"


def _js_schema(path: Path) -> Obj:
    """The `const schema = {...};` literal of a kubernetes-models module (it is JSON)."""
    if not path.is_file():
        _unavailable(f"{path} not found (npm ci --prefix deploy/k8s/crd-schemas)")
    text = path.read_text()
    start = text.index("const schema = ") + len("const schema = ")
    schema: Obj = json.loads(text[start : text.index("\n};", start) + 2])
    return schema


def _closed(schema: Any) -> Any:
    """Unknown fields refused, as `kubectl apply --validate=strict` does for a structural CRD schema:
    every object schema that lists its properties gets additionalProperties false."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def _apimachinery() -> Registry[Any]:
    """The shared schemas CRD schemas point at ("$ref": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"),
    each under the id its module registers it with."""
    resources = []
    for path in sorted((NODE_MODULES / "apimachinery" / "_schemas").glob("*.js")):
        registered = re.search(r'register\)\("([^"]+)", schema\)', path.read_text())
        if registered is not None:
            schema = Resource.from_contents(_closed(_js_schema(path)), default_specification=DRAFT7)
            resources.append((registered.group(1), schema))
    assert resources, "no apimachinery schemas found"
    return Registry().with_resources(resources)


def crd_validator(api_version: str, kind: str) -> Draft7Validator:
    schema = _closed(_js_schema(CRD_SCHEMAS[(api_version, kind)]))
    return Draft7Validator(schema, registry=_apimachinery())


def crd_errors(o: Obj) -> list[str]:
    validator = crd_validator(o["apiVersion"], o["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(o)]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_crd_objects_match_their_schema(kustomization: str) -> None:
    for o in render(kustomization):
        if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS:
            assert crd_errors(o) == [], f"{o['kind']}/{o['metadata']['name']}"


def test_crd_check_refuses_unknown_and_mistyped_fields() -> None:
    scaled = find(render("overlays/keda"), "ScaledObject", WORKER)
    typo = copy.deepcopy(scaled)
    typo["spec"]["minReplicas"] = 2  # the HPA's name for minReplicaCount
    assert any("minReplicas" in e for e in crd_errors(typo))
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["maxReplicaCount"] = "20"
    assert crd_errors(wrong_type) != []
    bad_meta = copy.deepcopy(scaled)
    bad_meta["metadata"]["labels"] = {"a": 1}  # through the ObjectMeta $ref
    assert crd_errors(bad_meta) != []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    done = _run(_tool("hadolint"), "--no-color", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


# --- invariants ------------------------------------------------------------------------------------


def settings_of(env: dict[str, str]) -> Settings:
    """The worker's settings from its manifest environment: an unknown or invalid ANTIPHON_* fails."""
    try:
        return load_settings(None, env)
    except ConfigError as exc:
        pytest.fail(f"the worker's environment is not a valid configuration: {exc}")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_worker_drains_within_its_grace_period(kustomization: str) -> None:
    worker = find(render(kustomization), "Deployment", WORKER)
    pod = worker["spec"]["template"]["spec"]
    env = worker_env(render(kustomization))
    assert "ANTIPHON_SERVER_SHUTDOWN_GRACE_S" in env, "set the drain explicitly, beside the grace period"
    drain_s = settings_of(env).server.shutdown_grace_s
    pre_stop_s = container(worker, "antiphon")["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGTERM comes after preStop; the drain, then closing the models, must end before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_worker_probes_are_native_grpc_health(kustomization: str) -> None:
    objects = render(kustomization)
    worker = find(objects, "Deployment", WORKER)
    main = container(worker, "antiphon")
    settings = settings_of(worker_env(objects))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(main[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert main[probe]["grpc"]["port"] == settings.server.port, probe
        assert main[probe]["grpc"].get("service", "") == "", f"{probe}: the overall service is ''"
    # A worker draining (NOT_SERVING) must never be restarted by its liveness probe.
    live = main["livenessProbe"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert live["periodSeconds"] * live["failureThreshold"] > grace


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_worker_listens_where_envoy_kubelet_and_prometheus_reach_it(kustomization: str) -> None:
    objects = render(kustomization)
    worker = find(objects, "Deployment", WORKER)
    s = settings_of(worker_env(objects))
    # Service links would add ANTIPHON_SERVICE_HOST, ANTIPHON_PORT_... (the Service `antiphon`) to the settings' env.
    assert worker["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert (s.server.host, s.telemetry.metrics_host) == ("0.0.0.0", "0.0.0.0")
    assert s.context.sessions == "redis", "workers share sessions, keys and buckets through Redis"
    ports = {p["name"]: p["containerPort"] for p in container(worker, "antiphon")["ports"]}
    assert ports == {"grpc": s.server.port, "metrics": s.telemetry.metrics_port}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(s.telemetry.metrics_port)
    headless = find(objects, "Service", "antiphon-workers")
    assert headless["spec"]["clusterIP"] == "None", "Envoy's STRICT_DNS needs every pod's address"
    assert headless["spec"]["selector"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert s.server.port in {p["port"] for p in headless["spec"]["ports"]}


def test_streams_metric_is_the_servers_gauge() -> None:
    names = {m.name for m in Metrics.create().registry.collect()}
    assert STREAMS_METRIC in names


@pytest.mark.parametrize("kustomization", ["base", "overlays/sentinel", "overlays/triton"])
def test_hpa_scales_workers_on_open_streams_and_cpu(kustomization: str) -> None:
    objects = render(kustomization)
    hpa = find(objects, "HorizontalPodAutoscaler", WORKER)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER}
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [STREAMS_METRIC]
    assert pods[0]["target"]["type"] == "AverageValue"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert hpa["spec"]["minReplicas"] >= 2, "one worker left alone cannot drain without an outage"
    rules = yaml.safe_load(find(objects, "ConfigMap", "antiphon-prometheus-adapter")["data"]["config.yaml"])
    assert STREAMS_METRIC in {r["name"]["as"] for r in rules["rules"]}, "prometheus-adapter must serve it"


def test_keda_overlay_replaces_the_hpa_and_scales_on_open_streams() -> None:
    objects = render("overlays/keda")
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"], "KEDA owns the HPA"
    scaled = find(objects, "ScaledObject", WORKER)
    assert scaled["spec"]["scaleTargetRef"]["name"] == WORKER
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert STREAMS_METRIC in triggers["prometheus"]["metadata"]["query"]
    assert triggers["prometheus"]["metricType"] == "AverageValue"
    assert "cpu" in triggers


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pdbs_cover_workers_and_envoy(kustomization: str) -> None:
    objects = render(kustomization)
    for name in (WORKER, ENVOY):
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            o
            for o in objects
            if o["kind"] == "PodDisruptionBudget" and o["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert pdbs, f"no PodDisruptionBudget selects {name}"
        assert all(p["spec"].get("maxUnavailable", 0) != 0 for p in pdbs), "a PDB that blocks every drain"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_runs_non_root_read_only_without_capabilities(kustomization: str) -> None:
    for where, template in pod_templates(render(kustomization)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert "add" not in sc["capabilities"], f"{where}/{c['name']}"


def test_worker_user_is_the_images_user() -> None:
    user = re.search(r"^USER (\d+)(?::(\d+))?$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None, "the Dockerfile must switch to a numeric non-root user"
    pod = find(render("base"), "Deployment", WORKER)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.group(1)) == 10001


def test_writable_paths_are_volumes() -> None:
    """A read-only root: every directory the worker writes is a mounted volume."""
    objects = render("base")
    worker = find(objects, "Deployment", WORKER)
    mounts = [m["mountPath"] for m in container(worker, "antiphon")["volumeMounts"]]
    s = settings_of(worker_env(objects))
    written = [s.tools.storage_dir, s.tools.cache_dir, s.context.memory_dir, s.auth.keys_file, "/tmp"]
    for path in written:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path
    for read_only in (s.models.dir, s.tools.dir):
        assert not any(read_only.startswith(m) for m in mounts), f"{read_only} comes from the image"


def _envoy_drain_script(objects: list[Obj]) -> str:
    envoy = find(objects, "Deployment", ENVOY)
    command = container(envoy, "envoy")["lifecycle"]["preStop"]["exec"]["command"]
    return " ".join(command)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_envoy_drains_its_listeners_before_it_stops(kustomization: str) -> None:
    objects = render(kustomization)
    script = _envoy_drain_script(objects)
    assert "POST /drain_listeners?graceful" in script
    assert "/dev/tcp/127.0.0.1/9901" in script, "the drain goes to Envoy's admin port"
    sleep = re.search(r"sleep (\d+)\s*$", script)
    assert sleep is not None, "the preStop waits for the streams after the drain"
    grace = find(objects, "Deployment", ENVOY)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(sleep.group(1))


def _envoy_config(objects: list[Obj]) -> Obj:
    envoy = find(objects, "Deployment", ENVOY)
    (volume,) = [v for v in envoy["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    configmap = find(objects, "ConfigMap", volume["configMap"]["name"])  # the generated, hashed name
    config: Obj = yaml.safe_load(configmap["data"]["envoy.yaml"])
    return config


def _addresses(node: Any) -> Iterator[Obj]:
    if isinstance(node, dict):
        if "socket_address" in node:
            yield node["socket_address"]
        for value in node.values():
            yield from _addresses(value)
    elif isinstance(node, list):
        for value in node:
            yield from _addresses(value)


def test_envoy_deployment_matches_the_shipped_envoy_config() -> None:
    objects = render("base")
    config = _envoy_config(objects)
    admin = list(_addresses(config["admin"]))
    assert [a["port_value"] for a in admin] == [9901]
    # The readiness probe reaches the admin port from the kubelet, so it listens on the pod's address.
    assert admin[0]["address"] in ("0.0.0.0", "::")
    listeners = {a["port_value"] for a in _addresses(config["static_resources"]["listeners"])}
    ports = {p["name"]: p["containerPort"] for p in container(find(objects, "Deployment", ENVOY), "envoy")["ports"]}
    assert ports == {"grpc": 8080, "admin": 9901}
    assert 8080 in listeners
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "antiphon_workers"]
    assert cluster["type"] == "STRICT_DNS"
    upstream = list(_addresses(cluster["load_assignment"]))
    assert upstream, "antiphon_workers names no address"
    assert all(a["address"].split(".")[0] == "antiphon-workers" and a["port_value"] == 50051 for a in upstream)


def test_sentinel_overlay_points_workers_at_the_sentinels() -> None:
    objects = render("overlays/sentinel")
    s = settings_of(worker_env(objects))
    sentinels = find(objects, "StatefulSet", "redis-sentinel")
    service = sentinels["spec"]["serviceName"]
    port = container(sentinels, "sentinel")["ports"][0]["containerPort"]
    expected = [f"redis-sentinel-{i}.{service}:{port}" for i in range(sentinels["spec"]["replicas"])]
    assert s.context.redis_sentinels == expected
    scripts = next(o for o in objects if o["metadata"]["name"].startswith("redis-sentinel-scripts"))
    assert f"sentinel monitor {s.context.redis_master} " in scripts["data"]["sentinel-start.sh"]
    assert sentinels["spec"]["replicas"] == 3
    assert find(objects, "StatefulSet", "redis")["spec"]["replicas"] == 3
    assert s.context.redis_min_replicas_ack >= 1, "a failover must not lose an acknowledged write"


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    objects = render("base")
    conf = find(objects, "ConfigMap", "redis-config")["data"]["redis.conf"]
    assert re.search(r"^appendonly yes$", conf, re.MULTILINE)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.MULTILINE), "sessions must never be evicted"
    redis = find(objects, "StatefulSet", "redis")
    assert [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]] == ["data"]


def test_triton_overlay_switches_workers_and_scales_on_queue_time() -> None:
    objects = render("overlays/triton")
    s = settings_of(worker_env(objects))
    assert s.models.backend == "triton"
    host, _, port = s.models.triton_url.partition(":")
    service = find(objects, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    triton = container(find(objects, "Deployment", "triton"), "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe"):
        assert triton[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    hpa = find(objects, "HorizontalPodAutoscaler", "triton")
    rules = yaml.safe_load(find(objects, "ConfigMap", "antiphon-prometheus-adapter")["data"]["config.yaml"])
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"]]
    (rule,) = [r for r in rules["rules"] if r["name"]["as"] == pods["metric"]["name"]]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
