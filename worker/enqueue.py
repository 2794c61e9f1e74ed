"""Handing a task to the broker after a commit, by name, without ever failing or holding up
the caller.

A broker that is down or frozen must not slow what called it: every send goes through a
circuit breaker (after a failure, sends are skipped for a cool-down that doubles up to
30 s), and the webhook intake hands its sends to a background thread (:class:`Background`),
so a request is answered as soon as its event is durable. A send that is skipped or fails
loses nothing: the inbox sweeper and the scheduler tick hand over whatever stays pending.

Lives below every task module so that none of them imports the Celery app factory
(:mod:`worker.app`), which imports them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)

# The queues tasks go to, one per kind of work so that each scales with its own workers
# (routes: worker.app; `dunning worker -Q`). Here, below the app, so that a command can check
# a name without importing the app (and its metrics) first.
QUEUES = ("intake", "payments", "emails", "scheduler")
COOL_DOWN_FIRST_S, COOL_DOWN_MAX_S = 1.0, 30.0
BACKLOG = 10_000  # sends waiting for the background thread; beyond that they are skipped
SEND_BATCH = 50  # sends that share one producer
SENDERS = 2  # threads: each send waits a round trip to the broker, the other one sends


class Breaker:
    """Open after a failed send: the next sends are skipped until the cool-down has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._cool_down = COOL_DOWN_FIRST_S

    def allows(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._open_until

    def failed(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self._cool_down
            self._cool_down = min(self._cool_down * 2, COOL_DOWN_MAX_S)

    def succeeded(self) -> None:
        with self._lock:
            self._open_until, self._cool_down = 0.0, COOL_DOWN_FIRST_S


def _breaker(app: Celery) -> Breaker:
    found = app.__dict__.get("_enqueue_breaker")
    if found is None:
        found = app.__dict__.setdefault("_enqueue_breaker", Breaker())
    return found


def send_now(app: Celery, name: str, kwargs: dict[str, Any]) -> None:
    """Send one task unless the breaker is open; a failure is logged and opens it."""
    breaker = _breaker(app)
    if not breaker.allows():
        log.debug("enqueue of %s skipped, broker unavailable: sweeper will hand it over", name)
        return
    try:
        app.send_task(name, kwargs=kwargs, retry=False)
    except Exception as exc:  # any broker failure: the sweeper catches up
        breaker.failed()
        log.warning("enqueue of %s failed, sweeper will retry: %s", name, type(exc).__name__)
    else:
        breaker.succeeded()


def send_many(app: Celery, sends: list[tuple[str, dict[str, Any]]]) -> None:
    """Send these tasks on one producer (one connection from the pool for all) unless the
    breaker is open; the first failure opens it and skips the rest (the sweeper hands them
    over). The representations Celery would build of each task's arguments are given, so
    none is computed by its safe (and slow) repr."""
    breaker = _breaker(app)
    if not breaker.allows():
        log.debug("enqueue of %s task(s) skipped, broker unavailable", len(sends))
        return
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for name, kwargs in sends:
                app.send_task(
                    name,
                    kwargs=kwargs,
                    retry=False,
                    producer=producer,
                    argsrepr="()",
                    kwargsrepr=repr(kwargs),
                )
                sent += 1
    except Exception as exc:  # any broker failure: the sweeper catches up
        breaker.failed()
        log.warning(
            "enqueue of %s task(s) failed, sweeper will retry: %s",
            len(sends) - sent,
            type(exc).__name__,
        )
    else:
        breaker.succeeded()


def send_safely(app: Celery, name: str, **kwargs: Any) -> Callable[[], None]:
    """An after-commit callback that sends ``name`` from the calling thread (the tick)."""
    return lambda: send_now(app, name, kwargs)


class Background:
    """Sends from daemon threads, so the caller (an HTTP request) never waits on the
    broker. A full backlog skips the send (the sweeper hands the event over later)."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        # SimpleQueue: a put is one C call, no lock of ours around it (a request's cost)
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sender(self, name: str, **kwargs: Any) -> Callable[[], None]:
        """An after-commit callback that queues the send and returns at once."""

        def queue_send() -> None:
            if self._thread is None:
                self._start()
            if self._queue.qsize() >= BACKLOG:
                log.warning("enqueue of %s skipped, %s sends waiting", name, BACKLOG)
                return
            self._queue.put((name, kwargs))

        return queue_send

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                for i in range(SENDERS):
                    thread = threading.Thread(target=self._run, name=f"enqueue-{i}", daemon=True)
                    thread.start()
                self._thread = thread

    def _run(self) -> None:
        """Everything queued since the last round goes out together."""
        while True:
            sends = [self._queue.get()]
            while len(sends) < SEND_BATCH:
                try:
                    sends.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            send_many(self._app, sends)
