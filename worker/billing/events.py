"""What each normalised provider event does: one small handler per kind (STYLE H8).

Handlers update our mirror of billing objects, then feed the dunning state machine. They are
shared by the webhook pipeline and ``dunning events replay``. Duplicates and reordering are
expected: every handler is safe to run twice and safe to run late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from worker.billing import service as billing
from worker.billing.domain import (
    Decline,
    DiscountFacts,
    EventKind,
    NormalisedEvent,
    SubscriptionFacts,
)
from worker.billing.models import AttemptOutcome, AttemptSource, Invoice, Subscription
from worker.billing.normalise import merge_declines
from worker.config import DeclineClass, Policy
from worker.dunning import policy as rules
from worker.dunning import service as dunning
from worker.dunning.models import ActionKind, DunningCase
from worker.dunning.state import TERMINAL, DunningEvent
from worker.email import service as email
from worker.ledger import history

log = logging.getLogger(__name__)

_NEEDS_CUSTOMER = frozenset(
    {DeclineClass.NEEDS_CUSTOMER, DeclineClass.HARD, DeclineClass.STOP, DeclineClass.FRAUD}
)


@dataclass(frozen=True)
class Context:
    policy: Policy
    now: datetime
    # The provider's decline details for this event, fetched before the transaction began
    # (see worker.webhooks.service.process_stored_event); handlers make no network calls.
    fetched_decline: Decline | None = None
    # A subscription event's discounts, fetched with their coupons (the event has ids only)
    fetched_discounts: tuple[DiscountFacts, ...] | None = None


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
        case EventKind.CUSTOMER_UPDATED:
            if event.customer is not None:
                billing.upsert_customer(session, event.customer, at=event.occurred_at)
        case EventKind.CARD_EXPIRING:
            _card_expiring(session, event, ctx)
        case EventKind.CHARGE_FAILED | EventKind.PAYMENT_INTENT_FAILED:
            _attempt_failed(session, event, ctx)


def _payment_failed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = _require_invoice(event)
    invoice = billing.upsert_invoice(session, facts, at=event.occurred_at)
    if invoice.status in billing.FINAL_INVOICE_STATUSES:
        return  # a late failure for an invoice already paid or closed changes nothing
    decline = _resolve_decline(session, event, ctx)
    case = dunning.open_case(session, invoice, policy=ctx.policy, now=ctx.now)
    if case.state in TERMINAL:
        return  # the case is over: a late failure report changes nothing
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
        failure_event(event.kind, decline, dunning.policy_of(session, case, ctx.policy)),
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


_FAILURE_KINDS = frozenset({EventKind.PAYMENT_FAILED, EventKind.ACTION_REQUIRED})


def _recorded_decline(session: Session, event: NormalisedEvent) -> Decline:
    """The payload's decline, completed from an attempt a charge event already recorded."""
    carried = event.decline or Decline()
    if not carried.is_empty:
        return carried
    known = billing.known_decline(
        session, charge_id=carried.charge_id, payment_intent_id=carried.payment_intent_id
    )
    return merge_declines(carried, billing.decline_of(known)) if known else carried


def discounts_to_fetch(event: NormalisedEvent) -> str | None:
    """The subscription whose discounts this event names by id only: MRR is net of them."""
    facts = event.subscription
    return facts.id if facts is not None and facts.discounts_unexpanded else None


def decline_to_fetch(session: Session, event: NormalisedEvent) -> bool:
    """True when only the provider can say why this payment failed (retry-rules §1.1)."""
    return (
        event.kind in _FAILURE_KINDS
        and event.invoice is not None
        and _recorded_decline(session, event).is_empty
    )


def _resolve_decline(session: Session, event: NormalisedEvent, ctx: Context) -> Decline:
    return merge_declines(_recorded_decline(session, event), ctx.fetched_decline)


def _payment_succeeded(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = _require_invoice(event)
    invoice = billing.upsert_invoice(session, facts, at=event.occurred_at)
    case = dunning.case_for_invoice(session, invoice)
    if case is None:
        return
    method = recovery_method(session, case, now=ctx.now)
    dunning.apply(
        session,
        case,
        DunningEvent.PAYMENT_SUCCEEDED,
        policy=ctx.policy,
        now=ctx.now,
        source=event.event_id,
        method=method,
        reason=event.event_type,
        occurred_at=event.occurred_at,
    )


def recovery_method(session: Session, case: DunningCase, *, now: datetime) -> str:
    """How a case got paid: our retry (one running right now), a card update, the provider's
    retry, or the customer. A claim older than a few minutes is a lost one, not the payer."""
    ours = dunning.in_flight(session, case, ActionKind.RETRY_PAYMENT)
    if ours is not None and ours.claimed_at and now - ours.claimed_at < RECENT_CLAIM:
        return dunning.card_update_method(ours.idempotency_key) or "retry"
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
    if facts.discounts_unexpanded and ctx.fetched_discounts is not None:
        # Today's discounts, kept only where this event names them (one may have gone since).
        named = tuple(d for d in ctx.fetched_discounts if d.id in facts.discount_ids)
        facts = replace(facts, discounts=named, discounts_unexpanded=False)
    sub = billing.upsert_subscription(session, facts, at=event.occurred_at)
    if event.kind is EventKind.SUBSCRIPTION_DELETED:
        _close_cases_of(session, sub, facts, event, ctx)
    # Last: the cases settled first tell an end's cause, and locks go case, then customer,
    # the order our final action takes them in.
    history.record_state(
        session,
        sub,
        facts,
        effective_at=history.effective_time(
            facts, event_type=event.event_type, occurred_at=event.occurred_at
        ),
        source=event.event_id,
        now=ctx.now,
    )


def _close_cases_of(
    session: Session,
    sub: Subscription,
    facts: SubscriptionFacts,
    event: NormalisedEvent,
    ctx: Context,
) -> None:
    open_cases = session.scalars(
        select(DunningCase)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.subscription_id == sub.id, DunningCase.state.not_in(TERMINAL))
    )
    for found in list(open_cases):
        case = dunning.lock_case(session, found.id)
        ours = dunning.in_flight(session, case, ActionKind.FINAL_ACTION)
        involuntary = ours is not None or facts.cancellation_reason in history.INVOLUNTARY_REASONS
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
    changed = False
    if event.card is not None:
        before = billing.card_details(session, event.card.payment_method_id)
        billing.upsert_payment_method(session, event.card, customer=customer, at=event.occurred_at)
        changed = billing.card_details(session, event.card.payment_method_id) != before
    if not _new_card_to_charge(event, customer.default_payment_method_id, changed=changed):
        return
    open_cases = session.scalars(
        select(DunningCase.id).where(
            DunningCase.customer_id == customer.id,
            DunningCase.state.not_in(TERMINAL),
            # Fraud and stop-payment declines never retry, whatever card comes next.
            or_(
                DunningCase.decline_class.is_(None),
                DunningCase.decline_class.not_in([DeclineClass.FRAUD, DeclineClass.STOP]),
            ),
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


def _new_card_to_charge(event: NormalisedEvent, default_pm: str | None, *, changed: bool) -> bool:
    """Only a card we will actually charge, with new details, is worth a prompt retry: a new
    default, or the default card renewed by the network or edited (expiry, number)."""
    if event.kind is EventKind.DEFAULT_PAYMENT_METHOD_CHANGED:
        return True
    if event.event_type == "payment_method.automatically_updated":
        return True
    if event.event_type == "payment_method.updated" and event.card is not None:
        return changed and event.card.payment_method_id == default_pm
    return False  # payment_method.attached: on file, not (yet) the one we charge


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


RECENT_CLAIM = timedelta(minutes=5)


class MissingFactsError(ValueError):
    """A well-formed event without the object its type needs (kept as failed for ops)."""


def _require_invoice(event: NormalisedEvent):
    if event.invoice is None:
        msg = f"{event.event_type} without an invoice object"
        raise MissingFactsError(msg)
    return event.invoice
