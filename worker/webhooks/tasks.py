"""Celery adapters for the orchestration layer (thin: the logic is in the modules they call).

``webhooks.process_event`` processes one stored event (:mod:`worker.webhooks.service`).
``dunning.tick`` is the scheduler tick (every 30 s, :mod:`worker.schedule`): it claims due
dunning actions (:mod:`worker.dunning.scheduler`) and sweeps the inbox
(:mod:`worker.webhooks.inbox`), and enqueues both after its commit.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from worker import clock
from worker.db import enqueue_after_commit
from worker.dunning.scheduler import claim_due, record_tick
from worker.dunning.tasks import TASK_FOR
from worker.enqueue import send_safely
from worker.webhooks.inbox import note_error, sweep_inbox
from worker.webhooks.service import process_stored_event

MAX_RETRIES = 8
log = logging.getLogger(__name__)


@shared_task(name="webhooks.process_event", bind=True, max_retries=MAX_RETRIES)
def process_event_task(self: Any, *, inbox_id: int) -> None:
    runtime = self.app.runtime
    try:
        process_stored_event(runtime, inbox_id)
    except Exception as exc:
        if self.request.retries >= MAX_RETRIES:
            with runtime.session() as session:
                note_error(session, inbox_id, error=f"{type(exc).__name__}: {exc}")
            return
        log.warning(
            "event %s failed (%s), retry %s", inbox_id, type(exc).__name__, self.request.retries + 1
        )
        raise self.retry(exc=exc, countdown=min(2**self.request.retries, 300)) from exc


# The name predates the move up to this layer; routes, the beat schedule and messages
# already queued use it.
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
                session, send_safely(app, TASK_FOR[item.kind], action_id=item.action_id)
            )
        swept = sweep_inbox(session, now=now)
        for inbox_id in swept:
            enqueue_after_commit(
                session, send_safely(app, "webhooks.process_event", inbox_id=inbox_id)
            )
        record_tick(session, now=now, claimed=len(claimed), swept=len(swept))
    return len(claimed) + len(swept)
