"""Group commit for the webhook intake: the deliveries that arrive while one transaction is
committing are stored together by the next, one ``INSERT`` of many rows
(:func:`worker.webhooks.inbox.store_events`).

A request hands its parsed delivery to :meth:`InboxWriter.store` and waits: it is answered
only once the transaction holding its row has committed (or failed), exactly as with one
transaction per request, but the round trips, the commit and the thread hand-offs are paid
once per batch. A few writer threads (one on SQLite, its single writer) take turns, so one
batch is built while another commits.

A batch that fails on the database (down, frozen) fails every request in it: each is answered
503 and redelivered by Stripe. A batch that fails for any other reason is written again one
delivery at a time, so one delivery the database refuses fails alone. A request that gave up
waiting (the intake's deadline) is left out of the batches not yet begun; one already in a
transaction may still be stored, and its redelivery is then a duplicate: no second row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from worker import clock
from worker.db import retry_once_on_disconnect
from worker.webhooks.inbox import Delivery, Stored, store_events

log = logging.getLogger(__name__)

MAX_BATCH = 200  # rows in one INSERT: a few hundred KB of payload


@dataclass
class _Waiting:
    delivery: Delivery
    future: asyncio.Future[Stored]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class InboxWriter:
    """Stores deliveries for asyncio callers, in batches, on ``threads`` threads.
    ``after_commit(inbox_id)`` runs for each row added, once its transaction committed."""

    def __init__(
        self,
        engine: Engine,
        *,
        provider: str,
        threads: int,
        after_commit: Callable[[int], None],
    ) -> None:
        self._engine, self._provider = engine, provider
        self._threads, self._after_commit = threads, after_commit
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    async def store(self, delivery: Delivery) -> Stored:
        """The delivery stored (its inbox id) or found already stored (None), once
        committed; the database's exception if its batch could not be stored."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
        self._queue.put(_Waiting(delivery, future, loop))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self._threads):
                name = f"inbox-writer-{i}"
                threading.Thread(target=self._run, name=name, daemon=True).start()
            self._started = True

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            waiting = [w for w in batch if not w.future.done()]  # done: gave up, or cancelled
            if waiting:
                try:
                    self._write(waiting)
                except Exception:  # a writer thread never dies: its requests time out
                    log.exception("inbox writer failed on a batch of %s", len(waiting))

    def _write(self, waiting: list[_Waiting]) -> None:
        try:
            added = retry_once_on_disconnect(lambda: self._insert(waiting))
        except Exception as exc:
            if len(waiting) == 1 or _unavailable(exc):  # then for all of them
                _settle(waiting, exc)
                return
            log.warning(
                "a batch of %s deliveries failed (%s): storing them one by one",
                len(waiting),
                type(exc).__name__,
            )
            for one in waiting:
                self._write([one])
            return
        claimed: set[str] = set()
        results = []
        for w in waiting:
            event_id = w.delivery.event_id
            inbox_id = added.get(event_id) if event_id not in claimed else None
            claimed.add(event_id)
            results.append(Stored(inbox_id, event_id))
        _settle(waiting, results)
        for inbox_id in added.values():
            try:
                self._after_commit(inbox_id)
            except Exception:  # the sweeper hands the event over later
                log.exception("after-commit work failed for inbox row %s", inbox_id)

    def _insert(self, waiting: list[_Waiting]) -> dict[str, int]:
        with self._engine.begin() as conn:
            return store_events(
                conn,
                provider=self._provider,
                deliveries=[w.delivery for w in waiting],
                now=clock.now(),
            )


def _unavailable(exc: Exception) -> bool:
    """The database, not this batch, is the problem."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _settle(waiting: list[_Waiting], outcome: list[Stored] | BaseException) -> None:
    """Hand each caller its result (or the exception), one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Stored], object]]] = {}
    for i, w in enumerate(waiting):
        value = outcome if isinstance(outcome, BaseException) else outcome[i]
        by_loop.setdefault(w.loop, []).append((w.future, value))
    for loop, pairs in by_loop.items():
        with suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future[Stored], object]]) -> None:
    for future, value in pairs:
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            assert isinstance(value, Stored)  # noqa: S101 - for the type checker
            future.set_result(value)
