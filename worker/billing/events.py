"""What each normalised provider event does: one small handler per kind (STYLE H8).

Handlers update our mirror of billing objects, then feed the dunning state machine. They are
shared by the webhook pipeline and ``dunning events replay``. Duplicates and reordering are
expected: every handler is safe to run twice and safe to run late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing import service as billing
from worker.billing.domain import Decline, EventKind, NormalisedEvent
from worker.billing.models import AttemptOutcome, AttemptSource, Invoice
from worker.billing.normalise import merge_declines
from worker.billing.stripe_client import StripeGateway
from worker.config import DeclineClass, Policy
from worker.dunning import policy as rules
from worker.dunning import service as dunning
from worker.dunning.models import ActionKind, DunningCase
from worker.dunning.state import TERMINAL, DunningEvent
from worker.email import service as email

log = logging.getLogger(__name__)

_NEEDS_CUSTOMER = frozenset(
    {DeclineClass.NEEDS_CUSTOMER, DeclineClass.HARD, DeclineClass.STOP, DeclineClass.FRAUD}
)
_INVOLUNTARY_REASONS = frozenset({"payment_failed", "payment_disputed"})


@dataclass(frozen=True)
class Context:
    policy: Policy
    gateway: StripeGateway | None  # None: decline details cannot be fetched (offline replay)
    now: datetime


def handle(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    match event.kind:
        case EventKind.PAYMENT_FAILED | EventKind.ACTION_REQUIRED:
            _payment_failed(session, event, ctx)
        case EventKind.PAYMENT_SUCCEEDED:
            _payment_succeeded(session, event, ctx)
        case EventKind.INVOICE_VOIDED | EventKind.INVOICE_UNCOLLECTIBLE:
            _invoice_closed(session, event, ctx)
        case EventKind.SUBSCRIPTION_UPDATED | EventKind.SUBSCRIPTION_DELETED:
            _subscription_changed(session, event, ctx)
        case EventKind.PAYMENT_METHOD_UPDATED | EventKind.DEFAULT_PAYMENT_METHOD_CHANGED:
            _payment_method_updated(session, event, ctx)
        case EventKind.CARD_EXPIRING:
            _card_expiring(session, event, ctx)
        case EventKind.CHARGE_FAILED | EventKind.PAYMENT_INTENT_FAILED:
            _attempt_failed(session, event, ctx)
        case EventKind.IGNORED:
            pass


def _payment_failed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = _require_invoice(event)
    invoice = billing.upsert_invoice(session, facts, at=event.occurred_at)
    if invoice.status in billing.FINAL_INVOICE_STATUSES:
        return  # a late failure for an invoice already paid or closed changes nothing
    decline = _resolve_decline(session, event, ctx)
    case = dunning.open_case(session, invoice, policy=ctx.policy, now=ctx.now)
    ours = dunning.in_flight(session, case, ActionKind.RETRY_PAYMENT)
    outcome = (
        AttemptOutcome.ACTION_REQUIRED
        if event.kind is EventKind.ACTION_REQUIRED
        else AttemptOutcome.FAILED
    )
    attempt = billing.record_attempt(
        session,
        invoice=invoice,
        source=AttemptSource.OURS if ours else AttemptSource.PROVIDER,
        outcome=outcome,
        at=event.occurred_at,
        decline=decline,
        action_id=ours.id if ours else None,
    )
    if not billing.count_once(attempt):
        return  # this very charge already moved the case (our 402, or a duplicate event)
    dunning.apply(
        session,
        case,
        failure_event(event.kind, decline, ctx.policy),
        policy=ctx.policy,
        now=ctx.now,
        decline=decline,
        source=event.event_id,
        reason=f"{event.event_type}: {decline.reason or 'no decline code'}",
    )


def failure_event(kind: EventKind, decline: Decline, policy: Policy) -> DunningEvent:
    if kind is EventKind.ACTION_REQUIRED:
        return DunningEvent.ACTION_REQUIRED
    cls = rules.classify(decline, policy)
    if cls is DeclineClass.NEEDS_CUSTOMER:
        return DunningEvent.ACTION_REQUIRED
    return (
        DunningEvent.PAYMENT_FAILED_HARD
        if cls in _NEEDS_CUSTOMER
        else (DunningEvent.PAYMENT_FAILED)
    )


def _resolve_decline(session: Session, event: NormalisedEvent, ctx: Context) -> Decline:
    """The payload's decline, else one recorded from charge events, else the provider's."""
    carried = event.decline or Decline()
    if not carried.is_empty:
        return carried
    known = billing.known_decline(
        session, charge_id=carried.charge_id, payment_intent_id=carried.payment_intent_id
    )
    if known is not None:
        recorded = billing.decline_of(known)
        if not recorded.is_empty:
            return merge_declines(carried, recorded)
    if ctx.gateway is None or event.invoice is None:
        return carried
    fetched = ctx.gateway.fetch_decline(
        invoice_id=event.invoice.id,
        payment_intent_id=carried.payment_intent_id,
        charge_id=carried.charge_id,
    )
    return merge_declines(carried, fetched)


def _payment_succeeded(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = _require_invoice(event)
    invoice = billing.upsert_invoice(session, facts, at=event.occurred_at)
    case = dunning.case_for_invoice(session, invoice)
    if case is None:
        return
    method = recovery_method(session, case)
    dunning.apply(
        session,
        case,
        DunningEvent.PAYMENT_SUCCEEDED,
        policy=ctx.policy,
        now=ctx.now,
        source=event.event_id,
        method=method,
        reason=event.event_type,
    )


def recovery_method(session: Session, case: DunningCase) -> str:
    """How a case got paid: our retry, a card update, the provider's retry, or the customer."""
    ours = dunning.in_flight(session, case, ActionKind.RETRY_PAYMENT)
    if ours is not None:
        return "card_update" if ":card-update:" in ours.idempotency_key else "retry"
    if case.retries_mode == "observe":
        return "provider"
    return "customer"


def _invoice_closed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    invoice = billing.upsert_invoice(session, _require_invoice(event), at=event.occurred_at)
    case = dunning.case_for_invoice(session, invoice)
    if case is None or dunning.in_flight(session, case, ActionKind.FINAL_ACTION):
        return  # our own final action closed it; that task records the outcome
    provider_gave_up = (
        event.kind is EventKind.INVOICE_UNCOLLECTIBLE and case.retries_mode == "observe"
    )  # in observe mode, the provider's retries ran out: its dunning ended unpaid
    dunning.apply(
        session,
        case,
        DunningEvent.CANCELLED_INVOLUNTARILY if provider_gave_up else DunningEvent.INVOICE_CLOSED,
        policy=ctx.policy,
        now=ctx.now,
        source=event.event_id,
        reason=event.event_type,
    )


def _subscription_changed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = event.subscription
    if facts is None:
        return
    sub = billing.upsert_subscription(session, facts, at=event.occurred_at)
    if event.kind is not EventKind.SUBSCRIPTION_DELETED:
        return
    open_cases = session.scalars(
        select(DunningCase)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.subscription_id == sub.id, DunningCase.state.not_in(TERMINAL))
    )
    for found in list(open_cases):
        case = dunning.lock_case(session, found.id)
        ours = dunning.in_flight(session, case, ActionKind.FINAL_ACTION)
        involuntary = ours is not None or facts.cancellation_reason in _INVOLUNTARY_REASONS
        dunning.apply(
            session,
            case,
            DunningEvent.CANCELLED_INVOLUNTARILY
            if involuntary
            else DunningEvent.CANCELLED_VOLUNTARILY,
            policy=ctx.policy,
            now=ctx.now,
            source=event.event_id,
            reason=f"subscription deleted ({facts.cancellation_reason or 'no reason'})",
        )


def _payment_method_updated(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    customer_id = event.customer_id or (event.customer.id if event.customer else None)
    if customer_id is None:
        return
    customer = (
        billing.upsert_customer(session, event.customer, at=event.occurred_at)
        if event.customer
        else billing.get_or_create_customer(session, customer_id, at=event.occurred_at)
    )
    if event.card is not None:
        billing.upsert_payment_method(session, event.card, customer=customer, at=event.occurred_at)
    open_cases = session.scalars(
        select(DunningCase.id).where(
            DunningCase.customer_id == customer.id, DunningCase.state.not_in(TERMINAL)
        )
    )
    for case_id in list(open_cases):
        case = dunning.lock_case(session, case_id)
        dunning.apply(
            session,
            case,
            DunningEvent.PAYMENT_METHOD_UPDATED,
            policy=ctx.policy,
            now=ctx.now,
            source=event.event_id,
            reason=event.event_type,
        )


def _card_expiring(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    card = event.card
    if card is None or event.customer_id is None:
        return
    customer = billing.get_or_create_customer(session, event.customer_id, at=event.occurred_at)
    billing.upsert_payment_method(session, card, customer=customer, at=event.occurred_at)
    email.plan_card_expiring(session, customer, card, policy=ctx.policy, now=ctx.now)


def _attempt_failed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    """charge.failed / payment_intent.payment_failed: remember the decline signals so the
    invoice event (which carries none) can use them without asking the provider."""
    decline = event.decline
    if decline is None or decline.is_empty:
        return
    invoice = None
    if event.related_invoice_id:
        invoice = session.scalar(
            select(Invoice).where(Invoice.provider_id == event.related_invoice_id)
        )
    if decline.charge_id is None:
        return  # without a charge id we cannot tell this attempt from the next one
    billing.record_attempt(
        session,
        invoice=invoice,
        source=AttemptSource.PROVIDER,
        outcome=AttemptOutcome.FAILED,
        at=event.occurred_at,
        decline=decline,
    )


def _require_invoice(event: NormalisedEvent):
    if event.invoice is None:
        msg = f"{event.event_type} without an invoice object"
        raise ValueError(msg)
    return event.invoice
