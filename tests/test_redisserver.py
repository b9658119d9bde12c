"""The Redis test helper itself: password, restart on the same port, Pub/Sub kills."""

from __future__ import annotations

import stat

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redisserver import REDIS_PASSWORD, RedisServer


def test_ping_needs_the_password(redis_env: dict[str, str], redis_server: RedisServer) -> None:
    assert redis_env["GATEWAY_REDIS_URL"] == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.password_file.read_text().strip() == REDIS_PASSWORD
    assert stat.S_IMODE(redis_server.password_file.stat().st_mode) == 0o600
    with redis_server.client() as client:
        assert client.ping()
    no_retry = Retry(NoBackoff(), 0)
    with redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5, retry=no_retry) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()


def test_restart_and_crash_lose_keys(redis_env: dict[str, str], redis_server: RedisServer) -> None:
    port = redis_server.port
    with redis_server.client() as client:
        client.set(b"k", b"v")
        redis_server.restart()
        assert redis_server.port == port
        assert client.get(b"k") is None  # the client reconnects to the new server
        client.set(b"k", b"v")
        redis_server.kill()
        assert not redis_server.running
        redis_server.start()
        assert client.get(b"k") is None


def test_kill_pubsub_clients(redis_env: dict[str, str], redis_server: RedisServer) -> None:
    with redis_server.client() as client, client.pubsub() as pubsub:
        pubsub.subscribe("events")
        confirmation = pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        assert redis_server.kill_pubsub_clients() >= 1
        assert client.client_list(_type="pubsub") == []
