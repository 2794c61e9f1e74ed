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

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction, SchedulerTick

BATCH = 500
# A claimed action not finished after this long was lost between claim and broker (a crash
# right after commit, workers or the broker down): it is claimed again, however often that
# takes. Runners are idempotent, so a slow twin is harmless. Nothing fails for being handed out
# often; only a permanent reason fails an action (:mod:`worker.dunning.actions`).
RECLAIM_AFTER = timedelta(minutes=15)
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
    rows = session.execute(
        select(ScheduledAction.id, ScheduledAction.kind)
        .where(
            ScheduledAction.due_at <= now,
            or_(
                ScheduledAction.status == ActionStatus.PLANNED,
                (ScheduledAction.status == ActionStatus.CLAIMED)
                & (ScheduledAction.claimed_at < now - RECLAIM_AFTER),
            ),
        )
        .order_by(ScheduledAction.due_at, ScheduledAction.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if rows:
        session.execute(
            update(ScheduledAction)
            .where(ScheduledAction.id.in_([row.id for row in rows]))
            .values(status=ActionStatus.CLAIMED, claimed_at=now, claims=ScheduledAction.claims + 1)
        )
    return [Claimed(row.id, row.kind) for row in rows]


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
