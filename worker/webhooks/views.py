"""What ops see of the inbox (``dunning events list | show``): rows, newest first, and one
event's stored payload with the reason it failed."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from worker.redact import redact
from worker.webhooks.models import InboxEvent, InboxStatus


def _row(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_id": event.event_id,
        "type": event.event_type,
        "status": event.status.value,
        "received_at": event.received_at.isoformat(),
        "processed_at": event.processed_at.isoformat() if event.processed_at else None,
        "handed_out": event.enqueue_count,
        "error": event.error,
    }


def list_events(
    session: Session,
    *,
    status: InboxStatus | None = None,
    event_type: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    query = select(InboxEvent).order_by(InboxEvent.received_at.desc(), InboxEvent.id.desc())
    if status is not None:
        query = query.where(InboxEvent.status == status)
    if event_type is not None:
        query = query.where(InboxEvent.event_type == event_type)
    return [_row(e) for e in session.scalars(query.limit(limit))]


def find_event(session: Session, ref: str) -> InboxEvent | None:
    """By our inbox id or the provider's event id (``evt_...``)."""
    conditions = [InboxEvent.event_id == ref]
    if ref.isdigit():
        conditions.append(InboxEvent.id == int(ref))
    return session.scalars(select(InboxEvent).where(or_(*conditions))).first()


def show_event(event: InboxEvent, *, unmasked: bool = False) -> dict[str, Any]:
    """The row and its payload as stored; email addresses masked unless ``unmasked``."""
    try:
        payload: Any = json.loads(event.payload)
    except ValueError:
        payload = event.payload  # stored as received, even when it is not JSON we could parse
    if not unmasked:
        payload = json.loads(redact(json.dumps(payload)))
    return {**_row(event), "payload": payload}
