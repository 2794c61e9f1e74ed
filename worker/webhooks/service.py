"""The inbox: store a verified provider event once, and process a stored event once.

Owns durability and the inbox status; what an event *means* is ``worker.billing.events``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker import clock
from worker.billing.domain import Decline, EventKind, EventParseError, NormalisedEvent
from worker.billing.events import (
    Context,
    MissingFactsError,
    decline_to_fetch,
    discounts_to_fetch,
    handle,
)
from worker.billing.normalise import normalise_stripe_event
from worker.billing.stripe_client import ProviderError
from worker.dunning.scheduler import SWEEP_AFTER
from worker.runtime import Runtime
from worker.webhooks.models import InboxEvent, InboxStatus

log = logging.getLogger(__name__)


class BadEventError(ValueError):
    """A body that is not a provider event (answered with 400)."""


@dataclass(frozen=True)
class Stored:
    inbox_id: int | None  # None: a duplicate delivery, already stored
    event_id: str


def parse_envelope(body: bytes) -> tuple[str, str]:
    """The event id and type from a raw body, or :class:`BadEventError`."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadEventError("malformed JSON") from None
    if not isinstance(data, dict):
        raise BadEventError("not a JSON object")
    event_id, event_type = data.get("id"), data.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise BadEventError("missing event id")
    if not isinstance(event_type, str) or not event_type:
        raise BadEventError("missing event type")
    return event_id, event_type


def store_event(session: Session, *, provider: str, body: bytes, now: datetime) -> Stored:
    """INSERT ... ON CONFLICT DO NOTHING on (provider, event_id)."""
    event_id, event_type = parse_envelope(body)
    values = {
        "provider": provider,
        "event_id": event_id,
        "event_type": event_type,
        "payload": body.decode("utf-8"),
        "received_at": now,
        "sweep_at": now + SWEEP_AFTER,
        "status": InboxStatus.PENDING,
        "enqueue_count": 1,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(InboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(InboxEvent.id)
    )
    inbox_id = session.scalar(stmt)
    return Stored(inbox_id, event_id)


def process_event(session: Session, inbox_id: int, ctx: Context) -> InboxStatus | None:
    """Handle one stored event exactly once; returns its new status (None: nothing to do).

    Unparseable events are kept as ``failed`` with the reason and never retried. Other
    exceptions propagate: the caller's transaction rolls back and the task retries.
    """
    row = session.scalar(select(InboxEvent).where(InboxEvent.id == inbox_id).with_for_update())
    if row is None or row.status is not InboxStatus.PENDING:
        return None
    try:
        event = normalise_stripe_event(json.loads(row.payload))
    except (EventParseError, json.JSONDecodeError) as exc:
        return _finish(row, InboxStatus.FAILED, ctx.now, error=f"unparseable: {exc}")
    if event.kind is EventKind.IGNORED:
        return _finish(row, InboxStatus.IGNORED, ctx.now)
    try:
        with session.begin_nested():
            handle(session, event, ctx)
    except MissingFactsError as exc:  # a well-formed event we cannot act on: keep it for ops
        return _finish(row, InboxStatus.FAILED, ctx.now, error=f"invalid: {exc}")
    return _finish(row, InboxStatus.PROCESSED, ctx.now)


def process_stored_event(runtime: Runtime, inbox_id: int) -> InboxStatus | None:
    """Process an inbox event in two short transactions around the provider call it may need
    (the decline details an invoice event does not carry, the discounts a subscription event
    names by id only), so no row or database lock is held while Stripe answers."""
    fetched, discounts = None, None
    gateway = runtime.gateway
    if gateway is not None:
        with runtime.session() as session:
            event = _peek(session, inbox_id)
            ask = event is not None and decline_to_fetch(session, event)
        subscription_id = discounts_to_fetch(event) if event is not None else None
        if subscription_id is not None:
            try:
                discounts = gateway.fetch_discounts(subscription_id)
            except ProviderError as exc:  # MRR falls back to list price, logged
                log.warning("discounts unavailable for %s: %s", subscription_id, exc)
        if ask and event is not None and event.invoice is not None:
            carried = event.decline or Decline()
            try:
                fetched = gateway.fetch_decline(
                    invoice_id=event.invoice.id,
                    payment_intent_id=carried.payment_intent_id,
                    charge_id=carried.charge_id,
                )
            except ProviderError as exc:  # e.g. a restricted key: go on without the details
                log.warning("decline details unavailable for %s: %s", event.event_id, exc)
    with runtime.session() as session:
        ctx = Context(
            runtime.policy, clock.now(), fetched_decline=fetched, fetched_discounts=discounts
        )
        return process_event(session, inbox_id, ctx)


def _peek(session: Session, inbox_id: int) -> NormalisedEvent | None:
    row = session.get(InboxEvent, inbox_id)
    if row is None or row.status is not InboxStatus.PENDING:
        return None
    try:
        return normalise_stripe_event(json.loads(row.payload))
    except (EventParseError, json.JSONDecodeError):
        return None  # process_event records why


def note_error(session: Session, inbox_id: int, *, error: str) -> None:
    """The task's retries ran out: keep the event pending (the sweeper tries again later,
    backing off) and record why, for ops. Nothing Stripe sent is ever dropped."""
    row = session.get(InboxEvent, inbox_id, with_for_update=True)
    if row is not None and row.status is InboxStatus.PENDING:
        row.error = error


def _finish(
    row: InboxEvent, status: InboxStatus, now: datetime, error: str | None = None
) -> InboxStatus:
    row.status, row.error, row.processed_at = status, error, now
    return status
