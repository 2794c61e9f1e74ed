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
from sqlalchemy.orm import Session

from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction

BATCH = 500
# A claimed action not finished after this long was lost between claim and broker (a crash
# right after commit): it is claimed again. Runners are idempotent, so a slow twin is harmless.
RECLAIM_AFTER = timedelta(minutes=15)
MAX_CLAIMS = 8  # an action handed out this often without finishing is marked failed


@dataclass(frozen=True)
class Claimed:
    action_id: int
    kind: ActionKind


def claim_due(session: Session, *, now: datetime, limit: int = BATCH) -> list[Claimed]:
    rows = session.execute(
        select(ScheduledAction.id, ScheduledAction.kind, ScheduledAction.claims)
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
    worn = [row.id for row in rows if row.claims >= MAX_CLAIMS]
    if worn:  # handed out again and again without finishing: stop, visibly
        session.execute(
            update(ScheduledAction)
            .where(ScheduledAction.id.in_(worn))
            .values(
                status=ActionStatus.FAILED,
                finished_at=now,
                note=f"gave up: not finished after {MAX_CLAIMS} hand-outs",
            )
        )
    claimed = [row for row in rows if row.claims < MAX_CLAIMS]
    if claimed:
        session.execute(
            update(ScheduledAction)
            .where(ScheduledAction.id.in_([row.id for row in claimed]))
            .values(status=ActionStatus.CLAIMED, claimed_at=now, claims=ScheduledAction.claims + 1)
        )
    return [Claimed(row.id, row.kind) for row in claimed]
