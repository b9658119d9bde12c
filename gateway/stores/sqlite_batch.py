"""The SQLite store's thread, and how operations that arrive together share it.

Every store operation is a job for one dedicated thread. Jobs that arrive while the
thread is busy wait, and the next hop off the event loop takes them all: a burst of
messages costs a few hops, not one each. Jobs queued together were submitted
concurrently (each caller waits for its own), so any order among them is valid:
the *grouped* writes run first, in one transaction, each inside a savepoint (a
failing write is undone alone, the others commit together: one commit for the
burst); then the other jobs, one after another, each its own transaction as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Batcher", "Undo"]

T = TypeVar("T")
_Outcome = tuple[bool, Any]  # (True, value) or (False, exception)


class Undo(Exception):
    """Raised by a grouped write to undo what it did and still return ``value``."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class _Job:
    __slots__ = ("fn", "args", "grouped", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], grouped: bool, future: asyncio.Future[Any]) -> None:
        self.fn, self.args, self.grouped, self.future = fn, args, grouped, future


class Batcher:
    """Runs jobs on one thread, a batch per hop. Owns the thread and the task that
    hands it batches; :meth:`close` waits for the jobs already submitted."""

    def __init__(self, connection: Callable[[], sqlite3.Connection]) -> None:
        self._connection = connection
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._jobs: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # hops to the thread so far

    async def run(self, fn: Callable[..., T], *args: Any, grouped: bool = False) -> T:
        """``fn(*args)`` on the thread; ``grouped``: a write that runs inside the batch's
        shared transaction (it must not begin or end transactions itself)."""
        if self._closed:
            raise RuntimeError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.append(_Job(fn, args, grouped, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="sqlite-batches")
        return await future

    async def close(self, last: Callable[[], None]) -> None:
        """Run the jobs already submitted, then ``last`` on the thread; stop the thread."""
        self._closed = True
        try:
            if self._flusher is not None:  # shielded: cancelling close() must not drop a batch
                await asyncio.shield(self._flusher)
            await asyncio.get_running_loop().run_in_executor(self._thread, last)
        finally:
            self._thread.shutdown(wait=True)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._jobs:
                # A job whose caller was cancelled before its batch left is not run (as
                # run_in_executor does not run a cancelled call that has not started).
                jobs, self._jobs = [job for job in self._jobs if not job.future.done()], []
                if not jobs:
                    continue
                self.batches += 1
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._run_batch, jobs)
                except Exception as exc:  # the thread is gone: every job of the batch fails
                    outcomes = [(False, exc)] * len(jobs)
                except asyncio.CancelledError:  # the loop is going away: so are the callers
                    _settle(jobs, [(False, RuntimeError("the store was closed"))] * len(jobs))
                    raise
                _settle(jobs, outcomes)
        finally:
            self._flusher = None

    def _run_batch(self, jobs: list[_Job]) -> list[_Outcome]:
        """On the thread: the grouped writes in one transaction, then the other jobs."""
        outcomes: dict[int, _Outcome] = {}
        grouped = [(n, job) for n, job in enumerate(jobs) if job.grouped]
        if grouped:
            outcomes.update(self._group(grouped))
        for n, job in enumerate(jobs):
            if not job.grouped:
                outcomes[n] = _call(job)
        return [outcomes[n] for n in range(len(jobs))]

    def _group(self, jobs: list[tuple[int, _Job]]) -> dict[int, _Outcome]:
        conn = self._connection()
        outcomes: dict[int, _Outcome] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            for n, job in jobs:
                conn.execute("SAVEPOINT job")
                ok, value = outcomes[n] = _call(job)
                if not ok and not conn.in_transaction:  # SQLite rolled it all back (disk full, I/O)
                    raise value
                if not ok:
                    conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except Exception as exc:  # the transaction as a whole failed: none of its writes stands
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return {n: (False, exc) for n, _ in jobs}
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return {n: (True, o[1].value) if isinstance(o[1], Undo) else o for n, o in outcomes.items()}


def _settle(jobs: list[_Job], outcomes: list[_Outcome]) -> None:
    for job, (ok, value) in zip(jobs, outcomes, strict=True):
        if job.future.done():  # its caller was cancelled
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


def _call(job: _Job) -> _Outcome:
    try:
        return True, job.fn(*job.args)
    except Exception as exc:
        return False, exc
