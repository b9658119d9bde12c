"""The SQLite store's batches: operations that arrive together share a hop to its thread,
and its writes one transaction, each write inside a savepoint of its own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.stores import StoredMessage
from gateway.stores.sqlite import SQLiteStore
from gateway.stores.sqlite_batch import Batcher, Undo


@pytest.fixture
async def table(tmp_path: Path) -> AsyncIterator[tuple[Batcher, sqlite3.Connection, Path]]:
    """A batcher over a file with one table; its connection does not wait for locks."""
    path = tmp_path / "b.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    batcher = Batcher(lambda: conn)
    yield batcher, conn, path
    await batcher.close(conn.close)


def insert(conn: sqlite3.Connection, key: str) -> str:
    conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
    return key


def keys(conn: sqlite3.Connection) -> list[str]:
    return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


async def test_a_failing_write_is_undone_alone(table: tuple[Batcher, sqlite3.Connection, Path]) -> None:
    batcher, conn, _ = table

    def insert_then_fail(key: str) -> str:
        insert(conn, key)
        raise ValueError("refused")

    def insert_then_undo(key: str) -> str:
        insert(conn, key)
        raise Undo("kept nothing")

    outcomes = await asyncio.gather(
        batcher.run(insert, conn, "a", grouped=True),
        batcher.run(insert_then_fail, "b", grouped=True),
        batcher.run(insert_then_undo, "c", grouped=True),
        batcher.run(insert, conn, "a", grouped=True),  # a duplicate: its own failure
        batcher.run(insert, conn, "d", grouped=True),
        return_exceptions=True,
    )
    assert outcomes[0] == "a" and outcomes[2] == "kept nothing" and outcomes[4] == "d"
    assert isinstance(outcomes[1], ValueError) and isinstance(outcomes[3], sqlite3.IntegrityError)
    assert await batcher.run(keys, conn) == ["a", "d"]


async def test_a_write_that_ends_the_whole_transaction_fails_the_batch_with_its_error(
    table: tuple[Batcher, sqlite3.Connection, Path],
) -> None:
    """SQLite rolls the whole transaction back on some errors (disk full, I/O): then no
    write of the batch stands, and each is told that error."""
    batcher, conn, _ = table

    def disk_full() -> None:
        conn.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    outcomes = await asyncio.gather(
        batcher.run(insert, conn, "a", grouped=True),
        batcher.run(disk_full, grouped=True),
        batcher.run(insert, conn, "b", grouped=True),
        return_exceptions=True,
    )
    assert [str(o) for o in outcomes] == ["database or disk is full"] * 3
    assert not conn.in_transaction
    assert await batcher.run(keys, conn) == []


async def test_a_failed_transaction_fails_every_write_in_it(table: tuple[Batcher, sqlite3.Connection, Path]) -> None:
    batcher, conn, path = table
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        outcomes = await asyncio.gather(
            *(batcher.run(insert, conn, k, grouped=True) for k in "xyz"),
            batcher.run(keys, conn),
            return_exceptions=True,
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(o, sqlite3.OperationalError) and "locked" in str(o) for o in outcomes[:3]), outcomes
    assert outcomes[3] == []  # a read is not part of the writes' transaction
    assert not conn.in_transaction
    assert await asyncio.gather(*(batcher.run(insert, conn, k, grouped=True) for k in "xyz")) == ["x", "y", "z"]
    assert await batcher.run(keys, conn) == ["x", "y", "z"]


async def test_a_job_cancelled_before_its_batch_leaves_is_not_run(
    table: tuple[Batcher, sqlite3.Connection, Path],
) -> None:
    batcher, conn, _ = table
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(30)
        return "held"

    holding = asyncio.create_task(batcher.run(hold))
    await asyncio.to_thread(started.wait, 30)  # the thread is busy with the first batch
    queued = asyncio.create_task(batcher.run(insert, conn, "x", grouped=True))
    await asyncio.to_thread(lambda: None)  # let it queue its job behind that batch
    queued.cancel()
    release.set()
    assert await holding == "held"
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await batcher.run(keys, conn) == []  # the cancelled insert never ran
    assert batcher.batches == 2  # the holding batch, then the read: no batch for the cancelled job


async def test_close_runs_what_was_submitted(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "c.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    batcher = Batcher(lambda: conn)
    left: list[str] = []
    # gather starts its tasks in order: the ten jobs are submitted before close() is called
    *written, _ = await asyncio.gather(
        *(batcher.run(insert, conn, str(n), grouped=True) for n in range(10)),
        batcher.close(lambda: left.extend(keys(conn))),
    )
    assert written == [str(n) for n in range(10)]
    assert sorted(left) == sorted(str(n) for n in range(10))
    with pytest.raises(RuntimeError, match="not open"):
        await batcher.run(keys, conn)


async def test_a_burst_of_messages_takes_a_few_hops_and_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    await store.open()
    convs = await asyncio.gather(*(store.create() for _ in range(100)))
    assert store._batcher is not None
    before = store._batcher.batches
    messages = [StoredMessage(f"m{n}", "user", f"question {n}", created_at=1000.0 + n) for n in range(100)]
    assert await asyncio.gather(*(store.add(c.id, m) for c, m in zip(convs, messages))) == [True] * 100
    assert store._batcher.batches - before <= 3  # the first alone, the rest together
    await store.close()
    with sqlite3.connect(tmp_path / "c.db") as check:
        assert check.execute("SELECT count(*) FROM messages").fetchone() == (100,)
