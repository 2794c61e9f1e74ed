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
from worker.billing.domain import (
    Decline,
    DiscountFacts,
    EventKind,
    EventParseError,
    NormalisedEvent,
)
from worker.billing.normalise import HANDLED_EVENT_TYPES, normalise_stripe_event
from worker.billing.stripe_client import ProviderError, StripeGateway
from worker.db import enqueue_after_commit
from worker.runtime import Runtime
from worker.telemetry import EVENTS, event_type_label
from worker.webhooks.handlers import (
    FAILURE_KINDS,
    Context,
    MissingFactsError,
    decline_to_fetch,
    discounts_to_fetch,
    handle,
)
from worker.webhooks.inbox import Claimed, claim, finish, hand_back, settle
from worker.webhooks.models import InboxEvent, InboxStatus

log = logging.getLogger(__name__)


def process_event(session: Session, inbox_id: int, ctx: Context) -> InboxStatus | None:
    """Handle one stored event exactly once, in the caller's transaction (a savepoint keeps
    the caller's other work when the event is refused); returns its new status (None:
    nothing to do). Workers use :func:`process_stored_event`, which owns its transactions.

    Unparseable events, events nothing can be done for and values the database refuses are
    kept as ``failed`` with the reason and never retried. Other exceptions propagate: the
    caller's transaction rolls back and the task retries.
    """
    row = session.scalar(select(InboxEvent).where(InboxEvent.id == inbox_id).with_for_update())
    if row is None or row.status is not InboxStatus.PENDING:
        return None
    status, error = _handle(session, row, ctx)
    _count_after_commit(session, row.event_type, status)
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
    """Process an inbox event in one transaction: claim its row, normalise the payload once,
    run its handler. An event that needs what only the provider can say (the decline details
    an invoice event does not carry, the discounts a subscription event names by id only) is
    handed back and held instead, the provider asked with no row or database lock held, and
    processed in a second transaction with the answer.

    Unparseable events, events nothing can be done for and values the database refuses are
    kept as ``failed`` with the reason (their handler's writes rolled back) and never
    retried. Other exceptions propagate: nothing is kept, and the task retries."""
    try:
        with runtime.session() as session:
            now = clock.now()
            claimed = claim(session, inbox_id, now=now)
            if claimed is None:
                return None
            event, unparseable = _parse(claimed.payload or "")
            if event is None or not _asks_provider(session, event, runtime.gateway):
                ctx = Context(runtime.policy, now)
                return _run(
                    session, inbox_id, claimed, event=event, unparseable=unparseable, ctx=ctx
                )
            hand_back(session, inbox_id, now=now)
        fetched, discounts = _ask_provider(runtime.gateway, event)
        with runtime.session() as session:
            now = clock.now()
            claimed = claim(session, inbox_id, now=now, payload=False)
            if claimed is None:
                return None
            ctx = Context(runtime.policy, now, fetched_decline=fetched, fetched_discounts=discounts)
            return _run(session, inbox_id, claimed, event=event, unparseable=None, ctx=ctx)
    except (MissingFactsError, DataError) as exc:  # rolled back: keep it as failed, for ops
        return _refuse(runtime, inbox_id, _refusal(exc))


def _parse(payload: str) -> tuple[NormalisedEvent | None, str | None]:
    try:
        return normalise_stripe_event(json.loads(payload)), None
    except (EventParseError, json.JSONDecodeError) as exc:
        return None, f"unparseable: {exc}"


def _asks_provider(session: Session, event: NormalisedEvent, gateway: StripeGateway | None) -> bool:
    return gateway is not None and (
        discounts_to_fetch(event) is not None or decline_to_fetch(session, event)
    )


def _ask_provider(
    gateway: StripeGateway | None, event: NormalisedEvent
) -> tuple[Decline | None, tuple[DiscountFacts, ...] | None]:
    fetched, discounts = None, None
    assert gateway is not None  # noqa: S101 - _asks_provider said so
    subscription_id = discounts_to_fetch(event)
    if subscription_id is not None:
        try:
            discounts = gateway.fetch_discounts(subscription_id)
        except ProviderError as exc:  # MRR falls back to list price, logged
            log.warning("discounts unavailable for %s: %s", subscription_id, exc)
    if event.kind in FAILURE_KINDS and event.invoice is not None:
        carried = event.decline or Decline()
        try:
            fetched = gateway.fetch_decline(
                invoice_id=event.invoice.id,
                payment_intent_id=carried.payment_intent_id,
                charge_id=carried.charge_id,
            )
        except ProviderError as exc:  # e.g. a restricted key: go on without the details
            log.warning("decline details unavailable for %s: %s", event.event_id, exc)
    return fetched, discounts


def _run(
    session: Session,
    inbox_id: int,
    claimed: Claimed,
    *,
    event: NormalisedEvent | None,
    unparseable: str | None,
    ctx: Context,
) -> InboxStatus:
    if event is None:
        status, error = InboxStatus.FAILED, unparseable
    elif event.kind is EventKind.IGNORED:
        status, error = InboxStatus.IGNORED, None
    else:
        handle(session, event, ctx)
        status, error = InboxStatus.PROCESSED, None
    _count_after_commit(session, claimed.event_type, status)
    return settle(session, inbox_id, claimed, status, error)


def _refusal(exc: Exception) -> str:
    if isinstance(exc, DataError):  # a value the database cannot hold: retrying cannot help
        return f"the database refused a value: {type(exc.orig).__name__}"
    return f"invalid: {exc}"  # a well-formed event we cannot act on


def _refuse(runtime: Runtime, inbox_id: int, error: str) -> InboxStatus | None:
    with runtime.session() as session:
        claimed = claim(session, inbox_id, now=clock.now(), payload=False)
        if claimed is None:
            return None
        _count_after_commit(session, claimed.event_type, InboxStatus.FAILED)
        return settle(session, inbox_id, claimed, InboxStatus.FAILED, error)


def _count_after_commit(session: Session, event_type: str, status: InboxStatus) -> None:
    # Counted once this transaction commits: a rolled-back run is retried, not finished.
    label = event_type_label(event_type, HANDLED_EVENT_TYPES)
    enqueue_after_commit(session, EVENTS.labels(label, status.value).inc)
