"""How the replies this instance produces are shared with other instances.

The registry (:mod:`.replies`) tells a :class:`Sharing` what happens to each reply it
owns; :class:`Alone` (one instance) does nothing, the cluster's shipper
(:mod:`.cluster.shipper`) puts it in Redis. Claiming is the one step that waits: "one
reply at a time per conversation" holds across instances.
"""

from __future__ import annotations

from typing import Protocol

from .reply import Reply

__all__ = ["Alone", "Sharing"]


class Sharing(Protocol):
    async def claim(self, reply: Reply) -> None:
        """Take ``reply``'s conversation for it everywhere; ProtocolError ``busy`` if a reply
        streams in it on another instance."""

    def release(self, reply: Reply) -> None:
        """``reply`` never started (preparing it failed): give its conversation back."""

    def started(self, reply: Reply, content: str | None) -> None:
        """``reply`` started (``content``: the user's message, for other tabs)."""

    def ended(self, reply: Reply) -> None:
        """``reply`` ended (its new text was handed over with each ``reply.shared`` call)."""


class Alone:
    """One instance: nothing to share."""

    async def claim(self, reply: Reply) -> None:
        pass

    def release(self, reply: Reply) -> None:
        pass

    def started(self, reply: Reply, content: str | None) -> None:
        pass

    def ended(self, reply: Reply) -> None:
        pass
