"""Every auth mode and the handshake policy, without sockets: each accepts the right
credential and refuses the rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import get_default_algorithms
from websockets.datastructures import Headers

from conftest import loopback_app

from gateway.auth import (
    ANONYMOUS,
    AuthRefused,
    Credentials,
    JwtAuthenticator,
    OpenAccess,
    Principal,
    ProxyAuthenticator,
    SharedSecret,
    TokenAuthenticator,
    parse_tokens,
    token_digest,
)
from gateway.auth.jwks import JwksKeys, keys_of
from gateway.clientip import parse_networks
from gateway.upstream import client_session
from gateway.handshake import Refusal, admit, authenticates_at_handshake, credentials, is_plain

TOKEN = "a-client-token-of-some-length"
SECRET = "s" * 40
ORIGINS = ("http://127.0.0.1:8080",)


def headers(*items: tuple[str, str]) -> Headers:
    h = Headers()
    for name, value in items:
        h[name] = value  # Headers appends: a repeated name is a repeated header
    return h


async def refused(authenticator: Any, creds: Credentials) -> str:
    with pytest.raises(AuthRefused) as caught:
        await authenticator.authenticate(creds)
    return caught.value.reason


# none


async def test_none_mode_names_each_key_and_makes_the_keyless_anonymous() -> None:
    auth = OpenAccess()
    assert not auth.required and await auth.authenticate(Credentials()) == ANONYMOUS
    one = await auth.authenticate(Credentials("browser-key-0123456789abcdef"))
    two = await auth.authenticate(Credentials("browser-key-0123456789abcdeg"))
    assert one.subject.startswith("anon:") and len(one.subject) == 5 + 24
    assert one.subject != two.subject and "browser-key" not in one.subject + one.credential
    assert one == await auth.authenticate(Credentials("browser-key-0123456789abcdef"))
    assert await refused(auth, Credentials("key\nwith a newline")) == "bad anonymous key"


# tokens


def test_a_tokens_file_takes_named_and_bare_tokens() -> None:
    tokens = parse_tokens(f"# clients\nalice {TOKEN}\n\n  {TOKEN}-bare  \n")
    assert tokens == {token_digest(TOKEN): "alice", token_digest(TOKEN + "-bare"): token_digest(TOKEN + "-bare")[:12]}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no token"),
        ("# only a comment\n", "no token"),
        ("alice short", "line 1: tokens must be at least 16"),
        (f"a b {TOKEN}", "line 1: expected NAME TOKEN"),
        (f"al/ice {TOKEN}", "line 1: a name is"),
        (f"alice {TOKEN}\nbob {TOKEN}", "line 2: this token is already"),
        (f"alice {TOKEN}\nalice {TOKEN}x", "line 2: this name is already"),
    ],
)
def test_a_bad_tokens_file_names_its_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_tokens(text)


async def test_tokens_mode_accepts_a_listed_token_and_refuses_the_rest() -> None:
    auth = TokenAuthenticator(parse_tokens(f"alice {TOKEN}\n{TOKEN}-bare\n"))
    alice = await auth.authenticate(Credentials(TOKEN))
    assert alice.subject == "token:alice" and alice.name == "alice" and TOKEN not in repr(alice)
    bare = await auth.authenticate(Credentials(TOKEN + "-bare"))
    assert bare.subject == f"token:{token_digest(TOKEN + '-bare')[:12]}"
    for wrong in (None, "", TOKEN.upper(), TOKEN + "x", TOKEN[:-1]):
        assert await refused(auth, Credentials(wrong)) in {"no token", "unknown token"}


# proxy

PROXY = ProxyAuthenticator("Remote-User", parse_networks(["127.0.0.1/8", "::1"]))


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.2"])
async def test_proxy_mode_believes_the_header_from_a_trusted_peer(peer: str) -> None:
    assert await PROXY.authenticate(Credentials(peer=peer, user=("alice",))) == Principal("user:alice", "alice")


@pytest.mark.parametrize(
    ("peer", "user", "reason"),
    [
        ("192.0.2.7", ("alice",), "untrusted peer"),
        (None, ("alice",), "untrusted peer"),
        ("127.0.0.1", (), "no user header"),
        ("127.0.0.1", ("alice", "bob"), "repeated user header"),
        ("127.0.0.1", ("",), "bad user header"),
        ("127.0.0.1", ("   ",), "bad user header"),
        ("127.0.0.1", ("{http.auth.user.id}",), "bad user header"),
        ("127.0.0.1", ("x" * 129,), "bad user header"),
        ("127.0.0.1", ("ali\x01ce",), "bad user header"),
    ],
)
async def test_proxy_mode_refuses_what_a_proxy_did_not_vouch_for(peer: str | None, user: tuple[str, ...], reason: str) -> None:
    assert await refused(PROXY, Credentials("a-bearer-token-is-ignored", peer, user)) == reason


# jwt


def hs(claims: dict[str, Any], secret: str = SECRET, **kw: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kw)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 300, **extra}


HS = JwtAuthenticator(SharedSecret(SECRET), issuer="https://idp.example", audience="chat", leeway=0)


async def test_jwt_mode_accepts_a_signed_token_with_the_configured_claims() -> None:
    good = claims(iss="https://idp.example", aud="chat", name="Alice A.")
    principal = await HS.authenticate(Credentials(hs(good)))
    assert principal.subject == "jwt:alice" and principal.name == "Alice A."
    assert principal.expires_at == good["exp"] and len(principal.credential) == 8


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _none_token(payload: dict[str, Any]) -> str:
    return f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{_b64(orjson.dumps(payload))}."


def _hmac_token(payload: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT itself refuses a public key as an HMAC secret."""
    signing_input = f"{_b64(orjson.dumps({'alg': 'HS256', 'kid': kid}))}.{_b64(orjson.dumps(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


OK = {"iss": "https://idp.example", "aud": "chat"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: hs(claims(**OK, exp=int(time.time()) - 5)), "expired"),
        (lambda: hs(claims(**OK), secret="f" * 40), "bad signature"),
        (lambda: hs(claims(**OK)) [:-3] + "AAA", "bad signature"),
        (lambda: hs(claims(iss="https://idp.example", aud="other")), "wrong audience"),
        (lambda: hs(claims(iss="https://evil.example", aud="chat")), "wrong issuer"),
        (lambda: hs({"exp": int(time.time()) + 300, **OK}), "missing claim"),
        (lambda: hs({"sub": "alice", **OK}), "missing claim"),
        (lambda: hs(claims(**OK, nbf=int(time.time()) + 600)), "not yet valid"),
        (lambda: hs(claims(**OK, sub="")), "bad subject"),
        (lambda: _none_token(claims(**OK)), "algorithm not allowed"),
        (lambda: jwt.encode(claims(**OK), SECRET * 2, algorithm="HS512"), "algorithm not allowed"),
        (lambda: "not.a.jwt", "malformed token"),
        (lambda: "x" * 9000, "malformed token"),
        (lambda: None, "no token"),
    ],
)
async def test_jwt_mode_refuses_bad_tokens(token: Any, reason: str) -> None:
    assert await refused(HS, Credentials(token())) == reason


async def test_without_an_audience_configured_a_token_with_one_is_accepted() -> None:
    auth = JwtAuthenticator(SharedSecret(SECRET))
    assert (await auth.authenticate(Credentials(hs(claims(aud="anything"))))).subject == "jwt:alice"


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def jwk(private: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    family = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
    entry: dict[str, Any] = orjson.loads(get_default_algorithms()[family].to_jwk(private.public_key()))
    entry["kid"] = kid
    if alg:
        entry["alg"] = alg
    return entry


class Issuer:
    """A token issuer's JWKS endpoint on loopback, counting its fetches."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.encodings: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Like a CDN: gzip when the client accepts it, and the body in two pieces."""
        self.fetches += 1
        self.encodings.append(request.headers.get("Accept-Encoding", ""))
        body = orjson.dumps({"keys": self.keys})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression()
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await resp.write(body[len(body) // 2 :])
        await resp.write_eof()
        return resp


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[Issuer, str]]:
    issuer = Issuer(jwk(RSA, "r1"), jwk(EC, "e1", "ES256"), {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"})
    async with loopback_app({"/jwks": issuer.handle}) as url:
        yield issuer, url + "/jwks"


async def test_jwks_keys_verify_their_tokens_and_nothing_else(issuer: tuple[Issuer, str]) -> None:
    server, url = issuer
    async with client_session() as session:  # the gateway's own: it never inflates
        auth = JwtAuthenticator(JwksKeys(url, session), leeway=0)
        rs = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "r1"})
        es = jwt.encode(claims(), EC, algorithm="ES256", headers={"kid": "e1"})
        assert (await auth.authenticate(Credentials(rs))).subject == "jwt:alice"
        assert (await auth.authenticate(Credentials(es))).subject == "jwt:alice"
        # An HS token is refused whatever signed it: the RSA key's public PEM as an HMAC
        # secret (the classic confusion attack), or the JWKS's own symmetric key.
        public_pem = RSA.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        confused = _hmac_token(claims(), public_pem, kid="r1")
        assert await refused(auth, Credentials(confused)) == "algorithm not allowed"
        assert await refused(auth, Credentials(hs(claims(), secret="secret" * 6, headers={"kid": "sym"}))) == (
            "algorithm not allowed"
        )
        assert await refused(auth, Credentials(_none_token(claims()))) == "algorithm not allowed"
        # A key pinned to ES256 does not verify an RS256 token, nor an RSA key an ES256 one.
        assert await refused(auth, Credentials(jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "e1"}))) == (
            "algorithm not allowed"
        )
        assert await refused(auth, Credentials(jwt.encode(claims(), EC, algorithm="ES256", headers={"kid": "r1"}))) == (
            "algorithm not allowed"
        )
        forged = jwt.encode(claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": "r1"})
        assert await refused(auth, Credentials(forged)) == "bad signature"
    assert server.encodings == ["identity"]


async def test_an_unknown_key_id_refetches_the_jwks_at_most_every_30_seconds(issuer: tuple[Issuer, str]) -> None:
    server, url = issuer
    now = [1000.0]
    rotated = rsa.generate_private_key(65537, 2048)
    async with aiohttp.ClientSession() as session:
        auth = JwtAuthenticator(JwksKeys(url, session, clock=lambda: now[0]), leeway=0)
        token = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "r2"})
        for _ in range(3):  # a flood of unknown kids costs one fetch
            assert await refused(auth, Credentials(token)) == "unknown key"
        assert server.fetches == 1
        server.keys.append(jwk(rotated, "r2"))  # the issuer rotates
        now[0] += 29
        assert await refused(auth, Credentials(token)) == "unknown key"
        assert server.fetches == 1
        now[0] += 2
        assert (await auth.authenticate(Credentials(token))).subject == "jwt:alice"
        assert server.fetches == 2
        known = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "r1"})
        await auth.authenticate(Credentials(known))
        assert server.fetches == 2  # known keys are not fetched again


@pytest.mark.parametrize("document", [[], {"keys": "x"}, {"nokeys": []}, "text"])
def test_a_document_that_is_not_a_jwks_is_refused(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWKS"):
        keys_of(document)


# the handshake


@pytest.mark.parametrize(
    ("path", "items", "expected"),
    [
        ("/chat", [], None),
        ("/chat?x=1", [("Origin", "http://127.0.0.1:8080")], None),
        ("/other", [], (404, "path")),
        ("/chat", [("Origin", "https://evil.example")], (403, "origin")),
        ("/chat", [("Origin", "HTTP://127.0.0.1:8080")], None),
        ("/chat", [("Origin", "http://127.0.0.1:8080"), ("Origin", "http://127.0.0.1:8080")], (400, "duplicate_header")),
        ("/chat", [("Authorization", "a"), ("Authorization", "b")], (400, "duplicate_header")),
    ],
)
def test_admit(path: str, items: list[tuple[str, str]], expected: tuple[int, str] | None) -> None:
    refusal = admit(path, headers(*items), ORIGINS)
    assert (refusal.status, refusal.reason) == expected if isinstance(refusal, Refusal) else expected is None


def test_a_refused_origin_is_reported_cut_short() -> None:
    refusal = admit("/chat", headers(("Origin", "https://" + "x" * 500)), ORIGINS)
    assert refusal is not None and refusal.origin is not None and len(refusal.origin) == 200


@pytest.mark.parametrize(
    ("header", "token"),
    [(f"Bearer {TOKEN}", TOKEN), (f"bearer {TOKEN}", TOKEN), (f"BEARER   {TOKEN}  ", TOKEN),
     (None, None), ("", None), (TOKEN, None), (f"Basic {TOKEN}", None), ("Bearer ", None)],
)
def test_the_handshake_presents_a_bearer_token(header: str | None, token: str | None) -> None:
    items = [("Authorization", header)] if header is not None else []
    assert credentials(headers(*items), "127.0.0.1", None) == Credentials(token, "127.0.0.1")


def test_the_handshake_presents_every_user_header_value() -> None:
    presented = credentials(headers(("Remote-User", "a"), ("remote-user", "b")), "::1", "Remote-User")
    assert presented.user == ("a", "b")
    assert credentials(headers(("Remote-User", "a")), "::1", None).user == ()


@pytest.mark.parametrize(
    ("authenticator", "token", "plain", "expected"),
    [
        (OpenAccess(), None, False, False),  # JSON mode: hello decides
        (OpenAccess(), None, True, True),  # plain mode: only the handshake can
        (OpenAccess(), TOKEN, False, True),  # a Bearer token is checked at once
        (TokenAuthenticator({}), None, False, False),
        (PROXY, None, False, True),  # the proxy's header, whatever the mode
    ],
)
def test_who_decides_at_the_handshake(authenticator: Any, token: str | None, plain: bool, expected: bool) -> None:
    assert authenticates_at_handshake(authenticator, Credentials(token), plain=plain) is expected


@pytest.mark.parametrize(
    ("items", "plain"),
    [([], True), ([("Sec-WebSocket-Protocol", "chat.v1")], False),
     ([("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", "chat.v1")], False),
     ([("Sec-WebSocket-Protocol", "x")], True)],
)
def test_plain_mode_is_asking_for_no_chat_v1(items: list[tuple[str, str]], plain: bool) -> None:
    assert is_plain(headers(*items)) is plain
