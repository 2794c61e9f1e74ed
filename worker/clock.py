"""The one injectable clock.

Every "now" in the worker comes from :func:`now`. Production uses the system clock; tests and
the demo install a :class:`ManualClock` with :func:`use_clock` to drive a simulated month in
seconds. Times are always timezone-aware UTC.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)  # noqa: TID251 - the single place that reads the wall clock


class ManualClock:
    """A clock that only moves when told to (thread-safe: the demo's worker threads read it)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            msg = "ManualClock needs an aware datetime"
            raise ValueError(msg)
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)


_clock: Clock = SystemClock()


def now() -> datetime:
    """The current time, aware UTC, from the installed clock."""
    return _clock.now()


def install(clock: Clock) -> Clock:
    """Install ``clock`` process-wide; returns the previous one."""
    global _clock
    previous, _clock = _clock, clock
    return previous


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)
