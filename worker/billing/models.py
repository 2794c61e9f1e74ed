"""Our mirror of the provider's billing objects (only what dunning and the ledger need).

Card data is limited to brand, last4, expiry and fingerprint (DESIGN §6).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Double, ForeignKey, Index, Text, UniqueConstraint, and_
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK

PROVIDER = "stripe"  # the only provider so far; every mirrored row says which one it is from


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("provider", "provider_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, default="stripe")
    provider_id: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    # Stripe's preferred_locales in the customer's order, comma-separated ("fr-CA,en")
    locale: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str | None] = mapped_column(Text)
    default_payment_method_id: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class PaymentMethod(Base):
    __tablename__ = "payment_methods"
    __table_args__ = (UniqueConstraint("provider", "provider_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, default="stripe")
    provider_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    brand: Mapped[str | None] = mapped_column(Text)
    last4: Mapped[str | None] = mapped_column(Text)
    exp_month: Mapped[int | None]
    exp_year: Mapped[int | None]
    fingerprint: Mapped[str | None] = mapped_column(Text, index=True)
    updated_at: Mapped[datetime]
    detached_at: Mapped[datetime | None]  # the customer removed it (payment_method.detached)


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("provider", "provider_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, default="stripe")
    provider_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(Text)
    currency: Mapped[str | None] = mapped_column(Text)
    mrr: Mapped[int] = mapped_column(default=0)  # monthly-normalised, minor units
    interval: Mapped[str | None] = mapped_column(Text)  # of the first item: for segments
    plan: Mapped[str | None] = mapped_column(Text)  # the first item's price id: for segments
    cancellation_reason: Mapped[str | None] = mapped_column(Text)
    ended_at: Mapped[datetime | None]
    as_of: Mapped[datetime]  # provider time of the newest event applied (late events lose)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("provider", "provider_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, default="stripe")
    provider_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    status: Mapped[str | None] = mapped_column(Text)
    number: Mapped[str | None] = mapped_column(Text)
    amount_due: Mapped[int]
    amount_paid: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(default=0)  # the provider's own count
    next_payment_attempt: Mapped[datetime | None]  # the provider's next automatic retry
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    as_of: Mapped[datetime]


class AttemptSource(StrEnum):
    OURS = "ours"  # our retry_payment action
    PROVIDER = "provider"  # the provider's scheduled charge or automatic retry
    CUSTOMER = "customer"  # the customer paying on the hosted page / portal


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ACTION_REQUIRED = "action_required"
    # accepted, not settled (a bank debit): resolved in place when the provider reports the
    # charge succeeded or failed; while pending it blocks further retries of its invoice
    PROCESSING = "processing"


class PaymentAttempt(Base):
    """Every charge attempt on a card we learn of. ``charge_id`` is unique: the same attempt
    reported by our own API call and again by a webhook is recorded once."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        UniqueConstraint("provider", "charge_id"),
        Index(None, "card_fingerprint", "occurred_at"),
        Index(None, "payment_method_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, default="stripe")
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    action_id: Mapped[int | None] = mapped_column(ForeignKey("scheduled_actions.id"))
    source: Mapped[AttemptSource]
    outcome: Mapped[AttemptOutcome]
    occurred_at: Mapped[datetime]
    amount: Mapped[int | None]
    currency: Mapped[str | None] = mapped_column(Text)
    charge_id: Mapped[str | None] = mapped_column(Text)
    payment_intent_id: Mapped[str | None] = mapped_column(Text, index=True)
    code: Mapped[str | None] = mapped_column(Text)
    decline_code: Mapped[str | None] = mapped_column(Text)
    advice_code: Mapped[str | None] = mapped_column(Text)
    network_decline_code: Mapped[str | None] = mapped_column(Text)
    network_advice_code: Mapped[str | None] = mapped_column(Text)
    outcome_type: Mapped[str | None] = mapped_column(Text)
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    card_brand: Mapped[str | None] = mapped_column(Text)
    card_fingerprint: Mapped[str | None] = mapped_column(Text)
    # The provider's payment method: it keeps its id when the network updates the card's
    # number (a new fingerprint), so the network budget can follow the card.
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    # True once this attempt has moved a dunning case: the same charge reported again (our
    # 402, invoice.payment_failed, charge.failed) never counts as a second failure.
    counted: Mapped[bool] = mapped_column(default=False)


class StripeBudgetBucket(Base):
    """One of the fleet's Stripe token buckets (``read``, ``write``) when the broker is not
    Redis (:class:`worker.billing.budget.DatabaseBudget`). Times are seconds since the epoch
    on the database's own clock, so every host agrees; rows are created on first use."""

    __tablename__ = "stripe_budget"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    refilled_at_s: Mapped[float] = mapped_column(Double)
    paused_until_s: Mapped[float] = mapped_column(Double)  # a 429's fleet-wide pause
    granted: Mapped[bool]  # whether the last take got a token (read back by RETURNING)


def by_provider_id(model: Any, provider_id: str, provider: str = PROVIDER) -> ColumnElement[bool]:
    """The look-up of a mirrored object by the provider's id: ``(provider, provider_id)``, the
    columns of its unique index (the id alone cannot use it)."""
    return and_(model.provider == provider, model.provider_id == provider_id)
