"""Tests for gateway.outbox.Outbox: FIFO frames, merged deltas, bounded backlog."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbox import Close, Frame, Outbox, OutputBudget
from gateway.wire import encode_delta


class Overflows:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def make(max_pending: int = 1 << 20) -> tuple[Outbox, Overflows]:
    overflow = Overflows()
    return Outbox(max_pending, encode_delta, overflow), overflow


def delta(reply_id: str, seq: int, text: str) -> bytes:
    return encode_delta(reply_id, seq, text)


async def blocked_get(box: Outbox) -> asyncio.Task[list[Frame]]:
    """Start ``box.get()`` in a task and return once it has run up to its first wait.

    If frames are waiting, ``get`` returns without suspending, so the task is
    already done when this returns; otherwise it is parked inside ``get``.
    """
    started = asyncio.Event()

    async def getter() -> list[Frame]:
        started.set()
        return await box.get()

    task = asyncio.create_task(getter())
    await started.wait()
    return task


async def test_fifo_order() -> None:
    box, overflow = make()
    box.put(b"one")
    box.put("two")
    box.put_delta("r1", 1, "x")
    box.put(b"three")
    assert await box.get() == [b"one", "two", delta("r1", 1, "x"), b"three"]
    assert overflow.calls == 0


async def test_consecutive_deltas_of_one_reply_merge() -> None:
    box, _ = make()
    box.put(b"start")
    box.put_delta("r1", 1, "你")
    box.put_delta("r1", 2, "好")
    box.put_delta("r1", 3, "🙂")
    frames = await box.get()
    assert frames == [b"start", delta("r1", 3, "你好🙂")]
    assert isinstance(frames[1], bytes)
    assert orjson.loads(frames[1]) == {"type": "reply.delta", "reply_id": "r1", "seq": 3, "text": "你好🙂"}


async def test_deltas_of_different_replies_do_not_merge() -> None:
    box, _ = make()
    box.put_delta("r1", 1, "a")
    box.put_delta("r2", 1, "b")
    box.put_delta("r2", 2, "c")
    box.put_delta("r1", 2, "d")
    assert await box.get() == [delta("r1", 1, "a"), delta("r2", 2, "bc"), delta("r1", 2, "d")]


async def test_deltas_separated_by_another_frame_do_not_merge() -> None:
    box, _ = make()
    box.put_delta("r1", 1, "a")
    box.put(b'{"type":"pong"}')
    box.put_delta("r1", 2, "b")
    assert await box.get() == [delta("r1", 1, "a"), b'{"type":"pong"}', delta("r1", 2, "b")]


async def test_taken_delta_is_not_merged_into() -> None:
    box, _ = make()
    box.put_delta("r1", 1, "a")
    assert await box.get() == [delta("r1", 1, "a")]
    box.put_delta("r1", 2, "b")
    assert await box.get() == [delta("r1", 2, "b")]


async def test_get_waits_until_a_frame_is_put() -> None:
    box, _ = make()
    task = await blocked_get(box)
    assert not task.done()
    box.put(b"hello")
    assert await task == [b"hello"]


async def test_get_waits_until_a_delta_is_put() -> None:
    box, _ = make()
    task = await blocked_get(box)
    assert not task.done()
    box.put_delta("r1", 1, "hi")
    box.put_delta("r1", 2, "!")  # merged before the writer runs
    assert await task == [delta("r1", 2, "hi!")]


async def test_get_returns_at_once_when_frames_wait() -> None:
    box, _ = make()
    box.put(b"ready")
    task = await blocked_get(box)
    assert task.done()
    assert task.result() == [b"ready"]


async def test_cancelled_get_leaves_the_outbox_usable() -> None:
    box, _ = make()
    task = await blocked_get(box)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    box.put(b"later")
    assert await box.get() == [b"later"]


async def test_close_keeps_its_place_and_stops_merging() -> None:
    box, _ = make()
    close = Close(1001, "server restarting")
    box.put_delta("r1", 1, "a")
    box.put(close)
    box.put_delta("r1", 2, "b")
    assert await box.get() == [delta("r1", 1, "a"), close, delta("r1", 2, "b")]


async def test_close_wakes_a_waiting_writer() -> None:
    box, _ = make()
    task = await blocked_get(box)
    assert not task.done()
    close = Close(1013, "too slow")
    box.put(close)
    assert await task == [close]


async def test_close_costs_no_pending_budget() -> None:
    box, overflow = make(10)
    box.put(b"0123456789")
    box.put(Close(1001, "x" * 100))
    assert overflow.calls == 0


async def test_exactly_max_pending_is_admitted() -> None:
    box, overflow = make(10)
    box.put_delta("r1", 1, "12345")
    box.put(b"12345")
    assert overflow.calls == 0 and not box.overflowed
    assert await box.get() == [delta("r1", 1, "12345"), b"12345"]


async def test_a_batch_counts_until_the_writer_comes_back_for_more() -> None:
    box, overflow = make(10)
    box.put_delta("r1", 1, "12345678")
    assert await box.get() == [delta("r1", 1, "12345678")]
    assert box.held == 8  # taken, still being sent
    for seq in range(2, 6):
        task = await blocked_get(box)  # the writer is back: the batch was sent
        assert box.held == 0
        box.put_delta("r1", seq, "12345678")
        assert await task == [delta("r1", seq, "12345678")]
    assert overflow.calls == 0


async def test_text_put_while_a_batch_is_sent_counts_with_it() -> None:
    box, overflow = make(10)
    box.put_delta("r1", 1, "12345678")  # admitted alone: not counted
    box.put(b"12")
    await box.get()
    box.put_delta("r1", 2, "123456789")  # 2 being sent + 9 > 10
    assert overflow.calls == 1 and box.overflowed
    assert box.held == 10, "what the writer is still sending counts until the connection ends"
    box.close()
    assert box.held == 0


async def test_the_frame_admitted_alone_does_not_count_while_it_is_held() -> None:
    box, overflow = make(1024)
    box.put(b"r" * 200_000)  # a large `ready`
    box.put_delta("r1", 1, "x" * 1024)
    await box.get()
    box.put(Close(1001, "bye"))
    assert overflow.calls == 0 and box.held == 201_024


async def test_reply_text_counts_in_utf8_bytes() -> None:
    box, overflow = make(10)
    box.put(b"x")
    box.put_delta("r1", 1, "你好你")  # 9 bytes
    assert overflow.calls == 0
    box.put_delta("r1", 2, "好")  # 12 > 10
    assert overflow.calls == 1


async def test_overflow_calls_back_once_drops_and_ignores_later_puts() -> None:
    box, overflow = make(10)
    box.put(b"abc")  # admitted alone: not counted
    box.put_delta("r1", 1, "defgh")
    assert overflow.calls == 0
    box.put_delta("r1", 2, "ijklmn")  # 5 + 6 > 10
    assert overflow.calls == 1 and box.overflowed
    box.put(b"x")
    box.put_delta("r1", 3, "y")
    box.put_delta("r2", 1, "z")
    assert overflow.calls == 1
    task = await blocked_get(box)  # everything was dropped: nothing to take
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_single_large_frame_alone_is_admitted() -> None:
    box, overflow = make(1024)
    box.put(b"x" * 4096)  # e.g. a big `ready` with history: not a slow client
    assert overflow.calls == 0 and await box.get() == [b"x" * 4096]


async def test_a_large_frame_behind_waiting_ones_overflows() -> None:
    box, overflow = make(1024)
    box.put(b"y")
    box.put(b"x" * 1025)
    assert overflow.calls == 1 and box.overflowed


# --------------------------------------------------------------------------- property

op = st.one_of(
    st.tuples(st.just("delta"), st.sampled_from(["r1", "r2", "r3"]), st.text(max_size=8)),
    st.tuples(st.just("frame"), st.just(""), st.text(max_size=4)),
    st.tuples(st.just("get"), st.just(""), st.just("")),
)


def flush(model: list[list[Any]]) -> list[Frame]:
    out: list[Frame] = [delta(m[1], m[2], "".join(m[3])) if m[0] == "D" else m[1] for m in model]
    model.clear()
    return out


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=40))
async def test_any_interleaving_preserves_text_and_order(ops: list[tuple[str, str, str]]) -> None:
    box, overflow = make()
    seq = {"r1": 0, "r2": 0, "r3": 0}
    sent = {"r1": "", "r2": "", "r3": ""}
    model: list[list[Any]] = []  # what should be waiting: ["D", reply, seq, parts] or ["F", frame]
    received: list[Frame] = []
    expected: list[Frame] = []
    waiting: asyncio.Task[list[Frame]] | None = None
    for n, (kind, reply_id, text) in enumerate(ops):
        if kind == "get":
            if waiting is None:
                waiting = await blocked_get(box)
                assert waiting.done() == bool(model)
                if waiting.done():
                    received += waiting.result()
                    expected += flush(model)
                    waiting = None
            continue
        if kind == "delta":
            seq[reply_id] += 1
            sent[reply_id] += text
            box.put_delta(reply_id, seq[reply_id], text)
            if model and model[-1][0] == "D" and model[-1][1] == reply_id:
                model[-1][2] = seq[reply_id]
                model[-1][3].append(text)
            else:
                model.append(["D", reply_id, seq[reply_id], [text]])
        else:
            other = f"frame-{n}-{text}"
            box.put(other)
            model.append(["F", other])
        if waiting is not None:  # the put woke the parked writer
            received += await waiting
            expected += flush(model)
            waiting = None
    if waiting is not None:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    elif model:
        received += await box.get()
        expected += flush(model)
    assert not model
    assert received == expected
    assert overflow.calls == 0
    # the contract, independent of the model: text per reply is whole, seq strictly increasing
    got_text = {"r1": "", "r2": "", "r3": ""}
    last_seq = {"r1": 0, "r2": 0, "r3": 0}
    for frame in received:
        if isinstance(frame, bytes):
            event = orjson.loads(frame)
            assert event["seq"] > last_seq[event["reply_id"]]
            last_seq[event["reply_id"]] = event["seq"]
            got_text[event["reply_id"]] += event["text"]
    assert got_text == sent
    assert last_seq == seq


async def test_frames_put_together_are_admitted_as_one() -> None:
    box, overflow = make(1024)
    with box.together():  # a resume of an ended reply: its catch-up and its end
        box.put_delta("r1", 500, "x" * 50_000)
        box.put(b'{"type":"reply.done"}')
    assert overflow.calls == 0
    frames = await box.get()
    assert len(frames) == 2 and frames[1] == b'{"type":"reply.done"}'


async def test_catch_up_counts_when_something_is_already_held() -> None:
    box, overflow = make(1024)
    box.put(b"x" * 10)
    with box.together():
        box.put_delta("r1", 500, "x" * 50_000)
    assert overflow.calls == 1 and box.overflowed


async def test_repeated_catch_up_overflows_once_the_bound_is_passed() -> None:
    box, overflow = make(100_000)
    for _ in range(4):  # the first is admitted alone; the next three are 120,000 bytes
        with box.together():
            box.put_delta("r1", 5, "x" * 40_000)
            box.put(b'{"type":"reply.done"}')
    assert overflow.calls == 1 and box.held == 0


async def test_holds_delta_until_the_writer_takes_it() -> None:
    box, _ = make()
    assert not box.holds_delta("r1")
    box.put_delta("r1", 1, "a")
    assert box.holds_delta("r1") and not box.holds_delta("r2")
    await box.get()
    assert not box.holds_delta("r1")


# --------------------------------------------------------------------------- the shared budget


def make_shared(budget: OutputBudget, max_pending: int = 1 << 20) -> tuple[Outbox, Overflows]:
    overflow = Overflows()
    return Outbox(max_pending, encode_delta, overflow, budget=budget), overflow


async def test_budget_counts_every_outbox_and_returns_what_is_sent() -> None:
    budget = OutputBudget(1000)
    a, _ = make_shared(budget)
    b, _ = make_shared(budget)
    a.put(b"x" * 300)
    b.put_delta("r", 1, "y" * 200)
    assert budget.total == 500
    await a.get()
    assert budget.total == 500  # being sent still counts
    task = await blocked_get(a)
    assert budget.total == 200
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    b.close()
    assert budget.total == 0


async def test_full_budget_evicts_the_largest_holders_not_the_newcomer() -> None:
    budget = OutputBudget(1000)
    hogs = [make_shared(budget) for _ in range(3)]
    for box, _ in hogs:
        box.put(b"x" * 300)
    small, small_overflow = make_shared(budget)
    small.put(b"y" * 50)
    victim, victim_overflow = make_shared(budget)
    victim.put(b"z" * 200)  # 950 + 200 > 1000: one hog must go
    assert victim_overflow.calls == 0 and small_overflow.calls == 0
    assert sum(o.calls for _, o in hogs) == 1
    assert budget.total == 850 and victim.held == 200


async def test_the_largest_holder_itself_is_refused_when_it_asks_for_more() -> None:
    budget = OutputBudget(1000)
    hog, hog_overflow = make_shared(budget)
    hog.put(b"x" * 900)
    other, other_overflow = make_shared(budget)
    other.put(b"y" * 50)
    hog.put(b"x" * 100)  # the hog is the largest holder: it goes, the other stays
    assert hog_overflow.calls == 1 and other_overflow.calls == 0
    assert budget.total == 50


async def test_a_frame_larger_than_the_whole_budget_is_refused() -> None:
    budget = OutputBudget(100)
    box, overflow = make_shared(budget)
    box.put(b"x" * 101)
    assert overflow.calls == 1 and budget.total == 0


async def test_close_frames_cost_nothing_and_never_evict() -> None:
    budget = OutputBudget(100)
    hog, hog_overflow = make_shared(budget)
    hog.put(b"x" * 100)
    other, _ = make_shared(budget)
    other.put(Close(1001, "bye"))
    assert hog_overflow.calls == 0 and budget.total == 100


async def test_full_budget_evicts_who_does_not_read_before_who_is_being_written_to() -> None:
    budget = OutputBudget(1000)
    reader, reader_overflow = make_shared(budget)
    reader.put(b"r" * 500)
    await reader.get()  # its writer is sending 500: a client that reads
    idle, idle_overflow = make_shared(budget)
    idle.put(b"i" * 100)
    idle.put(b"i" * 300)  # 400 queued, nobody takes them
    newcomer, newcomer_overflow = make_shared(budget)
    newcomer.put(b"n" * 200)
    assert idle_overflow.calls == 1 and reader_overflow.calls == 0 and newcomer_overflow.calls == 0
    assert budget.total == 700


async def test_an_evicted_outbox_counts_what_it_sends_until_it_closes() -> None:
    budget = OutputBudget(1000)
    hog, hog_overflow = make_shared(budget)
    hog.put(b"h" * 600)
    await hog.get()  # being written, to a client that stopped reading
    hog.put(b"h" * 300)
    other, _ = make_shared(budget)
    other.put(b"o" * 200)  # the hog goes; its 600 in flight still count
    assert hog_overflow.calls == 1 and budget.total == 800
    other.put(b"o" * 250)  # no one left to evict: the newcomer is refused
    assert budget.total <= 1000
    hog.close()
    assert budget.total == other.held


class Socket:
    """What ``write_now`` writes to: frames taken at once while ``ready``."""

    def __init__(self) -> None:
        self.ready = True
        self.written: list[Frame] = []

    def __call__(self, frame: Frame) -> bool:
        if self.ready:
            self.written.append(frame)
        return self.ready


def direct(max_pending: int = 1 << 20) -> tuple[Outbox, Socket, list[int]]:
    socket, counted = Socket(), []
    box = Outbox(max_pending, encode_delta, Overflows(), counted.append, OutputBudget(1 << 30), socket)
    return box, socket, counted


async def test_a_frame_put_while_the_writer_waits_idle_is_written_at_once() -> None:
    box, socket, counted = direct()
    box.put(b"early")  # no writer waiting yet: queued
    assert await box.get() == [b"early"]
    writer = await blocked_get(box)
    box.put_delta("r1", 1, "a")
    box.put(b"frame")
    assert socket.written == [delta("r1", 1, "a"), b"frame"]
    assert counted == [1] and box.held == 0 and not writer.done()
    box.put(Close(1000, "bye"))  # a close always goes through the writer
    (closing,) = await writer
    assert isinstance(closing, Close) and closing.code == 1000
    assert socket.written == [delta("r1", 1, "a"), b"frame"]


async def test_a_socket_with_bytes_left_to_send_gets_its_frames_through_the_queue() -> None:
    box, socket, counted = direct()
    writer = await blocked_get(box)
    socket.ready = False  # the last write is not all sent
    box.put_delta("r1", 1, "a")
    socket.ready = True
    box.put_delta("r1", 2, "b")  # behind a queued frame: queued too, in order
    box.put(b"frame")
    assert await writer == [delta("r1", 2, "ab"), b"frame"]
    assert socket.written == [] and counted == [1]


async def test_large_frames_always_go_through_the_queue() -> None:
    box, socket, _ = direct()
    writer = await blocked_get(box)
    big = b"x" * (64 * 1024)
    box.put(big)
    assert await writer == [big]
    assert socket.written == []
