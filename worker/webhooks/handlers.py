"""What each normalised provider event does: one small handler per kind (STYLE H8).

The dispatcher of the whole product, above the domains it drives: each handler updates our
mirror of billing objects (:mod:`worker.billing.service`), then tells dunning what happened
in its own terms (:mod:`worker.dunning.operations`) and, for subscription changes, appends
the MRR history (:mod:`worker.ledger.history`). Shared by the webhook pipeline and
``dunning events replay``. Duplicates and reordering are expected: every handler is safe to
run twice and safe to run late.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing import service as billing
from worker.billing.declines import merge_declines
from worker.billing.domain import (
    Decline,
    DiscountFacts,
    EventKind,
    InvoiceFacts,
    NormalisedEvent,
)
from worker.billing.models import AttemptOutcome, AttemptSource, Invoice, by_provider_id
from worker.config import Policy
from worker.dunning import cases, operations
from worker.ledger import history


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
        case EventKind.PAYMENT_METHOD_DETACHED:
            if event.card is not None:
                billing.detach_payment_method(session, event.card, at=event.occurred_at)
        case EventKind.CARD_EXPIRING:
            _card_expiring(session, event, ctx)
        case EventKind.CHARGE_FAILED | EventKind.PAYMENT_INTENT_FAILED:
            _attempt_failed(session, event, ctx)


def _payment_failed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    facts = _require_invoice(event)
    if facts.amount_due <= 0:  # nothing to collect: no case, no retry, no email
        msg = f"{event.event_type} for invoice {facts.id} with amount_due {facts.amount_due}"
        raise MissingFactsError(msg)
    # held until the case has moved: dunning reads these rows again by id
    mirrored = billing.mirror_invoice(session, facts, at=event.occurred_at)
    decline = merge_declines(_recorded_decline(session, event), ctx.fetched_decline)
    operations.payment_failed(
        session,
        mirrored.invoice,
        new_invoice=mirrored.created,
        decline=decline,
        requires_action=event.kind is EventKind.ACTION_REQUIRED,
        occurred_at=event.occurred_at,
        source=event.event_id,
        reason=f"{event.event_type}: {decline.reason or 'no decline code'}",
        policy=ctx.policy,
        now=ctx.now,
    )


FAILURE_KINDS = frozenset({EventKind.PAYMENT_FAILED, EventKind.ACTION_REQUIRED})


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
        event.kind in FAILURE_KINDS
        and event.invoice is not None
        and _recorded_decline(session, event).is_empty
    )


def _payment_succeeded(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    invoice = billing.upsert_invoice(session, _require_invoice(event), at=event.occurred_at)
    operations.invoice_paid(
        session,
        invoice,
        occurred_at=event.occurred_at,
        source=event.event_id,
        reason=event.event_type,
        policy=ctx.policy,
        now=ctx.now,
    )


def _invoice_closed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    invoice = billing.upsert_invoice(session, _require_invoice(event), at=event.occurred_at)
    operations.invoice_closed(
        session,
        invoice,
        uncollectible=event.kind is EventKind.INVOICE_UNCOLLECTIBLE,
        source=event.event_id,
        reason=event.event_type,
        policy=ctx.policy,
        now=ctx.now,
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
        operations.subscription_ended(
            session,
            sub,
            source=event.event_id,
            reason=f"subscription deleted ({facts.cancellation_reason or 'no reason'})",
            policy=ctx.policy,
            now=ctx.now,
        )
    # Last: the cases settled first tell an end's cause, and locks go case, then customer,
    # the order our final action takes them in.
    effective_at = history.effective_time(
        facts, event_type=event.event_type, occurred_at=event.occurred_at
    )
    history.record_state(
        session,
        sub,
        facts,
        effective_at=effective_at,
        source=event.event_id,
        now=ctx.now,
        ended_by_us=cases.ended_by_final_action(session, sub.id, facts, at=effective_at),
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
    operations.cards_on_file_changed(
        session, customer, by_network=event.event_type == _NETWORK_UPDATE, at=event.occurred_at
    )
    if not _new_card_to_charge(event, customer.default_payment_method_id, changed=changed):
        return
    operations.card_updated(
        session,
        customer,
        by_network=event.event_type == _NETWORK_UPDATE,
        source=event.event_id,
        reason=event.event_type,
        policy=ctx.policy,
        now=ctx.now,
    )


_NETWORK_UPDATE = "payment_method.automatically_updated"


def _new_card_to_charge(event: NormalisedEvent, default_pm: str | None, *, changed: bool) -> bool:
    """Only a card we will actually charge, with new details, is worth a prompt retry: a new
    default, or the default card renewed by the network or edited (expiry, number)."""
    if event.kind is EventKind.DEFAULT_PAYMENT_METHOD_CHANGED:
        return True
    if event.event_type == _NETWORK_UPDATE:
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
    operations.card_expiring(session, customer, card, policy=ctx.policy, now=ctx.now)


def _attempt_failed(session: Session, event: NormalisedEvent, ctx: Context) -> None:
    """charge.failed / payment_intent.payment_failed: remember the decline signals so the
    invoice event (which carries none) can use them without asking the provider."""
    decline = event.decline
    if decline is None or decline.is_empty:
        return
    invoice = None
    if event.related_invoice_id:
        invoice = session.scalar(
            select(Invoice).where(by_provider_id(Invoice, event.related_invoice_id))
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


class MissingFactsError(ValueError):
    """A well-formed event without the object its type needs, or one nothing can be done
    for (a failure with nothing to collect): kept as failed for ops, never re-run."""


def _require_invoice(event: NormalisedEvent) -> InvoiceFacts:
    if event.invoice is None:
        msg = f"{event.event_type} without an invoice object"
        raise MissingFactsError(msg)
    return event.invoice
