"""Celery adapters for the actions (bodies stay thin: :mod:`worker.dunning.actions`) and the
daily card-expiry scan (:mod:`worker.dunning.expiring`). The tick sends actions a few of one
kind to a message (:func:`messages`); each still runs in its own transactions, under its own
idempotency key.

No Celery retries: a transient failure puts the action back in ``scheduled_actions`` with a
back-off (:func:`worker.dunning.actions.run_action`), and the scheduler hands it out again.

The scheduler tick that claims due actions and enqueues these lives one layer up, beside the
inbox sweep it also runs (:mod:`worker.webhooks.tasks`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from worker import clock
from worker.dunning import actions, expiring
from worker.dunning.models import ActionKind
from worker.dunning.scheduler import Claimed
from worker.enqueue import send_now

log = logging.getLogger(__name__)

TASK_FOR = {
    ActionKind.RETRY_PAYMENT: "dunning.retry_payment",
    ActionKind.SEND_EMAIL: "dunning.send_email",
    ActionKind.FINAL_ACTION: "dunning.final_action",
    ActionKind.ACCESS_CHANGE: "dunning.access_change",
    ActionKind.NOTIFY_APP: "dunning.notify_app",
}
# One message carries up to PER_MESSAGE actions of one kind: a broker message costs about as
# much as a cheap action (perf-floors.md), and a charge or an email waits on the network
# anyway. Fewer due actions are spread over up to SPREAD messages, so that idle worker
# processes share them. A message still running after MESSAGE_BUDGET_S hands the rest of its
# actions to a message of their own (far inside the task time limits of worker.app).
PER_MESSAGE = 20
SPREAD = 16
MESSAGE_BUDGET_S = 30.0


def messages(claimed: Iterable[Claimed]) -> list[tuple[str, list[int]]]:
    """The broker messages that hand out ``claimed``: (task name, action ids), by kind."""
    by_kind: dict[ActionKind, list[int]] = {}
    for item in claimed:
        by_kind.setdefault(item.kind, []).append(item.action_id)
    found = []
    for kind, ids in by_kind.items():
        size = min(PER_MESSAGE, math.ceil(len(ids) / SPREAD))
        found += [(TASK_FOR[kind], ids[i : i + size]) for i in range(0, len(ids), size)]
    return found


def run_actions(
    task: Any, kind: ActionKind, action_id: int | None, action_ids: list[int] | None
) -> None:
    """Run each action of a message, each in its own transactions (its runner's), one after
    the other. One action's error does not stop the others (it stays claimed, and is handed
    out again after RECLAIM_AFTER, as a single action's failed task always was); the task
    fails with the first error once the rest have run."""
    ids = [action_id] if action_id is not None else list(action_ids or ())
    started = time.monotonic()
    first_error: Exception | None = None
    for done, one in enumerate(ids):
        if done and time.monotonic() - started > MESSAGE_BUDGET_S:
            _hand_on(task, ids[done:])
            break
        try:
            actions.run_action(task.app.runtime, kind, one)
        except SoftTimeLimitExceeded:
            _hand_on(task, ids[done:])  # this one too: every runner is safe to run twice
            raise
        except Exception as exc:
            log.exception("%s action %s failed", kind.value, one)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def _hand_on(task: Any, ids: list[int]) -> None:
    """The actions a message had no time for, in a message of their own. Not sent (the
    broker down): they stay claimed, and the tick hands them out again after RECLAIM_AFTER."""
    log.info("%s: %s actions handed on to a new message", task.name, len(ids))
    send_now(task.app, task.name, {"action_ids": ids})


# Each takes one action (``action_id``, as releases before migration 0017 sent them, and by
# hand) or several (``action_ids``, as the tick sends them).
@shared_task(name="dunning.retry_payment", bind=True)
def retry_payment(
    self: Any, *, action_id: int | None = None, action_ids: list[int] | None = None
) -> None:
    run_actions(self, ActionKind.RETRY_PAYMENT, action_id, action_ids)


@shared_task(name="dunning.send_email", bind=True)
def send_email(
    self: Any, *, action_id: int | None = None, action_ids: list[int] | None = None
) -> None:
    run_actions(self, ActionKind.SEND_EMAIL, action_id, action_ids)


@shared_task(name="dunning.final_action", bind=True)
def final_action(
    self: Any, *, action_id: int | None = None, action_ids: list[int] | None = None
) -> None:
    run_actions(self, ActionKind.FINAL_ACTION, action_id, action_ids)


@shared_task(name="dunning.access_change", bind=True)
def access_change(
    self: Any, *, action_id: int | None = None, action_ids: list[int] | None = None
) -> None:
    run_actions(self, ActionKind.ACCESS_CHANGE, action_id, action_ids)


@shared_task(name="dunning.notify_app", bind=True)
def notify_app(
    self: Any, *, action_id: int | None = None, action_ids: list[int] | None = None
) -> None:
    run_actions(self, ActionKind.NOTIFY_APP, action_id, action_ids)


@shared_task(name="cards.scan_expiring", bind=True)
def scan_expiring(self: Any) -> None:
    runtime = self.app.runtime
    if runtime.gateway is None:
        log.warning("card-expiry scan skipped: STRIPE_API_KEY is not set")
        return
    summary = expiring.scan(runtime, now=clock.now())
    log.info("card-expiry scan: %s", "; ".join(" ".join(line.split()) for line in summary.lines()))
