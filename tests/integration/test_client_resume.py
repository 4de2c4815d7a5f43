"""The Go and TypeScript SDKs' resuming conversations through Envoy when the worker holding the session
is SIGKILLed: two `antiphon serve` workers with Redis sessions, one Redis, and Envoy with the shipped
config (the cluster of tests/integration/test_scale_out.py).

Each client's driver (clients/go/antiphon/resume_kill_test.go, clients/ts/test/resume-after-kill.test.ts)
does one turn and creates its READY file; this test kills the lease holder, waits until the session's
lease is with the other worker (the driver's reader resumed it), and creates GO; the driver's next turn
must then be answered on the resumed stream, with the first turn still in the session's history.

A missing Go or Node toolchain skips a case, unless ANTIPHON_REQUIRE_TOOLCHAIN=1 (Go),
ANTIPHON_REQUIRE_NODE=1 (Node) or ANTIPHON_REQUIRE_CLIENTS=1 (both, as make test sets).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiphon_client import AntiphonClient
from tests.envoy_proxy import EnvoyProxy
from tests.eventually import eventually
from tests.integration.conftest import REPO
from tests.integration.test_scale_out import Cluster, Worker, running_cluster

GO_PACKAGE = "github.com/antiphon/antiphon"
TS_DIR = REPO / "clients" / "ts"
BUILD_BOUND_S = 300  # a cold Go build on two cores; cached runs take seconds
READY_BOUND_S = 30  # the driver's first turn (8 tokens)
MOVED_BOUND_S = 10  # the dead worker's heartbeat TTL (2 s) plus the clients' backoff, with room
DRIVER_BOUND_S = 60


def _toolchain(name: str, require: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (make setup installs the client toolchains)"
        if os.environ.get(require) == "1" or os.environ.get("ANTIPHON_REQUIRE_CLIENTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def go_driver(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Go package's test binary, built once, running only the resume driver."""
    go = _toolchain("go", "ANTIPHON_REQUIRE_TOOLCHAIN")
    gopath = REPO / "build" / "gopath"
    link = gopath / "src" / GO_PACKAGE
    if not link.exists():
        pytest.fail("the Go workspace is missing: make build (it links the repository into build/gopath)")
    binary = tmp_path_factory.mktemp("go") / "antiphon.test"
    env = {
        **os.environ,
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "GO111MODULE": "off",
        "GOCACHE": str(REPO / "build" / "go-cache"),
    }
    argv = [go, "test", "-c", "-o", str(binary), "./clients/go/antiphon/"]
    built = subprocess.run(argv, cwd=link, env=env, capture_output=True, text=True, check=False, timeout=BUILD_BOUND_S)
    assert built.returncode == 0, f"{' '.join(argv)} failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    return [str(binary), "-test.run", "^TestResumeAfterKill$", "-test.v", "-test.count=1"]


@pytest.fixture(scope="module")
def node_driver() -> list[str]:
    node = _toolchain("node", "ANTIPHON_REQUIRE_NODE")
    script = TS_DIR / "dist" / "test" / "resume-after-kill.test.js"
    if not script.is_file():
        pytest.fail("the TypeScript client is not built: make build (npm run --prefix clients/ts build)")
    sources = [*TS_DIR.glob("src/*.ts"), *TS_DIR.glob("test/*.ts")]
    if any(s.stat().st_mtime > script.stat().st_mtime for s in sources):
        pytest.fail("clients/ts/dist is older than its sources: make build (npm run --prefix clients/ts build)")
    return [node, "--test", "--test-reporter=spec", str(script)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory, 2, "resume") as c:
        yield c


async def test_go_client_resumes_after_its_worker_is_killed(
    go_driver: list[str], cluster: Cluster, tmp_path: Path
) -> None:
    await _drive_through_a_kill(cluster, go_driver, "go-resume", tmp_path)


async def test_typescript_client_resumes_after_its_worker_is_killed(
    node_driver: list[str], cluster: Cluster, tmp_path: Path
) -> None:
    await _drive_through_a_kill(cluster, node_driver, "ts-resume", tmp_path)


async def _drive_through_a_kill(c: Cluster, argv: list[str], session: str, tmp_path: Path) -> None:
    assert c.envoy is not None
    await _two_routable_workers(c, c.envoy)
    by_id = await _worker_ids(c)
    ready, go, log_path = tmp_path / "ready", tmp_path / "go", tmp_path / "driver.log"
    env = {
        **os.environ,
        "ANTIPHON_RESUME_ADDR": c.envoy.address,
        "ANTIPHON_RESUME_SESSION": session,
        "ANTIPHON_RESUME_READY": str(ready),
        "ANTIPHON_RESUME_GO": str(go),
    }
    with log_path.open("wb") as log:  # the child keeps its own copy
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        await eventually(lambda: ready.exists() or proc.returncode is not None, timeout_s=READY_BOUND_S)
        assert ready.exists(), f"the driver exited {proc.returncode} before its first turn ended:\n{output()}"
        victim = by_id[_lease_holder(c, session)]
        (survivor,) = [wid for wid, w in by_id.items() if w is not victim]
        victim.proc.kill()
        killed = time.monotonic()
        await asyncio.to_thread(victim.proc.wait, 10)
        moved = await _moved(c, session, survivor)
        moved_s = time.monotonic() - killed
        go.touch()  # even when the session did not move: the driver then says what it saw
        code = await asyncio.wait_for(proc.wait(), DRIVER_BOUND_S)
    except TimeoutError:
        pytest.fail(f"the driver did not finish within {DRIVER_BOUND_S} s:\n{output()}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert moved, f"the session did not move within {MOVED_BOUND_S} s: {c.leases(session)}\n{output()}"
    assert code == 0, f"the driver exited {code}:\n{output()}"
    print(f"{Path(argv[0]).name}: the session moved {moved_s:.2f} s after the kill\n{output()}")
    c.publish()  # Envoy forgets the dead worker


async def _moved(c: Cluster, session: str, to: str) -> bool:
    """Whether the session's lease is with worker `to` within the bound (the driver resumed there)."""
    try:
        await eventually(lambda: _lease_holder(c, session) == to, timeout_s=MOVED_BOUND_S)
    except AssertionError:
        return False
    return True


async def _two_routable_workers(c: Cluster, envoy: EnvoyProxy) -> None:
    """Replace a worker an earlier case killed, and wait until Envoy routes to both."""
    if len(c.live()) < 2:
        c.wait_serving([c.spawn() for _ in range(2 - len(c.live()))])
    c.publish()
    ports = {w.port for w in c.live()}
    await eventually(lambda: ports <= envoy.healthy_hosts(), timeout_s=30, message=envoy.log_tail)


async def _worker_ids(c: Cluster) -> dict[str, Worker]:
    """Each live worker's session-store id (what a lease names), from a session opened on it directly."""
    by_id: dict[str, Worker] = {}
    for w in c.live():
        probe = f"whoami-{uuid.uuid4().hex[:8]}"
        async with AntiphonClient(f"127.0.0.1:{w.port}") as client:
            conv = await client.conversation(session_id=probe)
            by_id[_lease_holder(c, probe)] = w
            await conv.end()
            async for _ in conv.events():  # to its end: the lease is given back
                pass
    assert len(by_id) == len(c.live()), by_id
    return by_id


def _lease_holder(c: Cluster, session: str) -> str:
    """The worker id the session's lease names ("" when none holds it)."""
    holders = {worker for worker, _ in c.leases(session).values()}
    assert len(holders) <= 1, holders
    return holders.pop() if holders else ""
