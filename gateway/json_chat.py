"""A connection in JSON mode (``chat.v1``): typed frames in, typed events out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection

from . import conversation_list, conversation_tree, wire
from .auth import ANONYMOUS, Principal
from .catalog import Model
from .connection import Hub
from .dictation import OUTSIDE
from .errors import ErrorCode, GatewayError, ProtocolError
from .events import ReplyEnded, ReplyReasoning, ReplyStarted
from .intake import edited_parent, store_errors
from .json_signin import SigningConnection
from .ready import conversation_model, read_page, ready_frame
from .stores import UNOWNED, StoredMessage, new_id
from .voice import Dictating, Voice

__all__ = ["JsonConnection"]

_log: Any = structlog.get_logger("gateway.connection")


class JsonConnection(SigningConnection):
    """``hello``, ``message``, ``resume``, ``history``...: see docs/protocol.md."""

    mode = "json"

    def __init__(self, ws: ServerConnection, hub: Hub, principal: Principal | None) -> None:
        super().__init__(ws, hub, wire.encode_delta, principal, wire.encode_reasoning)
        self.model: str | None = None  # the open conversation's model; None: the default
        self._dictating: Dictating | None = None  # from the first voice.start

    async def _read(self) -> None:
        if self.principal is None and not await self._sign_in():
            return
        async for frame in self.ws:
            self._start_writer()
            if not self.signed_out:
                await self._answer(frame)

    async def _answer(self, frame: str | bytes) -> None:
        try:
            if isinstance(frame, bytes) and self.hub.voice is not None:
                await self._audio(frame)
            else:
                await self._dispatch(wire.parse_client(frame))
        except ProtocolError as exc:
            if exc.frame_type == "voice.start" and self.hub.voice is not None:  # its audio follows: drop it quietly
                self._dictating_now(self.hub.voice).state.refused(exc.ref or "")
            self.outbox.put(wire.encode_error(exc, ref=exc.ref))
        except GatewayError as exc:
            self.outbox.put(wire.encode_error(exc))
        except Exception:
            _log.exception("frame_failed")
            self.outbox.put(wire.encode_error(GatewayError(ErrorCode.INTERNAL, "internal error")))

    async def _dispatch(self, msg: wire.ClientMessage) -> None:
        match msg:
            case wire.Message():
                await self._message(msg)
            case wire.Hello():
                await self._hello(msg.conversation_id)
            case wire.Cancel():
                await self.hub.bus.cancel(msg.reply_id, self.conversation_id)
            case wire.Resume():
                await self._resume(msg)
            case wire.Ping():
                self.outbox.put(wire.encode("pong", id=msg.id))
            case wire.History():
                await self._history(msg)
            case wire.Regenerate():
                await self._regenerate(msg)
            case wire.Refresh():
                await self._refresh(msg.token)
            case wire.Conversations() | wire.Rename() | wire.Delete():
                await self._listed(msg)
            case wire.Edit():
                await self._edit(msg)
            case wire.Continue():
                await self._continue(msg)
            case wire.Select() | wire.DeleteBranch() | wire.Settings() | wire.Export():
                await self._tree(msg)
            case wire.VoiceStart():
                await self._voice_start(msg)
            case wire.VoiceStop():
                if self._dictating is None:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "no such dictation", ref=msg.id)
                await self._dictating.stop(msg)

    async def _voice_start(self, msg: wire.VoiceStart) -> None:
        voice = self.hub.voice
        if voice is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "voice input is not enabled on this gateway", ref=msg.id)
        await self._dictating_now(voice).start(msg)

    def _dictating_now(self, voice: Voice) -> Dictating:
        if self._dictating is None:
            self._dictating = Dictating(voice, self.outbox.put, self.session_id)
        return self._dictating

    async def _audio(self, frame: bytes) -> None:
        if self._dictating is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, OUTSIDE)
        await self._dictating.audio(frame)

    async def _left(self) -> None:
        if self._dictating is not None:
            await self._dictating.close()
        await super()._left()

    async def _tree(self, msg: wire.Select | wire.DeleteBranch | wire.Settings | wire.Export) -> None:
        """The open conversation's branches, instructions and files."""
        conv_id = self._open(msg.id)
        assert self.principal is not None
        subject, hub = self.principal.subject, self.hub
        with self._answering(msg.id):
            match msg:
                case wire.Settings():
                    limit = hub.runtime.config.limits.max_content_chars
                    self.outbox.put(await conversation_tree.set_instructions(
                        hub.store, subject, conv_id, msg, create=conv_id == self.unsaved, max_chars=limit,
                    ))
                    if conv_id == self.unsaved:
                        self.unsaved = None
                case wire.Select():
                    self.outbox.put(await conversation_tree.select(hub, subject, conv_id, msg))
                case wire.DeleteBranch():
                    self.outbox.put(await conversation_tree.delete_branch(hub, subject, conv_id, msg))
                case wire.Export():
                    self.outbox.put(await conversation_tree.export(hub.store, subject, conv_id, msg))

    async def _listed(self, msg: wire.Conversations | wire.Rename | wire.Delete) -> None:
        """The subject's conversations: a page, a new title, one fewer."""
        assert self.principal is not None
        subject, store = self.principal.subject, self.hub.store
        with self._answering(msg.id):
            match msg:
                case wire.Conversations():
                    self.outbox.put(await conversation_list.page(store, subject, msg))
                case wire.Rename():
                    self.outbox.put(await conversation_list.rename(store, subject, msg))
                case wire.Delete():
                    self.outbox.put(await conversation_list.delete(store, self.hub.bus, subject, msg))

    async def _hello(self, conversation_id: str | None) -> None:
        """Open a stored conversation, or a new one: that is stored with its first message,
        so hellos alone create nothing. A new one is open to other connections (tabs) while
        a connection holds it."""
        runtime = self.hub.runtime
        assert self.principal is not None
        subject = self.principal.subject
        with store_errors(conversation_id or ""):  # a protocol error passes through as it is
            conv = await self.hub.store.get(conversation_id) if conversation_id else None
            if conv is not None and self._claims(conv.owner) and await self.hub.store.claim(
                conv.id, subject, previous=conv.owner
            ):
                conv = replace(conv, owner=subject)
                self.hub.taken_over(conv.id, subject)
            if conv is not None and conv.owner == subject:
                conv_id, title, instructions = conv.id, conv.title, conv.system_prompt
                history, _, active = await read_page(self.hub, conv_id, runtime.config.limits.history_limit)
                self.model = conversation_model(history, runtime.catalog).id
            elif conversation_id and (conv is not None or await self.hub.bus.watched(conversation_id) != subject):
                # Another subject's conversation is exactly as unknown as one that never was.
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
            else:
                conv_id, title, active, history, instructions = conversation_id or new_id(), "", None, [], ""
                self.unsaved, self.model = conv_id, None
        await self.hub.watch(self, conv_id)
        assert self.principal is not None
        budget = await self.hub.registry.accounting.budget(subject, runtime.limits.quota)
        self.outbox.put(ready_frame(
            self.session_id, conv_id, title, history, runtime, active, self.principal, budget, self._sticky_model(),
            instructions, self.hub.voice.offer() if self.hub.voice else None,
        ))

    def _claims(self, owner: str) -> bool:
        """Whether opening a conversation of ``owner`` by its id makes it this subject's:
        one stored before owners existed (any mode: its id was all it took to open it
        then), or, in ``none`` mode, a keyless client's opened by a browser's key."""
        assert self.principal is not None
        subject = self.principal.subject
        if owner == UNOWNED:
            return True
        none_mode = self.hub.runtime.authenticator.mode == "none"
        return none_mode and owner == ANONYMOUS.subject and subject.startswith("anon:")

    async def _message(self, msg: wire.Message) -> None:
        self._bounded(msg.content, msg.id)
        with self._answering(msg.id):
            if msg.model is not None:  # refused before a new conversation's ready
                self.hub.runtime.catalog.choose(msg.model)
            if self.conversation_id is None or (msg.conversation_id and msg.conversation_id != self.conversation_id):
                await self._hello(msg.conversation_id)
            await self._ask(msg.id, msg.content, msg.model, after=msg.parent_id)

    async def _edit(self, msg: wire.Edit) -> None:
        """A new version of a user's message, answered at once; the old one's branch stays."""
        self._bounded(msg.content, msg.id)
        conv_id = self._open(msg.id)
        with self._answering(msg.id):
            if msg.model is not None:
                self.hub.runtime.catalog.choose(msg.model)
            with store_errors(conv_id):
                parent = await edited_parent(self.hub.store, conv_id, msg.message_id)
            await self._ask(msg.id, msg.content, msg.model, after=parent)

    def _bounded(self, content: str, ref: str) -> None:
        if len(content) > (limit := self.hub.runtime.config.limits.max_content_chars):
            raise ProtocolError(ErrorCode.TOO_LARGE, f"the message is longer than {limit} characters", ref=ref)

    async def _ask(self, message_id: str, content: str, model_id: str | None, *, after: str | None) -> None:
        """Store the user's message and start its reply, by ``model_id`` or else the
        conversation's model; that model is the conversation's from now on."""
        model = model_id or self._sticky_model().id
        await self._start(StoredMessage(message_id, "user", content, model=model), after=after)
        self.model = model

    async def _continue(self, msg: wire.Continue) -> None:
        conv_id = self._open(msg.id)
        with self._answering(msg.id):
            assert self.principal is not None
            await self.hub.bus.extend(conv_id, msg.id, self, owner=self.principal.subject, reply_id=msg.reply_id)

    def _open(self, ref: str | None) -> str:
        """The conversation open on this connection (``bad_request`` about ``ref`` if none)."""
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "send hello first", ref=ref)
        return self.conversation_id

    async def _regenerate(self, msg: wire.Regenerate) -> None:
        conv_id = self._open(msg.id)
        with self._answering(msg.id):
            assert self.principal is not None
            await self.hub.bus.regenerate(
                conv_id, msg.id, self, owner=self.principal.subject, model=msg.model,
                reply_id=msg.reply_id,
            )
            self.model = msg.model or self.model

    def _sticky_model(self) -> Model:
        """The conversation's model, or the default if it is no longer offered."""
        catalog = self.hub.runtime.catalog
        return catalog.get(self.model) or catalog.default

    @contextlib.contextmanager
    def _answering(self, ref: str | None) -> Iterator[None]:
        """Errors answer the frame ``ref``: protocol errors go on up, others are sent here."""
        try:
            yield
        except ProtocolError as exc:
            exc.ref = ref
            raise
        except GatewayError as exc:
            self.outbox.put(wire.encode_error(exc, ref=ref))

    async def _resume(self, msg: wire.Resume) -> None:
        reply_id = msg.reply_id
        if reply_id in self.replies or self.outbox.holds_delta(reply_id):
            # Also while an ended reply's catch-up still waits: resuming it again would only queue copies.
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection already receives that reply")
        self.replies[reply_id] = None
        try:
            with self.outbox.together():
                await self.hub.bus.follow(reply_id, self.conversation_id, self, msg.after_seq)
        except GatewayError:
            self.replies.pop(reply_id, None)
            raise

    async def _history(self, msg: wire.History) -> None:
        conv_id = self._open(msg.id)
        with self._answering(msg.id), store_errors(conv_id):
            messages, has_more, _ = await read_page(self.hub, conv_id, msg.limit, msg.before)
            self.outbox.put(
                wire.encode(
                    "history",
                    id=msg.id,
                    conversation_id=conv_id,
                    messages=wire.history_items(messages),
                    has_more=has_more,
                )
            )

    def _on_reasoning(self, event: ReplyReasoning) -> None:
        self.outbox.put_delta(event.reply_id, event.seq, event.text, reasoning=True)

    def _on_started(self, event: ReplyStarted) -> None:
        if event.conversation_id == self.conversation_id and event.model:  # another tab's choice sticks too
            self.model = event.fallback_from or event.model
        if event.conversation_id == self.unsaved:  # another tab stored it
            self.unsaved = None
        self.outbox.put(
            wire.encode(
                "reply.start", id=event.message_id, reply_id=event.reply_id,
                conversation_id=event.conversation_id, content=event.content, replaces=event.replaces,
                model=event.model, fallback_from=event.fallback_from, parent_id=event.parent_id,
                continues=event.continues, message_parent_id=event.message_parent_id,
            )
        )

    def _on_ended(self, event: ReplyEnded) -> None:
        if event.error is not None:
            self.outbox.put(wire.encode_error(event.error, ref=event.message_id, reply_id=event.reply_id))
        usage: dict[str, Any] | None = dict(event.usage.as_dict()) if event.usage else None
        if usage is not None and event.cost is not None:
            usage["cost"] = event.cost
        if usage is not None and event.usage is not None and event.usage.estimated:
            usage["estimated"] = True
        self.outbox.put(
            wire.encode(
                "reply.done", reply_id=event.reply_id, finish_reason=event.finish_reason, usage=usage,
                model=event.model, fallback_from=event.fallback_from,
            )
        )
