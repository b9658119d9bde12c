"""The authenticator and the handshake policy, without sockets."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers

from gateway.auth import ANONYMOUS, OpenAccess, Principal, TokenAuthenticator
from gateway.config import token_digest
from gateway.handshake import Refusal, admit

TOKEN = "a-client-token-of-some-length"
AUTH = TokenAuthenticator(frozenset({token_digest(TOKEN)}))
ORIGINS = ("http://127.0.0.1:8080",)


def headers(*items: tuple[str, str]) -> Headers:
    h = Headers()
    for name, value in items:
        h[name] = value  # Headers appends: a repeated name is a repeated header
    return h


def test_open_access_makes_everyone_anonymous() -> None:
    assert OpenAccess().from_authorization(None) == OpenAccess().from_token("anything") == ANONYMOUS
    assert not OpenAccess().required


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  "])
def test_a_bearer_token_proves_a_principal_named_by_its_digest(header: str) -> None:
    principal = AUTH.from_authorization(header)
    assert principal == Principal(f"token:{token_digest(TOKEN)[:12]}") and TOKEN not in principal.subject
    assert AUTH.from_token(TOKEN) == principal


@pytest.mark.parametrize("header", [None, "", TOKEN, f"Basic {TOKEN}", "Bearer ", "Bearer wrong-token-of-length", f"Bearer {TOKEN}x"])
def test_anything_else_proves_nothing(header: str | None) -> None:
    assert AUTH.from_authorization(header) is None


@pytest.mark.parametrize("token", [None, "", "short", TOKEN.upper()])
def test_a_wrong_hello_token_proves_nothing(token: str | None) -> None:
    assert AUTH.from_token(token) is None


@pytest.mark.parametrize(
    ("path", "items", "authenticator", "expected"),
    [
        ("/chat", [], OpenAccess(), None),
        ("/chat?x=1", [("Origin", "http://127.0.0.1:8080")], OpenAccess(), None),
        ("/other", [], OpenAccess(), (404, "path")),
        ("/chat", [("Origin", "https://evil.example")], OpenAccess(), (403, "origin")),
        ("/chat", [("Origin", "HTTP://127.0.0.1:8080")], OpenAccess(), None),
        ("/chat", [("Origin", "http://127.0.0.1:8080"), ("Origin", "http://127.0.0.1:8080")], OpenAccess(), (400, "duplicate_header")),
        ("/chat", [("Authorization", "a"), ("Authorization", "b")], OpenAccess(), (400, "duplicate_header")),
        ("/chat", [], AUTH, (401, "unauthorized")),  # plain mode must authenticate here
        ("/chat", [("Authorization", f"Bearer {TOKEN}")], AUTH, None),
        ("/chat", [("Sec-WebSocket-Protocol", "chat.v1")], AUTH, None),  # JSON mode may use hello
        ("/chat", [("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", "chat.v1")], AUTH, None),
    ],
)
def test_admit(path: str, items: list[tuple[str, str]], authenticator: object, expected: tuple[int, str] | None) -> None:
    refusal = admit(path, headers(*items), authenticator, ORIGINS)  # type: ignore[arg-type]
    assert (refusal.status, refusal.reason) == expected if isinstance(refusal, Refusal) else expected is None


def test_a_refused_origin_is_reported_cut_short() -> None:
    refusal = admit("/chat", headers(("Origin", "https://" + "x" * 500)), OpenAccess(), ORIGINS)
    assert refusal is not None and refusal.origin is not None and len(refusal.origin) == 200
