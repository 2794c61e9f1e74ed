"""Provider-neutral facts extracted from billing webhooks.

Owns the plain dataclasses that ``worker.billing.normalise`` produces from raw provider
payloads and that the rest of the worker consumes. Holds no logic and no I/O: nothing here
talks to a database or to Stripe. Money is integer minor units plus an ISO currency code in
lower case (as Stripe sends it); times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


class EventKind(StrEnum):
    """What a provider event means for dunning, whatever its provider type string."""

    PAYMENT_FAILED = "payment_failed"  # invoice.payment_failed
    ACTION_REQUIRED = "action_required"  # invoice.payment_action_required
    PAYMENT_SUCCEEDED = "payment_succeeded"  # invoice.paid / invoice.payment_succeeded
    INVOICE_VOIDED = "invoice_voided"  # invoice.voided
    INVOICE_UNCOLLECTIBLE = "invoice_uncollectible"  # invoice.marked_uncollectible
    SUBSCRIPTION_UPDATED = "subscription_updated"  # customer.subscription.created|updated
    SUBSCRIPTION_DELETED = "subscription_deleted"  # customer.subscription.deleted
    # payment_method.automatically_updated | payment_method.updated | payment_method.attached
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    PAYMENT_METHOD_DETACHED = "payment_method_detached"  # payment_method.detached
    DEFAULT_PAYMENT_METHOD_CHANGED = "default_payment_method_changed"  # customer.updated
    CARD_EXPIRING = "card_expiring"  # customer.source.expiring
    CUSTOMER_UPDATED = "customer_updated"  # customer.created, customer.updated (other fields)
    CHARGE_FAILED = "charge_failed"  # charge.failed
    PAYMENT_INTENT_FAILED = "payment_intent_failed"  # payment_intent.payment_failed
    IGNORED = "ignored"  # a type we do not act on (recorded, not an error)


@dataclass(frozen=True, slots=True)
class Card:
    """The only card data we keep: never the number, never the CVC."""

    payment_method_id: str | None
    brand: str | None = None  # visa, mastercard, amex, discover, ... (lower case)
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Decline:
    """Why a payment attempt failed, as far as the payload tells.

    Every field is optional: ``invoice.payment_failed`` carries none of them and the worker
    fetches the PaymentIntent / Charge / InvoicePayment named by ``payment_intent_id`` /
    ``charge_id`` to fill them in.
    """

    code: str | None = None  # error code, e.g. card_declined, expired_card
    decline_code: str | None = None  # issuer's reason, e.g. insufficient_funds
    advice_code: str | None = None  # do_not_try_again | try_again_later | confirm_card_data
    network_decline_code: str | None = None
    network_advice_code: str | None = None  # Mastercard MAC, e.g. "03"
    outcome_type: str | None = None  # issuer_declined | blocked | invalid | ...
    outcome_reason: str | None = None
    network_status: str | None = None  # declined_by_network | not_sent_to_network | ...
    charge_id: str | None = None
    payment_intent_id: str | None = None
    card: Card | None = None

    @property
    def is_empty(self) -> bool:
        """True when no decline signal is known yet (the provider must be asked)."""
        return not (self.code or self.decline_code or self.advice_code or self.outcome_type)

    @property
    def reason(self) -> str | None:
        """The most specific reason known: the issuer's decline_code, then the Charge's
        outcome.reason (a Charge has no decline_code, and its failure_code is the generic
        card_declined), then the error code (e.g. expired_card, processing_error)."""
        return self.decline_code or self.outcome_reason or self.code


@dataclass(frozen=True, slots=True)
class InvoiceFacts:
    id: str
    customer_id: str
    subscription_id: str | None
    status: str | None  # draft | open | paid | void | uncollectible
    amount_due: int
    amount_paid: int
    currency: str
    attempt_count: int
    next_payment_attempt: datetime | None
    hosted_invoice_url: str | None
    number: str | None
    billing_reason: str | None
    created: datetime | None
    customer_email: str | None = None
    customer_name: str | None = None
    payment_intent_id: str | None = None  # pre-basil shape only
    charge_id: str | None = None  # pre-basil shape only


@dataclass(frozen=True, slots=True)
class SubscriptionItemFacts:
    price_id: str | None
    product_id: str | None
    unit_amount: int | None
    quantity: int
    interval: str | None  # day | week | month | year
    interval_count: int
    usage_type: str = "licensed"  # metered items bill usage: not in MRR by default


@dataclass(frozen=True, slots=True)
class DiscountFacts:
    """A coupon applied to a subscription. ``duration`` is forever | repeating | once; a
    repeating one stops at ``end``."""

    percent_off: Decimal | None
    amount_off: int | None  # minor units per billing period
    currency: str | None
    duration: str
    end: datetime | None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionFacts:
    id: str
    customer_id: str
    status: str  # trialing | active | past_due | unpaid | canceled | incomplete | ...
    currency: str | None
    items: tuple[SubscriptionItemFacts, ...]
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    # cancellation_details.reason: payment_failed | cancellation_requested | ...
    cancellation_reason: str | None
    current_period_end: datetime | None
    default_payment_method_id: str | None
    start_date: datetime | None = None
    discounts: tuple[DiscountFacts, ...] = ()
    # ``discounts`` held ids only (webhooks do not expand them): their effect is unknown
    # until fetched (worker.webhooks.service does, before the transaction)
    discounts_unexpanded: bool = False
    discount_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    id: str
    email: str | None
    name: str | None
    default_payment_method_id: str | None
    locale: str | None  # preferred_locales[0]
    timezone: str | None  # metadata.timezone when the merchant sets it


@dataclass(frozen=True, slots=True)
class NormalisedEvent:
    """One provider event reduced to the facts dunning needs."""

    provider: str  # "stripe"
    event_id: str
    event_type: str  # the provider's type string, unchanged
    kind: EventKind
    occurred_at: datetime  # event.created (UTC), not when we processed it
    api_version: str | None
    livemode: bool
    invoice: InvoiceFacts | None = None
    subscription: SubscriptionFacts | None = None
    customer: CustomerFacts | None = None
    card: Card | None = None  # payment method / source named by the event
    decline: Decline | None = None
    previous_attributes: dict[str, object] = field(default_factory=dict)
    # charge / payment_intent events: the invoice they belong to, if known
    related_invoice_id: str | None = None
    customer_id: str | None = None  # the customer the event concerns, whatever its object


class EventParseError(ValueError):
    """A payload that is not a well-formed provider event; kept with this message for ops."""
