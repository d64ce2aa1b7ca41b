"""The thread that owns a SQLite connection, and group commit: queued writes share one transaction.

An operation is a synchronous function of the connection. The event loop queues it and awaits a
future; the thread takes everything queued so far as one batch. A batch with a write runs in one
BEGIN IMMEDIATE transaction, each write under its own SAVEPOINT (a failing operation rolls back only
itself), and every answer of the batch is handed back in one callback after COMMIT; a batch of reads
runs without a transaction.

Must not: import aiohttp or know the schema; answer a write before its transaction commits; or touch
the connection from any thread but its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from gateway.core.errors import StoreUnavailable

__all__ = ["Op", "Runner", "store_error"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]

# Bounds how long one transaction holds the file's write lock while other processes wait on it.
_MAX_BATCH = 128


def store_error(exc: BaseException) -> BaseException:
    """What the caller sees: the gateway's own errors as raised, SQLite's as StoreUnavailable."""
    if isinstance(exc, sqlite3.Error):
        mapped = StoreUnavailable(f"SQLite: {exc}")
        mapped.__cause__ = exc
        return mapped
    return exc


@dataclass(slots=True)
class _Job:
    fn: Op[Any]
    write: bool
    future: asyncio.Future[Any]


# (future, succeeded, result or exception), handed back to the future's event loop in one callback.
_Done = tuple[asyncio.Future[Any], bool, Any]


def _settle(done: list[_Done]) -> None:
    for future, ok, value in done:
        if future.done():  # the caller was cancelled; its operation ran (or not) all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None]


class Runner:
    """The database thread and its queue: many operations, one transaction, one wake-up back.

    A dedicated thread reading a SimpleQueue rather than a ThreadPoolExecutor: the queue is what
    forms the batches (everything already in it when the thread looks), and the executor's own
    bookkeeping (a concurrent Future, locks and a semaphore per submit) measured ~20 us per hop here.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[_Job | _Stop] = SimpleQueue()
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def start(cls, connect: Callable[[], sqlite3.Connection]) -> Runner:
        """Starts the thread, which opens the connection with `connect` and keeps it to itself."""
        runner = cls()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Daemon: a store nobody closed must not keep the process alive; SQLite's journal keeps the
        # file consistent even if the thread dies with the interpreter.
        threading.Thread(target=runner._main, args=(connect, ready), name="gateway-sqlite", daemon=True).start()
        await ready
        return runner

    def submit(self, fn: Op[T], *, write: bool) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(fn, write, future))
        return future

    async def stop(self) -> None:
        """Runs what is queued, then closes the connection and ends the thread."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Stop(future))
        await future

    def _main(self, connect: Callable[[], sqlite3.Connection], ready: asyncio.Future[None]) -> None:
        try:
            self._db = connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting opener, which re-raises it
            self._deliver([(ready, False, exc)])
            return
        self._deliver([(ready, True, None)])
        stop: _Stop | None = None
        while stop is None:
            first = self._queue.get()
            if isinstance(first, _Stop):
                stop = first
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    break
                if isinstance(item, _Stop):
                    stop = item
                    break
                batch.append(item)
            try:
                done = self._run(batch) if any(job.write for job in batch) else [self._call(job) for job in batch]
            except BaseException as exc:  # noqa: BLE001 - never strand a caller: it would wait forever
                done = [(job.future, False, store_error(exc)) for job in batch]
            self._deliver(done)
        try:
            self._db.close()
        finally:
            self._deliver([(stop.future, True, None)])

    def _call(self, job: _Job) -> _Done:
        assert self._db is not None
        try:
            return job.future, True, job.fn(self._db)
        except Exception as exc:  # noqa: BLE001 - the operation's own error, raised again in its caller
            return job.future, False, store_error(exc)

    def _run(self, batch: list[_Job]) -> list[_Done]:
        """One write transaction for the whole batch; each write inside its own savepoint."""
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(job.future, False, store_error(exc)) for job in batch]
        done: list[_Done] = []
        try:
            for job in batch:
                # Alone in its transaction an operation needs no savepoint: ROLLBACK undoes only it.
                guarded = job.write and len(batch) > 1
                if guarded:
                    db.execute("SAVEPOINT op")
                outcome = self._call(job)
                done.append(outcome)
                if not outcome[1]:
                    if not db.in_transaction:
                        # SQLite itself rolled the transaction back (I/O error, disk full, ...):
                        # what the earlier operations wrote is gone with it.
                        raise StoreUnavailable("SQLite rolled back the transaction")
                    if guarded:
                        db.execute("ROLLBACK TO op")
                    elif job.write:
                        db.execute("ROLLBACK")
                        return done
                if guarded:
                    db.execute("RELEASE op")
            db.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the batch is lost: every caller in it gets the error
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            lost = store_error(exc)
            failed = {id(f): v for f, ok, v in done if not ok}
            return [(job.future, False, failed.get(id(job.future), lost)) for job in batch]
        return done

    @staticmethod
    def _deliver(done: list[_Done]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        for item in done:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is waiting for these any more
                pass
