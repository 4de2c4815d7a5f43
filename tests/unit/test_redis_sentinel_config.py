"""[context] redis_sentinels and replica acknowledgement: validation, and the clients they build."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from antiphon.app import App
from antiphon.config import ConfigError, ContextSettings, load_settings
from antiphon.preflight import StartupError
from antiphon.redis_support import (
    AckedPipeline,
    AckedRedis,
    BlockingSentinelPool,
    RediscoveringConnection,
    close_redis,
    redis_client,
)
from tests.conftest import test_settings
from tests.fakes import FakeLLM
from tests.redis_server import free_port


def test_sentinels_from_toml_or_comma_separated_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[context]\nredis_sentinels = ["10.0.0.1:26379", "[::1]:26380"]\nredis_master = "main"\n')
    assert load_settings(path, {}).context.redis_sentinels == ["10.0.0.1:26379", "[::1]:26380"]
    env = {"ANTIPHON_CONTEXT_REDIS_SENTINELS": " s1:26379, s2:26379 ,", "ANTIPHON_CONTEXT_REDIS_MIN_REPLICAS_ACK": "1"}
    c = load_settings(None, env).context
    assert (c.redis_sentinels, c.redis_min_replicas_ack) == (["s1:26379", "s2:26379"], 1)
    assert load_settings(None, {}).context.redis_sentinels == []  # off unless set


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_SENTINELS": "s1:26379,nohost"}, r"context\.redis_sentinels\[1\]: must be host:port, got 'nohost'"),
        ({"REDIS_SENTINELS": "s1:0"}, r"context\.redis_sentinels\[0\]: must be host:port"),
        ({"REDIS_SENTINELS": "s1:99999"}, r"context\.redis_sentinels\[0\]"),
        ({"REDIS_SENTINELS": "s1:1", "REDIS_URL": "rediss://x:1/0"}, r"context\.redis_url: must start with redis://"),
        ({"REDIS_MASTER": "my master"}, r"context\.redis_master: 1\.\.64 of"),
        ({"REDIS_MIN_REPLICAS_ACK": "-1"}, r"context\.redis_min_replicas_ack: must be 0\.\.16"),
        ({"REDIS_REPLICA_ACK_TIMEOUT_MS": "5000"}, r"context\.redis_replica_ack_timeout_ms: must be 10\.\.1500"),
    ],
)
def test_sentinel_settings_errors_name_the_setting(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(None, {f"ANTIPHON_CONTEXT_{k}": v for k, v in env.items()})


async def test_sentinel_client_keeps_the_blocking_pool_timeouts_and_retry() -> None:
    c = ContextSettings(
        sessions="redis",
        redis_url="redis://:secret@ignored.example:6379/3",
        redis_sentinels=["127.0.0.1:26379", "127.0.0.1:26380"],
        redis_master="main",
        redis_sentinel_password="sentinel-secret",
    )
    client = redis_client(c, max_connections=7, timeout_s=1.5)
    try:
        assert type(client) is Redis  # no replica acknowledgement asked for
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        assert isinstance(pool, BlockingConnectionPool)  # callers wait past max_connections
        assert (pool.max_connections, pool.timeout, pool.service_name) == (7, 1.5, "main")
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (3, "secret", 1.5)
        assert "host" not in kwargs  # the sentinels name it
        assert pool.connection_class is RediscoveringConnection  # reconnects through them, retries too
        assert kwargs["retry"].get_retries() == 1
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        assert all(s.connection_pool.connection_kwargs["password"] == "sentinel-secret" for s in sentinels)
    finally:
        await close_redis(client)


async def test_replica_acknowledgement_uses_the_waiting_client_and_pipeline() -> None:
    plain = redis_client(ContextSettings(sessions="redis", redis_url="redis://127.0.0.1:1/0"))
    acked = redis_client(
        ContextSettings(redis_url="redis://127.0.0.1:1/0", redis_min_replicas_ack=2, redis_replica_ack_timeout_ms=80)
    )
    try:
        assert type(plain) is Redis
        assert isinstance(acked, AckedRedis)
        assert (acked.replicas, acked.ack_timeout_ms) == (2, 80)
        pipe = acked.pipeline(transaction=True)
        assert isinstance(pipe, AckedPipeline)
        assert (pipe.replicas, pipe.ack_timeout_ms) == (2, 80)
    finally:
        await close_redis(plain)
        await close_redis(acked)


async def test_start_with_no_sentinel_reachable_names_the_setting() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    settings = test_settings(context={"sessions": "redis", "redis_sentinels": ",".join(dead)})
    app = App(settings, llm=FakeLLM())
    with pytest.raises(StartupError) as caught:
        await app.start()
    message = caught.value.message
    assert message.startswith("context.redis_sentinels: no sentinel answered (")
    assert all(address in message for address in dead)
