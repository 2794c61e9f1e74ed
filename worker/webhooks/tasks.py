"""Celery adapters for the orchestration layer (thin: the logic is in the modules they call).

``webhooks.process_event`` processes one stored event (:mod:`worker.webhooks.service`).
``dunning.tick`` is the scheduler tick (every 10 s, :mod:`worker.schedule`): it claims due
dunning actions (:mod:`worker.dunning.scheduler`) and sweeps the inbox
(:mod:`worker.webhooks.inbox`), and enqueues both after its commit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task

from worker import clock
from worker.db import enqueue_after_commit
from worker.dunning.scheduler import BATCH, MAX_IN_FLIGHT, claim_due, in_flight, record_tick
from worker.dunning.tasks import messages
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


# A tick stops claiming after this long (real time): the next one carries on. Far below the
# task time limits (worker.app); a tick hands out tens of thousands of actions in it.
TICK_BUDGET_S = 5.0


def tick_once(app: Any, *, max_in_flight: int = MAX_IN_FLIGHT) -> int:
    """Sweep the inbox, then claim due actions batch after batch, each batch in its own
    transaction and enqueued after its commit, until nothing is due, ``max_in_flight``
    actions are claimed and unfinished (back-pressure, :mod:`worker.dunning.scheduler`) or
    TICK_BUDGET_S has passed. Returns rows enqueued.

    Two ticks at once (two beats, a slow tick overlapping the next) claim disjoint rows
    (SKIP LOCKED); the in-flight bound is then approximate (each counts the other's claims
    only once committed)."""
    deadline = time.monotonic() + TICK_BUDGET_S
    claimed = swept = room = 0
    first = True
    while True:
        with app.runtime.session() as session:
            now = clock.now()
            if first:  # the first transaction also counts what is in flight and sweeps the inbox
                room = max_in_flight - in_flight(session, now=now, at_most=max_in_flight)
                inbox = sweep_inbox(session, now=now)
                for inbox_id in inbox:
                    enqueue_after_commit(
                        session, send_safely(app, "webhooks.process_event", inbox_id=inbox_id)
                    )
                swept = len(inbox)
            limit = min(BATCH, room)
            batch = claim_due(session, now=now, limit=limit)
            for name, ids in messages(batch):
                enqueue_after_commit(session, send_safely(app, name, action_ids=ids))
            claimed, room = claimed + len(batch), room - len(batch)
            record_tick(session, now=now, claimed=claimed, swept=swept)
        first = False
        if len(batch) < limit or limit <= 0 or time.monotonic() > deadline:
            return claimed + swept
