"""The floors of ``bench/pipeline.py``: two tasks the real ``dunning worker`` loads beside its
own (``dunning worker -I pipeline_floor``, with ``bench/`` on ``PYTHONPATH``), so they run
with the same Celery configuration, pool, broker and database as the events they are
compared with.

- ``bench.noop``: nothing at all (what Celery and the broker cost per task).
- ``bench.transition``: a realistic state-machine step in one transaction, four statements:
  lock the case, update it, append a transition, write an outbox row (a NOTIFY_APP action).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from sqlalchemy import select

from worker import clock
from worker.dunning.models import ActionKind, CaseTransition, DunningCase, ScheduledAction
from worker.dunning.state import DunningEvent, DunningState


@shared_task(name="bench.noop")
def noop() -> None:
    return None


@shared_task(name="bench.transition", bind=True)
def transition(self: Any, *, case_id: int) -> None:
    with self.app.runtime.session() as session:
        now = clock.now()
        case = session.scalar(
            select(DunningCase).where(DunningCase.id == case_id).with_for_update()
        )
        if case is None:
            return
        old = case.state
        case.state, case.updated_at = DunningState.RETRYING, now
        session.add(
            CaseTransition(
                case_id=case.id,
                at=now,
                event=DunningEvent.PAYMENT_FAILED,
                from_state=old,
                to_state=DunningState.RETRYING,
                reason="bench",
                source="bench",
            )
        )
        session.add(
            ScheduledAction(
                case_id=None,
                customer_id=case.customer_id,
                kind=ActionKind.NOTIFY_APP,
                due_at=now,
                idempotency_key=f"bench:{case.id}:{self.request.id}",
                template="case.bench",
                reason="bench outbox row",
                created_at=now,
            )
        )
