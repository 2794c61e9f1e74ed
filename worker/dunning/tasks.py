"""Celery adapters for the three actions (bodies stay thin: :mod:`worker.dunning.actions`)
and the daily card-expiry scan (:mod:`worker.dunning.expiring`).

No Celery retries: a transient failure puts the action back in ``scheduled_actions`` with a
back-off (:func:`worker.dunning.actions.run_action`), and the scheduler hands it out again.

The scheduler tick that claims due actions and enqueues these lives one layer up, beside the
inbox sweep it also runs (:mod:`worker.webhooks.tasks`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from worker import clock
from worker.dunning import actions, expiring
from worker.dunning.models import ActionKind

log = logging.getLogger(__name__)

TASK_FOR = {
    ActionKind.RETRY_PAYMENT: "dunning.retry_payment",
    ActionKind.SEND_EMAIL: "dunning.send_email",
    ActionKind.FINAL_ACTION: "dunning.final_action",
    ActionKind.ACCESS_CHANGE: "dunning.access_change",
    ActionKind.NOTIFY_APP: "dunning.notify_app",
}


@shared_task(name="dunning.retry_payment", bind=True)
def retry_payment(self: Any, *, action_id: int) -> None:
    actions.run_action(self.app.runtime, ActionKind.RETRY_PAYMENT, action_id)


@shared_task(name="dunning.send_email", bind=True)
def send_email(self: Any, *, action_id: int) -> None:
    actions.run_action(self.app.runtime, ActionKind.SEND_EMAIL, action_id)


@shared_task(name="dunning.final_action", bind=True)
def final_action(self: Any, *, action_id: int) -> None:
    actions.run_action(self.app.runtime, ActionKind.FINAL_ACTION, action_id)


@shared_task(name="dunning.access_change", bind=True)
def access_change(self: Any, *, action_id: int) -> None:
    actions.run_action(self.app.runtime, ActionKind.ACCESS_CHANGE, action_id)


@shared_task(name="dunning.notify_app", bind=True)
def notify_app(self: Any, *, action_id: int) -> None:
    actions.run_action(self.app.runtime, ActionKind.NOTIFY_APP, action_id)


@shared_task(name="cards.scan_expiring", bind=True)
def scan_expiring(self: Any) -> None:
    runtime = self.app.runtime
    if runtime.gateway is None:
        log.warning("card-expiry scan skipped: STRIPE_API_KEY is not set")
        return
    summary = expiring.scan(runtime, now=clock.now())
    log.info("card-expiry scan: %s", "; ".join(" ".join(line.split()) for line in summary.lines()))
