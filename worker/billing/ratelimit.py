"""A client-side rate limiter for long sequential Stripe reads (the backfill, the card-expiry
scan), so they leave the account's request budget to the running worker."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Spaces calls at least ``1 / per_second`` apart (one sequential caller)."""

    def __init__(
        self,
        per_second: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0:
            msg = f"requests per second must be positive, got {per_second}"
            raise ValueError(msg)
        self._interval = 1.0 / per_second
        self._monotonic, self._sleep = monotonic, sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self._monotonic()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval
