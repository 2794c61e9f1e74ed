"""Keeping our mirror of the provider's objects current from event facts.

Upserts are idempotent and tolerate late and out-of-order events: a fact older than what we
hold (``as_of``) does not overwrite it, and an invoice never moves from a final status
(paid / void / uncollectible) back to open. Service functions take a Session and plain values
and never commit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, bindparam, false, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.billing.domain import Card, CustomerFacts, Decline, InvoiceFacts, SubscriptionFacts
from worker.billing.models import (
    PROVIDER,
    AttemptOutcome,
    AttemptSource,
    Customer,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
    Subscription,
    by_provider_id,
)
from worker.billing.mrr import monthly_amount

FINAL_INVOICE_STATUSES = frozenset({"paid", "void", "uncollectible"})


def get_or_create_customer(session: Session, provider_id: str, *, at: datetime) -> Customer:
    customer = session.scalar(select(Customer).where(by_provider_id(Customer, provider_id)))
    if customer is None:
        customer = Customer(provider_id=provider_id, updated_at=at)
        session.add(customer)
        session.flush()  # the id is needed for the rows that point at this customer
    return customer


def upsert_customer(session: Session, facts: CustomerFacts, *, at: datetime) -> Customer:
    customer = get_or_create_customer(session, facts.id, at=at)
    if at >= customer.updated_at:
        customer.email = facts.email or customer.email
        customer.name = facts.name or customer.name
        customer.locale = facts.locale or customer.locale
        customer.timezone = facts.timezone or customer.timezone
        customer.default_payment_method_id = facts.default_payment_method_id
        customer.updated_at = at
    return customer


def upsert_payment_method(
    session: Session, card: Card, *, customer: Customer | None, at: datetime
) -> PaymentMethod | None:
    if card.payment_method_id is None:
        return None
    pm = session.scalar(
        select(PaymentMethod).where(by_provider_id(PaymentMethod, card.payment_method_id))
    )
    if pm is None:
        pm = PaymentMethod(provider_id=card.payment_method_id, updated_at=at)
        session.add(pm)
    elif at < pm.updated_at:
        return pm
    pm.customer_id = customer.id if customer else pm.customer_id
    if customer is not None:
        pm.detached_at = None  # attached (again)
    pm.brand, pm.last4 = card.brand or pm.brand, card.last4 or pm.last4
    pm.exp_month, pm.exp_year = card.exp_month or pm.exp_month, card.exp_year or pm.exp_year
    pm.fingerprint = card.fingerprint or pm.fingerprint
    pm.updated_at = at
    session.flush()
    return pm


def detach_payment_method(session: Session, card: Card, *, at: datetime) -> None:
    """The customer removed the card: it stays in the mirror (its attempts name it), never
    again a candidate for a charge."""
    pm = upsert_payment_method(session, card, customer=None, at=at)
    if pm is not None and pm.detached_at is None:
        pm.detached_at = at


def card_details(session: Session, payment_method_id: str | None) -> tuple[object, ...] | None:
    """What identifies a card's usable details (changes mean a new card to try)."""
    if payment_method_id is None:
        return None
    pm = session.scalar(
        select(PaymentMethod).where(by_provider_id(PaymentMethod, payment_method_id))
    )
    return (pm.fingerprint, pm.last4, pm.exp_month, pm.exp_year) if pm else None


def upsert_subscription(
    session: Session, facts: SubscriptionFacts, *, at: datetime
) -> Subscription:
    customer = get_or_create_customer(session, facts.customer_id, at=at)
    sub = session.scalar(select(Subscription).where(by_provider_id(Subscription, facts.id)))
    if sub is None:
        sub = Subscription(
            provider_id=facts.id, customer_id=customer.id, status=facts.status, as_of=at
        )
        session.add(sub)
    elif at < sub.as_of:
        return sub
    sub.status = facts.status
    sub.currency = facts.currency or sub.currency
    sub.mrr = monthly_amount(facts)
    first = facts.items[0] if facts.items else None
    sub.interval = first.interval if first else sub.interval
    sub.plan = first.price_id if first else sub.plan
    sub.cancellation_reason = facts.cancellation_reason
    sub.ended_at = facts.ended_at
    sub.as_of = at
    session.flush()
    return sub


def upsert_invoice(session: Session, facts: InvoiceFacts, *, at: datetime) -> Invoice:
    return mirror_invoice(session, facts, at=at).invoice


@dataclass(frozen=True)
class MirroredInvoice:
    """An invoice as :func:`mirror_invoice` left it, with its customer and subscription.
    Hold on to it while you work with these rows: the session keeps only weak references,
    and whatever reads them again by id (``session.get``) then needs no statement."""

    invoice: Invoice
    customer: Customer
    subscription: Subscription | None
    created: bool  # this call wrote the invoice's row: nothing points at it yet


def mirror_invoice(session: Session, facts: InvoiceFacts, *, at: datetime) -> MirroredInvoice:
    """:func:`upsert_invoice`, reading the invoice, its customer and its subscription in one
    statement; each missing one is created."""
    customer, sub, invoice = _invoice_mirror(session, facts)
    if customer is None:
        customer = Customer(
            provider_id=facts.customer_id,
            updated_at=at,
            email=facts.customer_email,
            name=facts.customer_name,
        )
        session.add(customer)
        session.flush()  # the id is needed for the rows that point at this customer
    elif facts.customer_email or facts.customer_name:
        customer.email = customer.email or facts.customer_email
        customer.name = customer.name or facts.customer_name
    if (
        facts.subscription_id
        and sub is None
        and (invoice is None or invoice.subscription_id is None)
    ):
        sub = Subscription(
            provider_id=facts.subscription_id, customer_id=customer.id, status="unknown", as_of=at
        )
        session.add(sub)
        session.flush()  # its id goes on the invoice
    created = invoice is None
    if invoice is None:
        # Every column the update below reads is set here: column defaults only apply at the
        # INSERT, and nothing flushes this row before that.
        invoice = Invoice(
            provider_id=facts.id,
            customer_id=customer.id,
            amount_due=facts.amount_due,
            amount_paid=0,
            currency=facts.currency,
            attempt_count=0,
            as_of=at,
        )
        session.add(invoice)
    if facts.subscription_id and invoice.subscription_id is None and sub is not None:
        invoice.subscription_id = sub.id
    final_now = invoice.status in FINAL_INVOICE_STATUSES
    if (at >= invoice.as_of or facts.status in FINAL_INVOICE_STATUSES) and not (
        final_now and facts.status not in FINAL_INVOICE_STATUSES
    ):
        invoice.status = facts.status
        invoice.amount_due, invoice.amount_paid = facts.amount_due, facts.amount_paid
        invoice.attempt_count = max(invoice.attempt_count, facts.attempt_count)
        invoice.next_payment_attempt = facts.next_payment_attempt
        invoice.hosted_invoice_url = facts.hosted_invoice_url or invoice.hosted_invoice_url
        invoice.number = facts.number or invoice.number
        invoice.as_of = max(at, invoice.as_of)
    session.flush()
    return MirroredInvoice(invoice, customer, sub, created)


def _invoice_mirror(
    session: Session, facts: InvoiceFacts
) -> tuple[Customer | None, Subscription | None, Invoice | None]:
    """What we hold of the invoice, its customer and its subscription (None where nothing),
    in one round trip: each looked up by its own unique index, side by side."""
    statement = _mirror_statement(subscription=facts.subscription_id is not None)
    params = {"customer": facts.customer_id, "invoice": facts.id, "sub": facts.subscription_id}
    customer, sub, invoice = session.execute(statement, params).one()
    return customer, sub, invoice


@functools.cache
def _mirror_statement(*, subscription: bool) -> Any:
    def key(model: Any, name: str) -> ColumnElement[bool]:
        return and_(model.provider == PROVIDER, model.provider_id == bindparam(name, type_=Text()))

    one = select(literal(1).label("one")).subquery()
    return (
        select(Customer, Subscription, Invoice)
        .select_from(one)
        .outerjoin(Customer, key(Customer, "customer"))
        .outerjoin(Subscription, key(Subscription, "sub") if subscription else false())
        .outerjoin(Invoice, key(Invoice, "invoice"))
    )


def record_attempt(
    session: Session,
    *,
    invoice: Invoice | None,
    source: AttemptSource,
    outcome: AttemptOutcome,
    at: datetime,
    decline: Decline | None,
    action_id: int | None = None,
    card: Card | None = None,
) -> PaymentAttempt:
    """Record one charge attempt, or return the row already holding this charge. ``card``:
    the card charged, when the report (a success, a processing debit) names none. A report on
    a payment still processing (a bank debit) settles that row in place: it is the same
    attempt, and its outcome counts once, when it is known. A new row is written at the
    session's next flush."""
    charge_id = decline.charge_id if decline else None
    # the provider runs one payment of an invoice at a time
    settles = invoice is not None and outcome is not AttemptOutcome.PROCESSING
    known, pending = _known_and_pending(
        session, charge_id=charge_id, invoice_id=invoice.id if invoice and settles else None
    )
    if known is None:
        known = pending
    elif pending is not None and pending is not known and _same_charge(pending, known):
        # The debit's outcome came first in a report that named no invoice (a Charge on newer
        # API versions): one attempt, ours, settled by what that report said.
        if pending.action_id is not None:
            known.action_id, known.source = pending.action_id, AttemptSource.OURS
        session.delete(pending)
        session.flush()
    if known is not None:
        if known.invoice_id is None and invoice is not None:
            known.invoice_id = invoice.id
        if action_id is not None:  # our own call reported it: it was our attempt
            known.action_id, known.source = action_id, AttemptSource.OURS
        if known.outcome is AttemptOutcome.PROCESSING and outcome is not known.outcome:
            known.outcome = outcome
            if decline is not None:
                _set_decline(known, decline)
        return known
    attempt = _new_attempt(
        invoice=invoice,
        source=source,
        outcome=outcome,
        at=at,
        decline=decline,
        action_id=action_id,
        card=card,
    )
    session.add(attempt)
    return attempt


def record_new_invoice_failure(
    session: Session,
    *,
    invoice: Invoice,
    source: AttemptSource,
    outcome: AttemptOutcome,
    at: datetime,
    decline: Decline,
) -> tuple[PaymentAttempt, bool]:
    """:func:`record_attempt` and :func:`count_once` for a failure on an invoice this very
    event created (no payment of it can be processing): one INSERT, unless a charge event
    recorded this charge already."""
    if decline.charge_id is not None:
        attempt = _new_attempt(
            invoice=invoice, source=source, outcome=outcome, at=at, decline=decline
        )
        values = {c: getattr(attempt, c) for c in _ATTEMPT_COLUMNS} | {"counted": True}
        inserted = session.scalar(_insert_new_attempt(session.get_bind().dialect.name), values)
        if inserted is not None:
            return inserted, True
    attempt = record_attempt(
        session, invoice=invoice, source=source, outcome=outcome, at=at, decline=decline
    )
    return attempt, count_once(attempt)


_ATTEMPT_COLUMNS = tuple(c.key for c in PaymentAttempt.__table__.columns if c.key != "id")


@functools.cache
def _insert_new_attempt(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (provider, charge_id) DO NOTHING RETURNING the row (built once
    per dialect; the values are parameters)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(PaymentAttempt)
        .on_conflict_do_nothing(index_elements=["provider", "charge_id"])
        .returning(PaymentAttempt)
    )


def _new_attempt(
    *,
    invoice: Invoice | None,
    source: AttemptSource,
    outcome: AttemptOutcome,
    at: datetime,
    decline: Decline | None,
    action_id: int | None = None,
    card: Card | None = None,
) -> PaymentAttempt:
    attempt = PaymentAttempt(
        provider=PROVIDER,
        invoice_id=invoice.id if invoice else None,
        action_id=action_id,
        source=source,
        outcome=outcome,
        occurred_at=at,
        amount=invoice.amount_due if invoice else None,
        currency=invoice.currency if invoice else None,
    )
    if decline is not None:
        _set_decline(attempt, decline)
    if card is not None and attempt.payment_method_id is None:  # the card we charged
        _set_card(attempt, card)
    return attempt


def _known_and_pending(
    session: Session, *, charge_id: str | None, invoice_id: int | None
) -> tuple[PaymentAttempt | None, PaymentAttempt | None]:
    """The attempt holding ``charge_id``, and the invoice's payment still processing: one
    statement."""
    wanted = []
    if charge_id is not None:
        wanted.append(_by_charge(charge_id))
    if invoice_id is not None:
        wanted.append(_processing_of(invoice_id))
    if not wanted:
        return None, None
    found = session.scalars(select(PaymentAttempt).where(or_(*wanted))).all()
    known = next((a for a in found if charge_id is not None and a.charge_id == charge_id), None)
    pending = next(
        (a for a in found if a.invoice_id == invoice_id and a.outcome is AttemptOutcome.PROCESSING),
        None,
    )
    return known, pending


def _by_charge(charge_id: str) -> ColumnElement[bool]:
    """By the charge's unique index ``(provider, charge_id)``."""
    return and_(PaymentAttempt.provider == PROVIDER, PaymentAttempt.charge_id == charge_id)


def _processing_of(invoice_id: int) -> ColumnElement[bool]:
    return and_(
        PaymentAttempt.invoice_id == invoice_id,
        PaymentAttempt.outcome == AttemptOutcome.PROCESSING,
    )


def _set_decline(attempt: PaymentAttempt, decline: Decline) -> None:
    """The charge, decline signals and card a report carries."""
    attempt.charge_id = decline.charge_id or attempt.charge_id
    attempt.payment_intent_id = decline.payment_intent_id or attempt.payment_intent_id
    attempt.code, attempt.decline_code = decline.code, decline.decline_code
    attempt.advice_code = decline.advice_code
    attempt.network_decline_code = decline.network_decline_code
    attempt.network_advice_code = decline.network_advice_code
    attempt.outcome_type, attempt.outcome_reason = decline.outcome_type, decline.outcome_reason
    if decline.card is not None:
        _set_card(attempt, decline.card)


def _set_card(attempt: PaymentAttempt, card: Card) -> None:
    attempt.card_brand = card.brand or attempt.card_brand
    attempt.card_fingerprint = card.fingerprint or attempt.card_fingerprint
    attempt.payment_method_id = card.payment_method_id or attempt.payment_method_id


def _same_charge(pending: PaymentAttempt, reported: PaymentAttempt) -> bool:
    """``reported`` (recorded from another report) is the outcome of the ``pending`` debit:
    not an older charge of the invoice, not a different charge."""
    return reported.occurred_at >= pending.occurred_at and pending.charge_id in (
        None,
        reported.charge_id,
    )


def pending_attempt(session: Session, invoice_id: int) -> PaymentAttempt | None:
    """The invoice's payment the provider accepted and has not settled (a bank debit)."""
    return session.scalar(select(PaymentAttempt).where(_processing_of(invoice_id)))


def count_once(attempt: PaymentAttempt) -> bool:
    """True the first time an attempt is used to move a case, False ever after."""
    if attempt.counted:
        return False
    attempt.counted = True
    return True


def decline_of(attempt: PaymentAttempt) -> Decline:
    """The decline signals an attempt was recorded with."""
    return Decline(
        code=attempt.code,
        decline_code=attempt.decline_code,
        advice_code=attempt.advice_code,
        network_decline_code=attempt.network_decline_code,
        network_advice_code=attempt.network_advice_code,
        outcome_type=attempt.outcome_type,
        outcome_reason=attempt.outcome_reason,
        charge_id=attempt.charge_id,
        payment_intent_id=attempt.payment_intent_id,
    )


def known_decline(
    session: Session, *, charge_id: str | None, payment_intent_id: str | None
) -> PaymentAttempt | None:
    """An attempt already recorded from a charge / payment_intent event, if any."""
    if charge_id:
        found = session.scalar(select(PaymentAttempt).where(_by_charge(charge_id)))
        if found:
            return found
    if payment_intent_id:
        return session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.payment_intent_id == payment_intent_id)
            .order_by(PaymentAttempt.occurred_at.desc(), PaymentAttempt.id.desc())
        ).first()
    return None
