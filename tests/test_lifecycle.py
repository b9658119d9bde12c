"""The lifecycle state and what signals do to it (no sockets, no real signals)."""

from __future__ import annotations

import signal

from gateway.lifecycle import Lifecycle, Phase


async def test_a_start_that_serves_then_drains_and_closes() -> None:
    life = Lifecycle()
    assert life.phase is Phase.STARTING and not life.served
    life.serving()
    assert life.draining() and life.phase is Phase.DRAINING and life.stopping.is_set()
    assert not life.draining(), "a second close does nothing"
    life.closed()
    assert life.phase is Phase.CLOSED and life.served


async def test_a_failed_start_never_served() -> None:
    life = Lifecycle()
    assert life.draining()
    life.closed()
    assert not life.served


async def test_sigterm_asks_for_the_drain_and_a_second_one_is_ignored() -> None:
    life = Lifecycle()
    life.on_signal(signal.SIGTERM)
    assert life.stopping.is_set() and not life.hurry.is_set()
    life.on_signal(signal.SIGTERM)
    assert not life.hurry.is_set()


async def test_a_second_sigint_hurries_the_drain() -> None:
    life = Lifecycle()
    life.on_signal(signal.SIGINT)
    assert not life.hurry.is_set()
    life.on_signal(signal.SIGINT)
    assert life.hurry.is_set()
    life.on_signal(signal.SIGINT)  # and a third changes nothing
    assert life.hurry.is_set()
