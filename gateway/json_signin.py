"""How a JSON-mode connection signs in and stays signed in: the first frame (``hello``
and its credential, within ``[auth] timeout``), ``refresh``, and what the client is
told as its credential runs out (docs/protocol.md, Authentication)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from . import wire
from .auth import AuthRefused, Credentials, fingerprint
from .connection import CLOSE_POLICY, Connection
from .errors import ErrorCode, GatewayError, ProtocolError
from .outbox import Close

__all__ = ["MAX_FAILED_REFRESHES", "SigningConnection"]

MAX_FAILED_REFRESHES = 3  # refused refresh frames before the socket is closed (1008)

_log: Any = structlog.get_logger("gateway.connection")


class SigningConnection(Connection):
    """A connection that signs in with its first frame (JSON mode)."""

    async def _answer(self, frame: str | bytes) -> None:
        """Answer one frame (the mode's)."""
        raise NotImplementedError

    async def _sign_in(self) -> bool:
        """The first frame says who the client is: a ``hello`` and its token (required,
        within ``[auth] timeout``, unless the mode is none); then it is answered."""
        runtime = self.hub.runtime
        try:
            if runtime.authenticator.required:
                async with asyncio.timeout(runtime.config.auth.timeout):
                    frame = await self.ws.recv()
            else:  # no timer for the many sockets that wait here
                frame = await self.ws.recv()
        except TimeoutError:
            return await self._refuse("timeout", "authenticate within the first seconds (hello with a token)")
        authenticator = self.hub.runtime.authenticator  # the one in force now (a reload may have swapped it)
        self._start_writer()
        try:
            msg: wire.ClientMessage | None = wire.parse_client(frame)
        except ProtocolError:
            msg = None
        token = msg.token if isinstance(msg, wire.Hello) else None
        if authenticator.required and not isinstance(msg, wire.Hello):
            return await self._refuse("no hello", "send hello with a valid token first")
        try:
            principal = await authenticator.authenticate(Credentials(token, self.peer))
        except AuthRefused as exc:
            return await self._refuse(exc.reason, str(exc), token)
        if not await self._identify(principal):
            return False
        await self._answer(frame)
        return True

    async def _refuse(self, reason: str, message: str, token: str | None = None) -> bool:
        """Tell the client it is not let in, close with 1008, and wait until that is written."""
        mode = self.hub.runtime.authenticator.mode
        _log.info("auth_failed", reason=reason, mode=mode, at="hello", credential=fingerprint(token) if token else None)
        self.hub.metrics.auth_failures.labels(reason).inc()
        self._start_writer()
        self.outbox.put(wire.encode_error(GatewayError(ErrorCode.UNAUTHORIZED, message, retryable=False)))
        self.outbox.put(Close(CLOSE_POLICY, "unauthorized"))
        assert self._writer is not None
        await self._writer
        return False

    async def _refresh(self, token: str) -> None:
        """A new credential for the same subject, before the one in force expires."""
        authenticator = self.hub.runtime.authenticator
        if authenticator.at_handshake:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "sign-in is the proxy's here: nothing to refresh")
        assert self.principal is not None
        try:
            principal = await authenticator.authenticate(Credentials(token, self.peer))
            if principal.subject != self.principal.subject:
                raise AuthRefused("another subject", "this token is for another subject")
        except AuthRefused as exc:
            self.hub.metrics.auth_failures.labels(exc.reason).inc()
            _log.info("auth_failed", reason=exc.reason, mode=authenticator.mode, at="refresh")
            self._failed_refreshes += 1
            if self._failed_refreshes >= MAX_FAILED_REFRESHES:  # guessing tokens on an open socket
                self.sign_out("too many refused refreshes")
            code = ErrorCode.FORBIDDEN if exc.reason == "another subject" else ErrorCode.UNAUTHORIZED
            raise ProtocolError(code, str(exc)) from None
        old = self.principal.expires_at
        if old is not None and (principal.expires_at is None or principal.expires_at > old):
            await self._identify(principal)  # a later expiry: timed anew (an earlier or equal one changes nothing)
        self.hub.metrics.auth_refreshes.inc()
        self.outbox.put(wire.encode("auth.refreshed", expires_at=self.principal.expires_at))

    def _credential_expiring(self, expires_at: float) -> None:
        expires_in = max(0, round(expires_at - time.time()))
        self.outbox.put(wire.encode("auth.expiring", expires_at=expires_at, expires_in=expires_in))

    def _expired(self) -> None:
        error = GatewayError(ErrorCode.UNAUTHORIZED, "the credential expired; sign in again and resume", retryable=False)
        self.outbox.put(wire.encode_error(error))
