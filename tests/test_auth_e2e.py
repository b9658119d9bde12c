"""Every auth mode on a real gateway: the right credential gets in (and `ready` names its
subject), every wrong one is refused the same way, and a JWT that expires while
connected is warned about, renewed by `refresh`, or ends the socket with 1008."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from conftest import Chat, Running, StartGateway, loopback_app, make_config
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.server import Gateway

TOKEN = "tok-0123456789abcdef"
SECRET = "a-shared-secret-of-forty-bytes-or-so-000"
DEMO_FAST = "[provider]\ndemo_delay_ms = 0\n"


@pytest.fixture
def tokens_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "tokens"
    path.write_text(f"# clients\nalice {TOKEN}\nother-token-fedcba9876543210\n")
    return {"GATEWAY_AUTH_TOKENS_FILE": str(path)}


@pytest.fixture
def jwt_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "jwt_secret"
    path.write_text(SECRET)
    return {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": str(path), "GATEWAY_JWT_AUDIENCE": "chat"}


def signed(sub: str = "alice", ttl: float = 300, secret: str = SECRET, **extra: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), "aud": "chat", **extra}, secret, algorithm="HS256")


async def refused_with_1008(chat: Chat, first: dict[str, Any] | str) -> dict[str, Any]:
    """Send ``first``; the gateway answers `unauthorized` and closes with 1008."""
    if isinstance(first, str):
        await chat.ws.send(first)
    else:
        await chat.send(**first)
    error = await chat.expect("error")
    assert error["code"] == "unauthorized" and error["retryable"] is False
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(chat.ws.recv(), 5)
    assert chat.ws.close_code == 1008
    return error


async def status_of_handshake(gw: Any, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with gw.raw(**kwargs):
            pass
    status: int = info.value.response.status_code
    return status


# none


async def test_none_mode_gives_each_key_its_own_subject(start_gateway: StartGateway) -> None:
    gw = await start_gateway(None, DEMO_FAST)
    subjects = []
    for token in ("browser-one-0123456789", "browser-two-0123456789", None):
        async with gw.chat() as chat:
            await chat.send(type="hello", token=token)
            ready = await chat.expect("ready")
            subjects.append(ready["subject"])
    assert subjects[0].startswith("anon:") and subjects[1].startswith("anon:") and subjects[0] != subjects[1]
    assert subjects[2] == "anonymous"
    async with gw.chat() as chat:  # no hello at all: anonymous, as before
        text, _ = await chat.ask("hi")
        assert "demo model" in text


# tokens


async def test_tokens_mode_names_the_subject_and_chats(start_gateway: StartGateway, tokens_env: dict[str, str]) -> None:
    gw = await start_gateway(tokens_env, DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="hello", token=TOKEN)
        ready = await chat.expect("ready")
        assert (ready["subject"], ready["name"]) == ("token:alice", "alice") and "expires_at" not in ready
        text, _ = await chat.ask("hi")
    assert "demo model" in text


@pytest.mark.parametrize(
    "first",
    ['{"type":"hello","token":"wrong-token-000000000"}', '{"type":"hello"}', f'{{"type":"hello","token":"{TOKEN.upper()}"}}',
     '{"type":"message","id":"m","content":"sneaky"}', "{not json", '{"type":"ping"}'],
)
async def test_tokens_mode_refuses_anything_else(
    start_gateway: StartGateway, tokens_env: dict[str, str], first: str
) -> None:
    gw = await start_gateway(tokens_env, DEMO_FAST)
    async with gw.chat() as chat:
        await refused_with_1008(chat, first)
    assert gw.gateway.store is not None
    assert await gw.gateway.store.ids(None, 10) == []  # the sneaky message stored nothing


async def test_bearer_header_authenticates_both_modes(start_gateway: StartGateway, tokens_env: dict[str, str]) -> None:
    gw = await start_gateway(tokens_env, DEMO_FAST)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with gw.chat(additional_headers=headers) as chat:
        await chat.send(type="hello")
        assert (await chat.expect("ready"))["subject"] == "token:alice"
        text, _ = await chat.ask("no token in hello needed")
    assert "no token in hello needed" in text
    async with gw.raw(additional_headers=headers) as ws:
        await ws.send("plain with a token")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("This")
    # A wrong Bearer token is refused at the handshake, in either mode.
    bad = {"additional_headers": {"Authorization": "Bearer wrong-token-000000000"}}
    assert await status_of_handshake(gw, **bad) == 401
    assert await status_of_handshake(gw, subprotocols=["chat.v1"], **bad) == 401
    assert await status_of_handshake(gw) == 401  # plain mode has no hello to wait for


async def test_a_socket_that_never_authenticates_is_closed(start_gateway: StartGateway, tokens_env: dict[str, str]) -> None:
    gw = await start_gateway(tokens_env, DEMO_FAST + "[auth]\ntimeout = 1\n")
    async with gw.chat() as chat:
        error = await chat.expect("error")  # sent nothing at all
        assert error["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(chat.ws.recv(), 5)
    assert chat.ws.close_code == 1008


async def test_short_tokens_are_refused_at_start(start_gateway: StartGateway, tmp_path: Path) -> None:
    (tmp_path / "weak").write_text("short\n")
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        await start_gateway({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "weak")})
    assert info.value.key == "auth.tokens_file"


# proxy (the gateway alone: the peer is the test; Caddy in front is in test_caddy_auth_e2e.py)


async def test_proxy_mode_believes_the_user_header_from_a_trusted_peer_only(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"GATEWAY_AUTH_MODE": "proxy"}, DEMO_FAST)
    async with gw.chat(additional_headers={"Remote-User": "alice"}) as chat:
        await chat.send(type="hello", token="a-token-is-not-needed-here")
        ready = await chat.expect("ready")
        assert (ready["subject"], ready["name"]) == ("user:alice", "alice")
    for headers in ({}, {"Remote-User": ""}, {"Remote-User": "{http.auth.user.id}"}, {"Remote-User": "x" * 200}):
        assert await status_of_handshake(gw, subprotocols=["chat.v1"], additional_headers=headers) == 401
    untrusted = await start_gateway({"GATEWAY_AUTH_MODE": "proxy", "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"}, DEMO_FAST)
    assert await status_of_handshake(untrusted, additional_headers={"Remote-User": "alice"}) == 401


# jwt


async def test_jwt_mode_accepts_a_signed_token(start_gateway: StartGateway, jwt_env: dict[str, str]) -> None:
    gw = await start_gateway(jwt_env, DEMO_FAST)
    token = signed(name="Alice")
    async with gw.chat() as chat:
        await chat.send(type="hello", token=token)
        ready = await chat.expect("ready")
        assert (ready["subject"], ready["name"]) == ("jwt:alice", "Alice")
        assert ready["expires_at"] == jwt.decode(token, options={"verify_signature": False})["exp"]
        text, _ = await chat.ask("hi")
    assert "demo model" in text
    async with gw.raw(additional_headers={"Authorization": f"Bearer {token}"}) as ws:  # plain mode
        await ws.send("plain with a JWT")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("This")


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (lambda: signed(ttl=-60), "expired"),
        (lambda: signed(secret="f" * 40), "bad signature"),
        (lambda: signed(aud="other"), "wrong audience"),
        (lambda: jwt.encode({"sub": "alice", "aud": "chat"}, SECRET, algorithm="HS256"), "missing claim"),
        (lambda: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.", "algorithm not allowed"),
    ],
)
async def test_jwt_mode_refuses_bad_tokens(
    start_gateway: StartGateway, jwt_env: dict[str, str], token: Any, says: str
) -> None:
    gw = await start_gateway(jwt_env, DEMO_FAST)
    async with gw.chat() as chat:
        error = await refused_with_1008(chat, {"type": "hello", "token": token()})
    assert says in error["message"]
    assert await status_of_handshake(gw, additional_headers={"Authorization": f"Bearer {token()}"}) == 401


async def test_an_expiring_token_is_warned_about_then_refreshed_or_the_socket_closed(
    start_gateway: StartGateway, jwt_env: dict[str, str]
) -> None:
    gw = await start_gateway(jwt_env, DEMO_FAST + "[auth]\njwt_leeway = 0\nexpiry_warning = 60\n")
    short = signed(ttl=3)
    async with gw.chat() as kept, gw.chat() as lapsed:
        for chat in (kept, lapsed):
            await chat.send(type="hello", token=short)
            events = {(await chat.recv())["type"] for _ in range(2)}
            assert events == {"ready", "auth.expiring"}  # it expires within the warning's 60 s
        await kept.send(type="refresh", token=signed(sub="mallory", ttl=3600))
        assert (await kept.expect("error"))["code"] == "forbidden"  # another subject's token
        await kept.send(type="refresh", token=signed(ttl=3600, secret="f" * 40))
        assert (await kept.expect("error"))["code"] == "unauthorized"  # a forged one; the socket stays
        renewed = signed(ttl=3600)
        await kept.send(type="refresh", token=renewed)
        refreshed = await kept.expect("auth.refreshed")
        assert refreshed["expires_at"] == jwt.decode(renewed, options={"verify_signature": False})["exp"]
        error = await lapsed.expect("error")  # the other one's token runs out
        assert error["code"] == "unauthorized" and "expired" in error["message"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(lapsed.ws.recv(), 10)
        assert lapsed.ws.close_code == 1008
        await kept.send(type="ping", id=1)  # past the first token's end, still served
        assert (await kept.expect("pong"))["id"] == 1


# jwt with a JWKS


class Issuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        entry = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**entry, "kid": "k1", "use": "sig"}]})

    def token(self, **claims: Any) -> str:
        body = {"sub": "bob", "exp": int(time.time() + 300), "iss": "https://idp.test", **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[Issuer, str]]:
    issuer = Issuer()
    async with loopback_app({"/.well-known/jwks.json": issuer.jwks}) as url:
        yield issuer, url + "/.well-known/jwks.json"


async def test_jwt_mode_with_a_jwks_accepts_the_issuers_tokens_only(
    start_gateway: StartGateway, issuer: tuple[Issuer, str]
) -> None:
    server, url = issuer
    env = {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_JWKS_URL": url, "GATEWAY_JWT_ISSUER": "https://idp.test"}
    gw = await start_gateway(env, DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="hello", token=server.token())
        assert (await chat.expect("ready"))["subject"] == "jwt:bob"
    hs = jwt.encode({"sub": "bob", "exp": int(time.time() + 300), "iss": "https://idp.test"}, "k" * 40, algorithm="HS256")
    for token, says in ((hs, "algorithm not allowed"), (server.token(iss="https://evil.test"), "wrong issuer")):
        async with gw.chat() as chat:
            error = await refused_with_1008(chat, {"type": "hello", "token": token})
            assert says in error["message"]
    assert server.fetches == 1


async def test_a_reload_signs_out_the_sockets_of_a_removed_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\nbob other-token-fedcba9876543210\n")
    env = {"GATEWAY_AUTH_TOKENS_FILE": str(tokens)}
    first = make_config(tmp_path, env, DEMO_FAST)
    gateway = Gateway(first, reload=lambda: make_config(tmp_path, env, DEMO_FAST))
    await gateway.start()
    try:
        gw = Running(gateway)
        async with gw.chat() as alice, gw.chat() as bob:
            for chat, token in ((alice, TOKEN), (bob, "other-token-fedcba9876543210")):
                await chat.send(type="hello", token=token)
                await chat.expect("ready")
            tokens.write_text("bob other-token-fedcba9876543210\n")  # alice's token is revoked
            gateway._on_reload()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(alice.ws.recv(), 5)
            assert alice.ws.close_code == 1008
            text, _ = await bob.ask("still here")  # bob's token stays valid: so does his socket
            assert "still here" in text
    finally:
        await gateway.close()


async def test_frames_after_the_credential_expired_are_not_served(
    start_gateway: StartGateway, jwt_env: dict[str, str]
) -> None:
    gw = await start_gateway(jwt_env, DEMO_FAST + "[auth]\njwt_leeway = 0\n")
    async with gw.chat() as chat:
        await chat.send(type="hello", token=signed(ttl=2))
        await chat.expect("ready")
        await chat.expect("auth.expiring")
        assert (await chat.expect("error"))["code"] == "unauthorized"  # expired
        with contextlib.suppress(ConnectionClosed):  # it may already be closing
            await chat.send(type="message", id="late", content="after the expiry")
        with pytest.raises(ConnectionClosed):
            while True:
                event = await asyncio.wait_for(chat.ws.recv(), 5)
                assert b"reply.start" not in (event if isinstance(event, bytes) else event.encode()), event
    assert await gw.gateway.store.ids(None, 10) == []  # type: ignore[union-attr]
