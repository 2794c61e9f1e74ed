"""Processing a stored provider event once: normalise it, fetch what only the provider can
say (outside any transaction), run its handler, finish its inbox row.

Storing and sweeping the inbox is :mod:`worker.webhooks.inbox`; what an event *means* is
:mod:`worker.webhooks.handlers`.
"""

from __future__ import annotations

import json
import logging

from sqlalchemy import select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from worker import clock
from worker.billing.domain import Decline, EventKind, EventParseError, NormalisedEvent
from worker.billing.normalise import HANDLED_EVENT_TYPES, normalise_stripe_event
from worker.billing.stripe_client import ProviderError
from worker.db import enqueue_after_commit
from worker.runtime import Runtime
from worker.telemetry import EVENTS, event_type_label
from worker.webhooks.handlers import (
    Context,
    MissingFactsError,
    decline_to_fetch,
    discounts_to_fetch,
    handle,
)
from worker.webhooks.inbox import finish, hold
from worker.webhooks.models import InboxEvent, InboxStatus

log = logging.getLogger(__name__)


def process_event(session: Session, inbox_id: int, ctx: Context) -> InboxStatus | None:
    """Handle one stored event exactly once; returns its new status (None: nothing to do).

    Unparseable events, events nothing can be done for and values the database refuses are
    kept as ``failed`` with the reason and never retried. Other exceptions propagate: the
    caller's transaction rolls back and the task retries.
    """
    row = session.scalar(select(InboxEvent).where(InboxEvent.id == inbox_id).with_for_update())
    if row is None or row.status is not InboxStatus.PENDING:
        return None
    status, error = _handle(session, row, ctx)
    # Counted once this transaction commits: a rolled-back run is retried, not finished.
    label = event_type_label(row.event_type, HANDLED_EVENT_TYPES)
    enqueue_after_commit(session, EVENTS.labels(label, status.value).inc)
    return finish(row, status, ctx.now, error=error)


def _handle(session: Session, row: InboxEvent, ctx: Context) -> tuple[InboxStatus, str | None]:
    try:
        event = normalise_stripe_event(json.loads(row.payload))
    except (EventParseError, json.JSONDecodeError) as exc:
        return InboxStatus.FAILED, f"unparseable: {exc}"
    if event.kind is EventKind.IGNORED:
        return InboxStatus.IGNORED, None
    try:
        with session.begin_nested():
            handle(session, event, ctx)
    except MissingFactsError as exc:  # a well-formed event we cannot act on: keep it for ops
        return InboxStatus.FAILED, f"invalid: {exc}"
    except DataError as exc:  # a value the database cannot hold: retrying cannot help
        return InboxStatus.FAILED, f"the database refused a value: {type(exc.orig).__name__}"
    return InboxStatus.PROCESSED, None


def process_stored_event(runtime: Runtime, inbox_id: int) -> InboxStatus | None:
    """Process an inbox event in two short transactions around the provider call it may need
    (the decline details an invoice event does not carry, the discounts a subscription event
    names by id only), so no row or database lock is held while Stripe answers."""
    fetched, discounts = None, None
    gateway = runtime.gateway
    if gateway is not None:
        with runtime.session() as session:
            event = _peek(session, inbox_id)  # None once processed: no Stripe call then
            ask = event is not None and decline_to_fetch(session, event)
            if event is not None:
                hold(session, inbox_id, now=clock.now())
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
