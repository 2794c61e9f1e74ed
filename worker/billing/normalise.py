"""Turn raw Stripe payloads into the provider-neutral facts of ``worker.billing.domain``.

Owns: reading a whole Stripe event envelope (``normalise_stripe_event``) or a single Stripe
object (``parse_stripe_object``) in both API shapes (before and after ``2025-03-31.basil``), and
the invoice, subscription (discounts, items) and customer parsers behind them. Decline signals
and cards (PaymentIntents, Charges, InvoicePayments, 402 ``card_error`` bodies) are read by
``worker.billing.declines``; field access with errors naming the exact path is
``worker.billing.payload``. Every malformed input becomes ``EventParseError``; nothing else
escapes.

Does not own: signature verification (the webhook intake), fetching the PaymentIntent / Charge
an invoice event only names (the Stripe client), classifying declines (the retry policy), or
storing anything. Pure functions, no I/O. ``message`` texts from Stripe are never kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from worker.billing.declines import (
    charge_decline,
    linked_decline,
    payment_intent_decline,
    payment_method_card,
)
from worker.billing.domain import (
    Card,
    CustomerFacts,
    Decline,
    DiscountFacts,
    EventKind,
    EventParseError,
    InvoiceFacts,
    NormalisedEvent,
    SubscriptionFacts,
    SubscriptionItemFacts,
)
from worker.billing.payload import Node
from worker.money import is_currency

PROVIDER: Final = "stripe"

_EVENT_KINDS: Final[Mapping[str, EventKind]] = {
    "invoice.payment_failed": EventKind.PAYMENT_FAILED,
    "invoice.payment_action_required": EventKind.ACTION_REQUIRED,
    "invoice.paid": EventKind.PAYMENT_SUCCEEDED,
    "invoice.payment_succeeded": EventKind.PAYMENT_SUCCEEDED,
    "invoice.voided": EventKind.INVOICE_VOIDED,
    "invoice.marked_uncollectible": EventKind.INVOICE_UNCOLLECTIBLE,
    "customer.subscription.created": EventKind.SUBSCRIPTION_UPDATED,
    "customer.subscription.updated": EventKind.SUBSCRIPTION_UPDATED,
    "customer.subscription.deleted": EventKind.SUBSCRIPTION_DELETED,
    "payment_method.automatically_updated": EventKind.PAYMENT_METHOD_UPDATED,
    "payment_method.updated": EventKind.PAYMENT_METHOD_UPDATED,
    "payment_method.attached": EventKind.PAYMENT_METHOD_UPDATED,
    "payment_method.detached": EventKind.PAYMENT_METHOD_DETACHED,
    # Downgraded to CUSTOMER_UPDATED unless the default payment method really changed.
    "customer.updated": EventKind.DEFAULT_PAYMENT_METHOD_CHANGED,
    "customer.created": EventKind.CUSTOMER_UPDATED,
    "customer.source.expiring": EventKind.CARD_EXPIRING,
    "charge.failed": EventKind.CHARGE_FAILED,
    "payment_intent.payment_failed": EventKind.PAYMENT_INTENT_FAILED,
}
# The provider event types we act on (anything else is stored and ignored).
HANDLED_EVENT_TYPES: Final = frozenset(_EVENT_KINDS)

_INVOICE_KINDS: Final = frozenset(
    {
        EventKind.PAYMENT_FAILED,
        EventKind.ACTION_REQUIRED,
        EventKind.PAYMENT_SUCCEEDED,
        EventKind.INVOICE_VOIDED,
        EventKind.INVOICE_UNCOLLECTIBLE,
    }
)

# What data.object.object must be for each kind (when the payload states it at all).
_OBJECT_TYPES: Final[Mapping[EventKind, frozenset[str]]] = {
    **{kind: frozenset({"invoice"}) for kind in _INVOICE_KINDS},
    EventKind.SUBSCRIPTION_UPDATED: frozenset({"subscription"}),
    EventKind.SUBSCRIPTION_DELETED: frozenset({"subscription"}),
    EventKind.PAYMENT_METHOD_UPDATED: frozenset({"payment_method"}),
    EventKind.PAYMENT_METHOD_DETACHED: frozenset({"payment_method"}),
    EventKind.DEFAULT_PAYMENT_METHOD_CHANGED: frozenset({"customer"}),
    EventKind.CUSTOMER_UPDATED: frozenset({"customer"}),
    EventKind.CARD_EXPIRING: frozenset({"card", "source"}),
    EventKind.CHARGE_FAILED: frozenset({"charge"}),
    EventKind.PAYMENT_INTENT_FAILED: frozenset({"payment_intent"}),
}


# --- public API --------------------------------------------------------------------------------


def normalise_stripe_event(payload: Mapping[str, Any]) -> NormalisedEvent:
    """Reduce one Stripe event envelope to a ``NormalisedEvent``.

    Types we do not act on become IGNORED without their object being read beyond "is an object".
    """
    event = Node(payload, "event")
    event.expect_object(frozenset({"event"}))
    event_id = event.need_text("id")
    event_type = event.need_text("type")
    occurred_at = event.need_time("created")
    data = event.need_child("data")
    previous = data.child("previous_attributes")
    kind = _EVENT_KINDS.get(event_type, EventKind.IGNORED)
    kind, facts = _event_facts(kind, data.need_child("object"), previous)
    return NormalisedEvent(
        provider=PROVIDER,
        event_id=event_id,
        event_type=event_type,
        kind=kind,
        occurred_at=occurred_at,
        api_version=event.text("api_version"),
        livemode=event.flag("livemode"),
        previous_attributes=dict(previous.raw),
        **facts,
    )


def parse_stripe_object(
    obj: Mapping[str, Any],
) -> InvoiceFacts | SubscriptionFacts | CustomerFacts | Card | Decline | None:
    """Parse one Stripe object by its ``object`` field; None for other types and tombstones."""
    object_type = Node(obj, "object").text("object")
    if object_type is None:
        return None
    node = Node(obj, object_type)  # errors then read "invoice.lines.data[0]...", not "object..."
    if node.flag("deleted"):
        return None
    match object_type:
        case "invoice":
            return _invoice(node)
        case "subscription":
            return _subscription(node)
        case "customer":
            return _customer(node)
        case "payment_method" | "card" | "source":
            return payment_method_card(node)
        case "payment_intent":
            return payment_intent_decline(node)
        case "charge":
            return charge_decline(node)
        case "invoice_payment":
            return linked_decline(node.child("payment"))
        case _:
            return None


def customer_facts(obj: Mapping[str, Any]) -> CustomerFacts:
    """One Customer object as the API returns it (a list entry, a retrieve)."""
    node = Node(obj, "customer")
    node.expect_object(frozenset({"customer"}))
    return _customer(node)


def subscription_facts(obj: Mapping[str, Any]) -> SubscriptionFacts:
    """One Subscription object as the API returns it. Expand ``discounts`` (from API
    2025-09-30 on, ``discounts.source.coupon``): ids alone are flagged unexpanded, and a
    discount without its coupon is an error."""
    node = Node(obj, "subscription")
    node.expect_object(frozenset({"subscription"}))
    return _subscription(node)


def subscription_trial_end(obj: Mapping[str, Any]) -> datetime | None:
    """When a Subscription object's trial ends or ended; None when it had no trial."""
    return Node(obj, "subscription").time("trial_end")


def invoice_facts(obj: Mapping[str, Any]) -> InvoiceFacts:
    """One Invoice object as the API returns it, in either API shape."""
    node = Node(obj, "invoice")
    node.expect_object(frozenset({"invoice"}))
    return _invoice(node)


# --- events ------------------------------------------------------------------------------------


def _event_facts(kind: EventKind, obj: Node, previous: Node) -> tuple[EventKind, dict[str, Any]]:
    """The kind (customer.updated may become CUSTOMER_UPDATED) and the fields the object fills."""
    if kind in _OBJECT_TYPES:
        obj.expect_object(_OBJECT_TYPES[kind])
    if kind in _INVOICE_KINDS:
        invoice = _invoice(obj)
        decline = linked_decline(obj)
        return kind, {"invoice": invoice, "decline": decline, "customer_id": invoice.customer_id}
    match kind:
        case EventKind.SUBSCRIPTION_UPDATED | EventKind.SUBSCRIPTION_DELETED:
            subscription = _subscription(obj)
            return kind, {"subscription": subscription, "customer_id": subscription.customer_id}
        case EventKind.PAYMENT_METHOD_UPDATED | EventKind.CARD_EXPIRING:
            return kind, {"card": payment_method_card(obj), "customer_id": obj.ref("customer")}
        case EventKind.PAYMENT_METHOD_DETACHED:  # the object no longer names its customer
            return kind, {"card": payment_method_card(obj), "customer_id": previous.ref("customer")}
        case EventKind.DEFAULT_PAYMENT_METHOD_CHANGED | EventKind.CUSTOMER_UPDATED:
            customer = _customer(obj)
            if not _default_payment_method_changed(obj, previous):
                kind = EventKind.CUSTOMER_UPDATED  # name, email, locale, timezone: kept
            return kind, {"customer": customer, "customer_id": customer.id}
        case EventKind.CHARGE_FAILED:
            return kind, _attempt_facts(charge_decline(obj), obj)
        case EventKind.PAYMENT_INTENT_FAILED:
            return kind, _attempt_facts(payment_intent_decline(obj), obj)
        case _:
            return kind, {}


def _attempt_facts(decline: Decline, obj: Node) -> dict[str, Any]:
    """A failed Charge / PaymentIntent; its ``invoice`` field was removed in basil."""
    return {
        "decline": decline,
        "related_invoice_id": obj.ref("invoice"),
        "customer_id": obj.ref("customer"),
    }


def _default_payment_method_changed(customer: Node, previous: Node) -> bool:
    """previous_attributes lists only changed fields; also check the value really differs."""
    before = previous.child("invoice_settings")
    if "default_payment_method" in before.raw and before.ref("default_payment_method") != (
        customer.child("invoice_settings").ref("default_payment_method")
    ):
        return True
    return "default_source" in previous.raw and (
        previous.ref("default_source") != customer.ref("default_source")
    )


# --- objects -----------------------------------------------------------------------------------


def _invoice(inv: Node) -> InvoiceFacts:
    return InvoiceFacts(
        id=inv.need_text("id"),
        customer_id=inv.need_ref("customer"),
        subscription_id=_invoice_subscription_id(inv),
        status=inv.text("status"),
        amount_due=inv.need_amount("amount_due"),
        amount_paid=inv.amount("amount_paid") or 0,
        currency=_currency(inv.need_text("currency"), f"{inv.path}.currency"),
        attempt_count=inv.integer("attempt_count") or 0,
        next_payment_attempt=inv.time("next_payment_attempt"),
        hosted_invoice_url=inv.text("hosted_invoice_url"),
        number=inv.text("number"),
        billing_reason=inv.text("billing_reason"),
        created=inv.time("created"),
        customer_email=inv.text("customer_email"),
        customer_name=inv.text("customer_name"),
        payment_intent_id=inv.ref("payment_intent"),
        charge_id=inv.ref("charge"),
    )


def _invoice_subscription_id(inv: Node) -> str | None:
    """Old shape ``subscription``, basil ``parent.subscription_details``, else the lines."""
    subscription = inv.ref("subscription") or _parent_ref(
        inv.child("parent"), "subscription_details"
    )
    if subscription:
        return subscription
    for line in inv.listing("lines"):
        parent = line.child("parent")
        found = (
            line.ref("subscription")
            or _parent_ref(parent, "subscription_item_details")
            or _parent_ref(parent, "invoice_item_details")
        )
        if found:
            return found
    return None


def _parent_ref(parent: Node, details_key: str) -> str | None:
    """``parent.<details>.subscription``, honouring the ``parent.type`` discriminator."""
    if parent.text("type") not in (None, details_key):
        return None
    return parent.child(details_key).ref("subscription")


def _subscription(sub: Node) -> SubscriptionFacts:
    discounts, unexpanded = _subscription_discounts(sub)
    holders = sub.listing("items")
    item_ends = [end for item in holders if (end := item.time("current_period_end"))]
    if not holders and _pricing(sub):
        holders = [sub]  # pre-2017 shape: one plan and quantity on the subscription itself
    return SubscriptionFacts(
        id=sub.need_text("id"),
        customer_id=sub.need_ref("customer"),
        status=sub.need_text("status"),
        currency=_optional_currency(sub.text("currency") or _item_currency(sub), sub.path),
        items=tuple(_subscription_item(holder) for holder in holders),
        cancel_at_period_end=sub.flag("cancel_at_period_end"),
        canceled_at=sub.time("canceled_at"),
        ended_at=sub.time("ended_at"),
        cancellation_reason=sub.child("cancellation_details").text("reason"),
        current_period_end=sub.time("current_period_end") or max(item_ends, default=None),
        default_payment_method_id=sub.ref("default_payment_method") or sub.ref("default_source"),
        start_date=sub.time("start_date") or sub.time("created"),
        discounts=tuple(_discount(found) for found in discounts),
        discounts_unexpanded=unexpanded,
        discount_ids=tuple(
            entry if isinstance(entry, str) else str(entry.get("id"))
            for entry in sub.raw.get("discounts") or []
            if isinstance(entry, str | Mapping)
        ),
    )


def _subscription_discounts(sub: Node) -> tuple[list[Node], bool]:
    """The subscription's discounts: ``discounts`` when expanded, else the legacy single
    ``discount``. Ids alone (what webhooks carry) say nothing of the amount: flagged."""
    raw = sub.raw.get("discounts")
    if isinstance(raw, list) and raw:
        nodes = [
            Node(entry, f"{sub.path}.discounts[{i}]")
            for i, entry in enumerate(raw)
            if isinstance(entry, Mapping)
        ]
        if len(nodes) == len(raw):
            return nodes, False
        legacy = sub.expanded("discount")
        return ([legacy] if legacy else []), True
    legacy = sub.expanded("discount")
    return ([legacy] if legacy else []), False


def _discount(discount: Node) -> DiscountFacts:
    # API 2025-09-30 moved the coupon under ``source``; older versions have it at the top.
    coupon = discount.expanded("coupon") or discount.child("source").expanded("coupon")
    if coupon is None:
        raise EventParseError(f"{discount.path}.coupon: required, missing")
    return DiscountFacts(
        percent_off=coupon.number("percent_off"),
        amount_off=coupon.amount("amount_off"),
        currency=_optional_currency(coupon.text("currency"), coupon.path),
        duration=coupon.text("duration") or "once",
        end=discount.time("end"),
        id=discount.text("id"),
    )


def _pricing(holder: Node) -> Node | None:
    """An item's expanded price, else its legacy plan (both carry the same facts)."""
    return holder.expanded("price") or holder.expanded("plan")


def _subscription_item(holder: Node) -> SubscriptionItemFacts:
    pricing = _pricing(holder) or Node({}, f"{holder.path}.price")
    cadence = pricing.child("recurring") or pricing  # prices nest it, plans carry it themselves
    unit_amount = pricing.amount("unit_amount")
    return SubscriptionItemFacts(
        price_id=holder.ref("price") or holder.ref("plan"),
        product_id=pricing.ref("product"),
        unit_amount=pricing.amount("amount") if unit_amount is None else unit_amount,
        quantity=_default(holder.amount("quantity"), 1),  # metered items have none
        interval=cadence.text("interval"),
        interval_count=_default(cadence.integer("interval_count"), 1),
        usage_type=cadence.text("usage_type") or "licensed",
    )


def _item_currency(sub: Node) -> str | None:
    """Old subscriptions have no currency of their own; their prices do."""
    for holder in [*sub.listing("items"), sub]:
        pricing = _pricing(holder)
        if pricing and (currency := pricing.text("currency")):
            return currency
    return None


def _customer(cus: Node) -> CustomerFacts:
    locales = cus.raw.get("preferred_locales") or []
    if not isinstance(locales, list) or not all(isinstance(loc, str) for loc in locales):
        raise EventParseError(f"{cus.path}.preferred_locales: expected an array of strings")
    return CustomerFacts(
        id=cus.need_text("id"),
        email=cus.text("email"),
        name=cus.text("name"),
        default_payment_method_id=cus.child("invoice_settings").ref("default_payment_method")
        or cus.ref("default_source"),
        locale=",".join(locales) if locales else None,  # in the customer's order
        timezone=cus.child("metadata").text("timezone"),
    )


# --- small helpers -----------------------------------------------------------------------------


def _currency(code: str, path: str) -> str:
    """A currency code we can book money in (lower case, as Stripe sends it)."""
    if not is_currency(code):
        raise EventParseError(f"{path}: unknown currency {code[:8]!r}")
    return code.lower()


def _optional_currency(code: str | None, path: str) -> str | None:
    return None if code is None else _currency(code, f"{path}.currency")


def _default(value: int | None, fallback: int) -> int:
    return fallback if value is None else value
