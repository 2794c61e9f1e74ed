"""Celery adapters for the three actions (bodies stay thin: :mod:`worker.dunning.actions`).

The scheduler tick that claims due actions and enqueues these lives one layer up, beside the
inbox sweep it also runs (:mod:`worker.webhooks.tasks`).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.billing.stripe_client import TransientProviderError
from worker.dunning import actions
from worker.dunning.models import ActionKind
from worker.email.sender import TransientEmailError

TASK_FOR = {
    ActionKind.RETRY_PAYMENT: "dunning.retry_payment",
    ActionKind.SEND_EMAIL: "dunning.send_email",
    ActionKind.FINAL_ACTION: "dunning.final_action",
}
_TRANSIENT = (TransientProviderError, TransientEmailError)
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
