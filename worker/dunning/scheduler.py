"""The scheduler tick: claim due actions and hand them to the broker; sweep the inbox.

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
from worker.webhooks.models import InboxEvent, InboxStatus

BATCH = 500
# A claimed action not finished after this long was lost between claim and broker (a crash
# right after commit): it is claimed again. Runners are idempotent, so a slow twin is harmless.
RECLAIM_AFTER = timedelta(minutes=15)
SWEEP_AFTER = timedelta(minutes=1)  # an inbox row still pending this long is enqueued again
MAX_ENQUEUES = 10  # then it is marked failed for ops instead of being retried forever


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
    ids = [row.id for row in rows]
    if ids:
        session.execute(
            update(ScheduledAction)
            .where(ScheduledAction.id.in_(ids))
            .values(status=ActionStatus.CLAIMED, claimed_at=now)
        )
    return [Claimed(row.id, row.kind) for row in rows]


def sweep_inbox(session: Session, *, now: datetime, limit: int = BATCH) -> list[int]:
    """Inbox rows whose processing never started: enqueue again (a broker outage at intake)."""
    rows = session.scalars(
        select(InboxEvent)
        .where(InboxEvent.status == InboxStatus.PENDING, InboxEvent.enqueued_at < now - SWEEP_AFTER)
        .order_by(InboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    again = []
    for row in rows:
        if row.enqueue_count >= MAX_ENQUEUES:
            row.status = InboxStatus.FAILED
            row.error = f"not processed after {MAX_ENQUEUES} deliveries to the broker"
            row.processed_at = now
        else:
            row.enqueue_count += 1
            row.enqueued_at = now
            again.append(row.id)
    return again
