"""One Stripe request budget for the whole fleet: every worker, beat, intake and CLI process
on every host draws from the same two token buckets, ``read`` (GET) and ``write`` (POST,
DELETE), refilled at the account's rates (``DUNNING_STRIPE_READ_RPS`` /
``DUNNING_STRIPE_WRITE_RPS``), and honours one fleet-wide pause that a 429 sets.

Where the buckets live: in Redis when the broker is Redis (one Lua script per take: refill by
the time elapsed on Redis' own clock, then take a token or answer the wait), else in the
database (one ``UPDATE ... RETURNING`` per take on a row per bucket: PostgreSQL's row lock or
SQLite's write lock makes it atomic; the database's clock times it). Either way one round
trip, and one clock for all hosts.

A take never reserves a token for later: it takes one now or answers how long until one is
there, and the caller sleeps and asks again. So a call that never happens (its wait is over
its deadline, its process dies while waiting) consumes nothing. A wait longer than the
caller's deadline raises :class:`OverBudgetError` at once, without sleeping; the gateway turns
it into a transient provider error (the action is put back and retried later).

Each bucket holds at most a tenth of a second's worth of tokens (at least one): in any window
of ``t`` seconds at most ``rate * t + max(1, rate / 10)`` calls of a kind start.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from worker.settings import Settings
from worker.telemetry import STRIPE_BUDGET_REFUSED, STRIPE_BUDGET_WAIT

log = logging.getLogger(__name__)

Kind = Literal["read", "write"]
KINDS: tuple[Kind, ...] = ("read", "write")
BURST_SECONDS = 0.1  # a bucket holds this many seconds' worth of tokens (at least one)
MAX_PAUSE_S = 60.0
REDIS_TIMEOUT_S = 1.0  # a budget that does not answer within this is unavailable


class OverBudgetError(Exception):
    """No token within the caller's deadline (or the budget's store is unreachable): the
    call is not made; try again later."""


@dataclass(frozen=True)
class Rates:
    read: float = 100.0  # requests per second, Stripe's live-mode default
    write: float = 100.0

    def of(self, kind: Kind) -> float:
        return self.read if kind == "read" else self.write

    def capacity(self, kind: Kind) -> float:
        return max(1.0, self.of(kind) * BURST_SECONDS)


class StripeBudget(ABC):
    """The fleet's token buckets; subclasses keep them in one shared store."""

    def __init__(self, rates: Rates) -> None:
        self.rates = rates

    def take(self, kind: Kind, *, max_wait_s: float) -> float:
        """Take one ``kind`` token, sleeping while the bucket is empty or the fleet is
        paused; returns the seconds waited. Raises :class:`OverBudgetError`, without
        sleeping, as soon as the wait would end after ``max_wait_s``."""
        started = time.monotonic()
        deadline = started + max_wait_s
        while True:
            try:
                wait = self._try_take(kind)
            except (redis.RedisError, DBAPIError) as exc:
                STRIPE_BUDGET_REFUSED.labels(kind).inc()
                msg = f"stripe budget unavailable ({type(exc).__name__})"
                raise OverBudgetError(msg) from exc
            now = time.monotonic()
            if wait <= 0:
                STRIPE_BUDGET_WAIT.labels(kind).observe(now - started)
                return now - started
            if now + wait > deadline:
                STRIPE_BUDGET_REFUSED.labels(kind).inc()
                msg = (
                    f"stripe {kind} budget: next token in {wait:.2f} s, "
                    f"beyond this call's {max_wait_s:.2f} s"
                )
                raise OverBudgetError(msg)
            # A little jitter so that waiters woken together do not all ask at once.
            time.sleep(wait + random.uniform(0, 0.2 / self.rates.of(kind)))  # noqa: S311

    def pause(self, seconds: float) -> None:
        """Stripe said 429: no process takes a token of either kind for ``seconds`` (a
        longer pause already set stands). Best effort: a store that cannot be reached is
        logged, the caller's own back-off still applies."""
        seconds = min(max(seconds, 0.0), MAX_PAUSE_S)
        try:
            self._pause(seconds)
        except (redis.RedisError, DBAPIError) as exc:
            log.warning("stripe budget: pause not shared (%s)", type(exc).__name__)

    def close(self) -> None:  # noqa: B027 - only the Redis budget holds connections
        """Let go of connections (the database's engine belongs to its owner)."""

    @abstractmethod
    def _try_take(self, kind: Kind) -> float:
        """Take a token now and answer 0, or answer the seconds until one may be there
        (taking nothing)."""

    @abstractmethod
    def _pause(self, seconds: float) -> None: ...


# KEYS: bucket, pause. ARGV: rate per second, capacity. Times in ms on Redis' clock, so every
# host agrees. Answers the wait in seconds as a string (Lua numbers become integers in Redis).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return tostring(paused / 1000) end
local rate, cap = tonumber(ARGV[1]) / 1000, tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = cap, now end
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate / 1000 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate) + 1000)
return tostring(wait)
"""
# KEYS: pause. ARGV: ms. A longer pause already set stands.
_PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 0
"""


class RedisBudget(StripeBudget):
    """The buckets as two Redis hashes and the pause as a key that expires."""

    PREFIX = "dunning:stripe-budget:"

    def __init__(self, url: str, rates: Rates) -> None:
        super().__init__(rates)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._take = self._redis.register_script(_TAKE)
        self._set_pause = self._redis.register_script(_PAUSE)

    def _try_take(self, kind: Kind) -> float:
        keys = [f"{self.PREFIX}{kind}", f"{self.PREFIX}pause"]
        answer = self._take(keys=keys, args=[self.rates.of(kind), self.rates.capacity(kind)])
        return float(answer)

    def _pause(self, seconds: float) -> None:
        ms = max(1, round(seconds * 1000))
        self._set_pause(keys=[f"{self.PREFIX}pause"], args=[ms])

    def close(self) -> None:
        self._redis.close()


# The database's own clock (one for all hosts), in seconds since the epoch. On PostgreSQL
# now() is the statement's start in autocommit; a take that waited for the row lock counts
# from before its wait, which only ever refills less.
_NOW = {
    "postgresql": "extract(epoch FROM now())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_LEAST = {"postgresql": "least", "sqlite": "min"}
_GREATEST = {"postgresql": "greatest", "sqlite": "max"}


class DatabaseBudget(StripeBudget):
    """The buckets as rows of ``stripe_budget`` (table in :mod:`worker.billing.models`), for
    a fleet without Redis: one ``UPDATE ... RETURNING`` per take, atomic under the row lock
    (PostgreSQL) or the write lock (SQLite)."""

    def __init__(self, engine: Engine, rates: Rates) -> None:
        super().__init__(rates)
        self._engine = engine
        dialect = engine.dialect.name
        self._postgresql = dialect == "postgresql"
        now, least, greatest = _NOW[dialect], _LEAST[dialect], _GREATEST[dialect]
        elapsed = f"{greatest}(0, {now} - refilled_at_s)"
        level = f"{least}(:capacity, tokens + {elapsed} * :rate)"
        grant = f"(paused_until_s <= {now} AND {level} >= 1)"
        self._take_sql = text(
            f"UPDATE stripe_budget SET granted = {grant},"  # noqa: S608 - no user input
            f" tokens = CASE WHEN {grant} THEN {level} - 1 ELSE {level} END,"
            f" refilled_at_s = {greatest}(refilled_at_s, {now})"
            " WHERE name = :name"
            f" RETURNING granted, tokens, paused_until_s - {now} AS paused_s"
        )
        self._pause_sql = text(
            "UPDATE stripe_budget"  # noqa: S608 - no user input
            f" SET paused_until_s = {greatest}(paused_until_s, {now} + :seconds)"
        )
        self._seed_sql = text(
            "INSERT INTO stripe_budget (name, tokens, refilled_at_s, paused_until_s, granted)"
            " VALUES (:name, 0, 0, 0, false) ON CONFLICT (name) DO NOTHING"
        )

    def _try_take(self, kind: Kind) -> float:
        params = {"name": kind, "rate": self.rates.of(kind), "capacity": self.rates.capacity(kind)}
        with self._engine.begin() as conn:
            if self._postgresql:  # a crash losing the last takes costs a small burst: no fsync
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            row = conn.execute(self._take_sql, params).first()
            if row is None:  # a fresh or emptied table: the bucket starts full
                conn.execute(self._seed_sql, {"name": kind})
                row = conn.execute(self._take_sql, params).one()
        granted, tokens, paused_s = bool(row.granted), float(row.tokens), float(row.paused_s)
        if granted:
            return 0.0
        if paused_s > 0:
            return paused_s
        return (1 - tokens) / self.rates.of(kind)

    def _pause(self, seconds: float) -> None:
        with self._engine.begin() as conn:
            for kind in KINDS:
                conn.execute(self._seed_sql, {"name": kind})
            conn.execute(self._pause_sql, {"seconds": seconds})


def budget_for(settings: Settings, engine: Callable[[], Engine]) -> StripeBudget:
    """Redis when the broker is Redis (every host already reaches it), else the database."""
    rates = Rates(read=settings.stripe_read_rps, write=settings.stripe_write_rps)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisBudget(settings.broker_url, rates)
    return DatabaseBudget(engine(), rates)
