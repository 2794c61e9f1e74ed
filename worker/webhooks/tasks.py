"""Celery adapters for the inbox (thin: the logic is in ``worker.webhooks.service``)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from worker.webhooks.service import note_error, process_stored_event

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
