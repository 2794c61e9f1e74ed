"""Celery adapters for the scheduler tick and the three actions (bodies stay thin)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker import clock
from worker.app import send_safely
from worker.billing.stripe_client import TransientProviderError
from worker.db import enqueue_after_commit
from worker.dunning import actions
from worker.dunning.scheduler import claim_due, sweep_inbox
from worker.email.sender import TransientEmailError

TASK_FOR = {
    "retry_payment": "dunning.retry_payment",
    "send_email": "dunning.send_email",
    "final_action": "dunning.final_action",
}
_TRANSIENT = (TransientProviderError, TransientEmailError)


@shared_task(name="dunning.tick", bind=True)
def tick(self: Any) -> None:
    tick_once(self.app)


def tick_once(app: Any) -> int:
    """Claim due actions and sweep the inbox; enqueue after commit. Returns rows enqueued."""
    with app.runtime.session() as session:
        now = clock.now()
        claimed = claim_due(session, now=now)
        for item in claimed:
            enqueue_after_commit(
                session, send_safely(app, TASK_FOR[item.kind.value], action_id=item.action_id)
            )
        swept = sweep_inbox(session, now=now)
        for inbox_id in swept:
            enqueue_after_commit(
                session, send_safely(app, "webhooks.process_event", inbox_id=inbox_id)
            )
    return len(claimed) + len(swept)


_RETRY = {"autoretry_for": _TRANSIENT, "retry_backoff": True, "max_retries": 5}


@shared_task(name="dunning.retry_payment", bind=True, **_RETRY)
def retry_payment(self: Any, *, action_id: int) -> None:
    actions.run_retry(self.app.runtime, action_id)


@shared_task(name="dunning.send_email", bind=True, **_RETRY)
def send_email(self: Any, *, action_id: int) -> None:
    actions.run_email(self.app.runtime, action_id)


@shared_task(name="dunning.final_action", bind=True, **_RETRY)
def final_action(self: Any, *, action_id: int) -> None:
    actions.run_final_action(self.app.runtime, action_id)
