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
MAX_CLAIMS = 8  # an action handed out this often without finishing is marked failed
SWEEP_AFTER = timedelta(minutes=1)  # an inbox row still pending this long is enqueued again
MAX_SWEEP_BACKOFF = timedelta(hours=1)


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


def sweep_inbox(session: Session, *, now: datetime, limit: int = BATCH) -> list[int]:
    """Inbox rows whose processing has not finished: hand them to the broker again.

    A row is swept a minute after intake, then 2, 4, ... minutes after each hand-off (at most
    an hour apart), and never given up on: Stripe already has its 200, so this row is the
    only copy. Rows stuck through a long outage show in ``/metrics`` (oldest pending age) and
    go through once workers, the database and the provider answer again.
    """
    rows = session.scalars(
        select(InboxEvent)
        .where(InboxEvent.status == InboxStatus.PENDING, InboxEvent.sweep_at <= now)
        .order_by(InboxEvent.sweep_at, InboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        row.enqueue_count += 1
        row.sweep_at = now + min(SWEEP_AFTER * 2 ** (row.enqueue_count - 1), MAX_SWEEP_BACKOFF)
    return [row.id for row in rows]
