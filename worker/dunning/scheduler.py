"""Claiming due actions for the scheduler tick, which hands them to the broker.

Long waits live here, in ``scheduled_actions.due_at``, never in Celery eta (the Redis transport
redelivers long-eta messages after its visibility timeout). Claims use ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so two ticks never claim the same row; on SQLite the tick's
transaction holds the write lock from its first statement (``worker.db``), which serialises
claimers. Enqueueing happens after the claim commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction, SchedulerTick

BATCH = 1_000  # rows claimed per transaction; a tick claims batch after batch (webhooks.tasks)
# A claimed action not finished after this long was lost between claim and broker (a crash
# right after commit, workers or the broker down): it is claimed again, however often that
# takes. Runners are idempotent, so a slow twin is harmless. Nothing fails for being handed out
# often; only a permanent reason fails an action (:mod:`worker.dunning.actions`).
RECLAIM_AFTER = timedelta(minutes=15)
# Back-pressure: a tick stops handing out once this many actions are claimed and not finished
# (in the broker or running), so a burst waits in this table, not in the broker, and nothing
# sits in a queue until RECLAIM_AFTER hands it out a second time. Room for more than the
# fastest fleet drains between two ticks (schedule.TICK_EVERY), well below what the slowest
# drains in RECLAIM_AFTER.
MAX_IN_FLIGHT = 20_000
# A runner that met a transient failure (Stripe 5xx or unreachable, SMTP down) puts its action
# back, due again after this back-off: doubling from the first, up to the last.
RETRY_AFTER_FIRST, RETRY_AFTER_MAX = timedelta(minutes=1), timedelta(minutes=30)


def transient_backoff(claims: int) -> timedelta:
    """How long an action waits after its ``claims``-th hand-out met a transient failure."""
    return min(RETRY_AFTER_FIRST * 2 ** min(max(claims - 1, 0), 16), RETRY_AFTER_MAX)


@dataclass(frozen=True)
class Claimed:
    action_id: int
    kind: ActionKind


def claim_due(session: Session, *, now: datetime, limit: int = BATCH) -> list[Claimed]:
    """Claim up to ``limit`` due actions: lost claims first (claimed longer than
    RECLAIM_AFTER ago), then planned actions, oldest due first. Each is a ``SELECT ... FOR
    UPDATE SKIP LOCKED`` on a partial index of migration 0017, walked in order up to the
    limit, so a tick with nothing due costs two index probes whatever the table's size; one
    ``UPDATE`` by primary key marks what they found."""
    rows = _due(
        session,
        (ScheduledAction.status == ActionStatus.CLAIMED)
        & (ScheduledAction.claimed_at < now - RECLAIM_AFTER)
        & (ScheduledAction.due_at <= now),
        ScheduledAction.claimed_at,
        limit=limit,
    )
    if len(rows) < limit:
        rows += _due(
            session,
            (ScheduledAction.status == ActionStatus.PLANNED) & (ScheduledAction.due_at <= now),
            ScheduledAction.due_at,
            limit=limit - len(rows),
        )
    if rows:
        session.execute(
            update(ScheduledAction)
            .where(ScheduledAction.id.in_([row.id for row in rows]))
            .values(status=ActionStatus.CLAIMED, claimed_at=now, claims=ScheduledAction.claims + 1)
            .execution_options(synchronize_session=False)
        )
    rows.sort(key=lambda row: (row.due_at, row.id))
    return [Claimed(row.id, row.kind) for row in rows]


def _due(
    session: Session,
    where: ColumnElement[bool],
    oldest: InstrumentedAttribute[Any],
    *,
    limit: int,
) -> list[Row[int, ActionKind, datetime]]:
    if limit <= 0:
        return []
    return list(
        session.execute(
            select(ScheduledAction.id, ScheduledAction.kind, ScheduledAction.due_at)
            .where(where)
            .order_by(oldest, ScheduledAction.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def in_flight(session: Session, *, now: datetime, at_most: int) -> int:
    """Actions claimed and not finished nor lost yet (in the broker or running), counted up
    to ``at_most``: the count walks the claims index no further than the bound."""
    claims = (
        select(ScheduledAction.id)
        .where(
            ScheduledAction.status == ActionStatus.CLAIMED,
            ScheduledAction.claimed_at >= now - RECLAIM_AFTER,
        )
        .limit(at_most)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(claims)) or 0


def record_tick(session: Session, *, now: datetime, claimed: int, swept: int) -> None:
    """The tick's heartbeat: one upsert, in the tick's own transaction."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = {"name": "scheduler", "at": now, "claimed": claimed, "swept": swept}
    session.execute(
        insert(SchedulerTick)
        .values(**values)
        .on_conflict_do_update(index_elements=["name"], set_=values)
    )


def last_tick(session: Session) -> SchedulerTick | None:
    return session.get(SchedulerTick, "scheduler")
