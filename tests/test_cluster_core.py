"""The pure parts of cluster mode: following a remote reply from a seq (gaps, copies,
the end), the payloads instances exchange, a reply's deltas for shipping, and the
configuration's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config
from redisserver import RedisServer

from gateway.cluster import names, scripts
from gateway.cluster.mirror import Mirror
from gateway.errors import ConfigError, ErrorCode, GatewayError
from gateway.events import ReplyDelta, ReplyEnded, ReplyEvent, ReplyStarted
from gateway.providers import Usage
from gateway.replylog import ReplyLog


class Tab:
    def __init__(self) -> None:
        self.events: list[ReplyEvent] = []

    def reply_event(self, event: ReplyEvent) -> None:
        self.events.append(event)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ReplyDelta))

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events if isinstance(e, ReplyDelta)]


def end(seq: int, finish: str = "stop") -> names.RemoteEnd:
    return names.RemoteEnd(seq, ReplyEnded("r1", "m1", finish))


def test_live_deltas_go_to_followers_in_order_and_copies_are_dropped() -> None:
    mirror, a, b = Mirror("r1", "c1", "m1"), Tab(), Tab()
    mirror.add(a, 0)
    mirror.add(b, 2)  # resumed after seq 2, which it got from the owner itself
    assert not mirror.delta(1, "one ")
    assert not mirror.delta(2, "two ")
    assert not mirror.delta(2, "two ")  # a copy (a repair raced the live message)
    assert not mirror.delta(3, "three")
    assert (a.text, a.seqs) == ("one two three", [1, 2, 3])
    assert (b.text, b.seqs) == ("three", [3])


def test_a_gap_asks_for_a_repair_and_the_log_fills_it_once() -> None:
    mirror, a = Mirror("r1", "c1", "m1"), Tab()
    mirror.add(a, 1)
    assert mirror.delta(4, "four")  # 2 and 3 were lost by pub/sub
    assert a.events == [] and mirror.lowest == 1
    assert not mirror.caught_up([(2, "two ", False), (3, "three ", False), (4, "four", False)], None)
    assert mirror.delta(5, "five") is False
    assert (a.text, a.seqs) == ("two three fourfive", [4, 5])


def test_the_end_waits_for_every_delta_before_it() -> None:
    mirror, a, b = Mirror("r1", "c1", "m1"), Tab(), Tab()
    mirror.add(a, 3)
    mirror.add(b, 1)
    assert mirror.ended(end(3))  # b misses 2 and 3: a repair is due
    assert a.events[-1] == end(3).event and a not in mirror.positions
    assert not mirror.caught_up([(2, "b", False), (3, "c", False)], end(3))
    assert (b.text, b.events[-1]) == ("bc", end(3).event)
    assert mirror.done


def test_what_the_log_no_longer_has_is_reported_and_followers_told() -> None:
    mirror, a = Mirror("r1", "c1", "m1"), Tab()
    mirror.add(a, 1)
    assert mirror.caught_up([(5, "five", False)], end(5))  # 2..4 are gone from the log
    lost = ReplyEnded("r1", "m1", "error", None, GatewayError(ErrorCode.RESUME_UNAVAILABLE, "gone"))
    mirror.lost(lost)
    assert a.events == [lost] and mirror.done


def test_payloads_round_trip() -> None:
    error = GatewayError(ErrorCode.OVERLOADED, "restarting", retry_after=1)
    event = ReplyEnded("r1", "m1", "error", Usage(5, 7), error)
    back = names.decode_end("r1", names.encode_end(9, event))
    assert back.seq == 9 and back.event[:3] == event[:3] and back.event.usage == Usage(5, 7)
    assert back.event.error is not None
    assert (back.event.error.code, back.event.error.message, back.event.error.retry_after) == (
        ErrorCode.OVERLOADED, "restarting", 1,
    )
    assert names.decode_end("r1", names.encode_end(2, ReplyEnded("r1", "m1", "stop"))).event == ReplyEnded(
        "r1", "m1", "stop"
    )
    started = ReplyStarted("r1", "c1", "m1", None, "héllo ✓")
    assert names.decode_start(names.encode_start(started, "i1")) == (started, "i1")


def test_a_reply_log_gives_its_deltas_one_by_one_from_any_seq() -> None:
    log = ReplyLog(10_000)
    for n in range(300):  # past the compaction of the first 256
        assert log.append(f"<{n}>")
    assert log.deltas(300) == []
    for after in (0, 1, 127, 128, 255, 256, 299):
        assert log.deltas(after) == [f"<{n}>" for n in range(after, 300)]
    with pytest.raises(ValueError):
        log.deltas(301)


def test_cluster_mode_needs_the_postgres_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        make_config(tmp_path, {"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert refused.value.key == "cluster.redis_url" and "postgres" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        make_config(tmp_path, {"GATEWAY_REDIS_URL": "http://127.0.0.1:6379/0"})
    assert refused.value.key == "GATEWAY_REDIS_URL"


def test_the_redis_password_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret-redis-pw\n")
    env = {
        "GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": "postgresql://gateway@127.0.0.1/gateway",
        "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0", "GATEWAY_REDIS_PASSWORD_FILE": str(secret),
    }
    cfg = make_config(tmp_path, env)
    assert cfg.cluster.enabled and cfg.cluster.password == "s3cret-redis-pw"
    assert "s3cret" not in repr(cfg)
    from gateway import config

    assert "s3cret" not in config.render(cfg) and 'redis_url = "redis://127.0.0.1:6379/0"' in config.render(cfg)
    missing = {**env, "GATEWAY_REDIS_PASSWORD_FILE": str(tmp_path / "nope")}
    with pytest.raises(ConfigError) as refused:
        make_config(tmp_path, missing)
    assert refused.value.key == "cluster.password_file"


def test_a_follower_added_twice_keeps_its_position() -> None:
    mirror, a = Mirror("r1", "c1", "m1"), Tab()
    assert mirror.add(a, 3)
    assert not mirror.add(a, 0)  # a start heard twice must not replay the text
    assert mirror.positions[a] == 3


def test_shipping_twice_is_harmless(redis_server: RedisServer) -> None:
    """A batch whose answer was lost (a timeout after Redis ran it) is sent again: the
    registration, the deltas and the end are applied once."""
    redis_server.flushall()
    with redis_server.client() as client:
        ship = client.register_script(scripts.SHIP)
        batch = [60_000, 60_000, "me",
                 "R", "r1", "c1", "m1", "me", 1, 0, "model", "m1", "r1",
                 "A", "r1", 1, 0, 9, 2, "", "one ", "two's",
                 "E", "r1", 1, 2, b'{"seq":2}', "c1", 0]
        assert ship(args=batch) == [b"ok", b"ok", b"ok"]
        assert ship(args=batch) == [b"ok", b"fenced", b"fenced"]  # ended: nothing more is written
        entries = client.xrange(names.log("r1"))
        assert [(i, f[b"t"]) for i, f in entries] == [(b"1-0", b"one "), (b"2-0", "two's".encode())]
        assert client.hget(names.reply("r1"), "state") == b"ended"
        again = [60_000, 60_000, "me", "R", "r2", "c2", "m2", "me", 1, 0, "model", "m2", "r2", "A", "r2", 1, 0, 3, 1, "", "abc"]
        assert ship(args=again) == [b"ok", b"ok"]
        assert ship(args=again) == [b"ok", b"ok"]  # registered once: the retry does not reset it
        assert client.hget(names.reply("r2"), "seq") == b"1" and client.xlen(names.log("r2")) == 1


def test_reasoning_is_logged_and_published_apart_from_the_text(redis_server: RedisServer) -> None:
    """Kinds ``rrt``: two reasoning entries (field r, published as R) then text (t, D)."""
    redis_server.flushall()
    with redis_server.client() as client, client.pubsub() as sub:
        sub.subscribe(names.reply_channel("r1"))
        assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        ship = client.register_script(scripts.SHIP)
        batch = [60_000, 60_000, "me", "R", "r1", "c1", "m1", "me", 1, 0, "model", "m1", "r1",
                 "A", "r1", 1, 0, 9, 3, "rrt", "hmm ", "so", "Yes"]
        assert ship(args=batch) == [b"ok", b"ok"]
        entries = client.xrange(names.log("r1"))
        assert [(i, f) for i, f in entries] == [
            (b"1-0", {b"r": b"hmm "}), (b"2-0", {b"r": b"so"}), (b"3-0", {b"t": b"Yes"}),
        ]
        published = [sub.get_message(timeout=5) for _ in range(3)]
        assert [m["data"] for m in published if m] == [b"R1\nhmm ", b"R2\nso", b"D3\nYes"]
