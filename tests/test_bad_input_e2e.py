"""A client's mistakes get the protocol's answer; the connection stays usable where it says so."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import StartGateway
from websockets.exceptions import ConnectionClosedError, InvalidStatus

DEMO_FAST = "[provider]\ndemo_delay_ms = 0\n"


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1, 2]",
        '"just a string"',
        '{"no_type": 1}',
        '{"type": 42}',
        '{"type": "launch_missiles"}',
        '{"type": "message", "id": 5, "content": "x"}',
        '{"type": "message", "id": "a", "content": ["x"]}',
        '{"type": "message", "id": "a", "content": "   "}',
        '{"type": "cancel"}',
        '{"type": "resume", "reply_id": "r", "after_seq": -1}',
        '{"type": "resume", "reply_id": "r", "after_seq": true}',
        '{"type": "ping", "id": {"x": 1}}',
    ],
)
async def test_bad_frames_get_bad_request_and_connection_stays(start_gateway: StartGateway, frame: str) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.ws.send(frame)
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and error["retryable"] is False
        assert "Traceback" not in error["message"]
        await chat.send(type="ping", id="still-alive")
        assert await chat.expect("pong") == {"type": "pong", "id": "still-alive"}


async def test_bad_request_echoes_the_frame_id(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.ws.send('{"type": "message", "id": "abc", "content": 1}')
        error = await chat.expect("error")
    assert error["id"] == "abc"


async def test_binary_frame_is_bad_request(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.ws.send(b'{"type": "ping"}')
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and "binary" in error["message"]
        await chat.send(type="ping")
        await chat.expect("pong")


async def test_message_over_content_limit_is_too_large(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST + "[limits]\nmax_content_chars = 10\n")
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="big", content="x" * 11)
        error = await chat.expect("error")
        assert error["code"] == "too_large" and error["id"] == "big"
        ready = await chat.hello(conversation_id)
    assert ready["history"] == [], "nothing was stored"


async def test_oversize_frame_closes_with_1009(start_gateway: StartGateway) -> None:
    gw = await start_gateway(env={"GATEWAY_MAX_MESSAGE_BYTES": "1024"}, toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="message", id="m", content="y" * 2000)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(chat.ws.recv(), 5)
    assert chat.ws.close_code == 1009


async def test_invalid_utf8_closes_with_1007(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.ws.send(b'{"type":"ping","id":"\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(chat.ws.recv(), 5)
    assert chat.ws.close_code == 1007


async def test_cancel_of_unknown_reply_is_not_found(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="cancel", reply_id="f" * 32)
        error = await chat.expect("error")
    assert error["code"] == "not_found"


async def test_resume_past_the_end_is_bad_request(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        _, events = await chat.ask("hi")
        reply_id = events[0]["reply_id"]
        await chat.send(type="resume", reply_id=reply_id, after_seq=10_000)
        error = await chat.expect("error")
        assert error["code"] == "bad_request"
        await chat.send(type="resume", reply_id=reply_id, after_seq=0)
        text, _ = await chat.until_done()
    assert text.startswith("This is the **demo model**"), "a finished reply can still be replayed whole"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1", "null"])
async def test_disallowed_origin_is_refused_at_handshake(start_gateway: StartGateway, origin: str) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    with pytest.raises(InvalidStatus) as info:
        async with gw.raw(origin=origin, subprotocols=["chat.v1"]):
            pass
    assert info.value.response.status_code == 403


async def test_allowed_origins(start_gateway: StartGateway) -> None:
    gw = await start_gateway(env={"GATEWAY_ALLOWED_ORIGINS": "https://chat.example.com"}, toml=DEMO_FAST)
    async with gw.chat(origin="https://chat.example.com") as chat:
        await chat.hello()
    async with gw.chat() as chat:  # no Origin: scripts are allowed
        await chat.hello()
    with pytest.raises(InvalidStatus):
        async with gw.raw(origin=f"http://127.0.0.1:{gw.gateway.http_port}"):
            pass


async def test_own_page_origin_allowed_by_default(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    port = gw.gateway.http_port
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"HTTP://LOCALHOST:{port}"):
        async with gw.chat(origin=origin) as chat:
            await chat.hello()
    with pytest.raises(InvalidStatus):
        async with gw.raw(origin=f"http://127.0.0.1:{port + 1}"):
            pass


async def test_wrong_path_and_unknown_subprotocol(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    from websockets.asyncio.client import connect

    with pytest.raises(InvalidStatus) as info:
        async with connect(gw.ws_url.replace("/chat", "/other")):
            pass
    assert info.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as info:
        async with gw.raw(subprotocols=["graphql-ws"]):
            pass
    assert info.value.response.status_code == 400


async def test_plain_mode_errors_are_text_frames(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST + "[limits]\nmax_content_chars = 5\n")
    async with gw.raw() as ws:
        await ws.send(b"\x00")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("Error: ")
        await ws.send("123456")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("Error: ")
        await ws.send("   ")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("Error: ")


async def test_max_connections_closes_with_1013(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST + "[limits]\nmax_connections = 1\n")
    async with gw.chat() as first:
        await first.hello()
        async with gw.chat() as second:
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(second.ws.recv(), 5)
            assert second.ws.close_code == 1013
        await first.send(type="ping")
        await first.expect("pong")


async def test_no_traceback_logged_for_client_mistakes(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        for frame in ["{bad", "[]", '{"type":"nope"}']:
            await chat.ws.send(frame)
            await chat.expect("error")
    with pytest.raises(InvalidStatus):
        async with gw.raw(origin="https://evil.example"):
            pass
    out = capsys.readouterr().out
    assert "Traceback" not in out and "exception" not in out.lower()
    assert orjson.dumps("handshake_refused").decode().strip('"') in out


async def test_duplicate_message_id_is_refused_and_history_intact(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.ask("first", "same-id")
        await chat.send(type="message", id="same-id", content="second")
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and error["id"] == "same-id"
        ready = await chat.hello(conversation_id)
    assert [m["role"] for m in ready["history"]] == ["user", "assistant"]
    assert ready["history"][0]["content"] == "first"


async def test_resume_on_a_connection_already_watching_is_refused(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 5\n")
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="hi")
        start = await chat.expect("reply.start")
        await chat.send(type="resume", reply_id=start["reply_id"], after_seq=0)
        text, events = await chat.until_done()
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "bad_request"
    assert text.count("This is the **demo model**") == 1, "no text repeated"


async def test_big_history_does_not_trip_the_slow_client_bound(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST + "[limits]\nmax_pending_bytes = 1024\n")
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.ask("x" * 2000)
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
    assert ready["history"][0]["content"] == "x" * 2000
