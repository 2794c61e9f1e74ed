"""Turn raw Stripe payloads into the provider-neutral facts of ``worker.billing.domain``.

Owns: reading a whole Stripe event envelope (``normalise_stripe_event``) or a single Stripe
object (``parse_stripe_object``) in both API shapes (before and after ``2025-03-31.basil``), and
pulling the decline signals out of PaymentIntents, Charges, InvoicePayments and 402
``card_error`` bodies, per ``shared/domain/retry-rules.md`` section 1. Every malformed input
becomes ``EventParseError`` with a message naming the exact field; nothing else escapes.

Does not own: signature verification (the webhook intake), fetching the PaymentIntent / Charge
an invoice event only names (the Stripe client), classifying declines (the retry policy), or
storing anything. Pure functions, no I/O. ``message`` texts from Stripe are never kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

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
    # Downgraded to CUSTOMER_UPDATED unless the default payment method really changed.
    "customer.updated": EventKind.DEFAULT_PAYMENT_METHOD_CHANGED,
    "customer.created": EventKind.CUSTOMER_UPDATED,
    "customer.source.expiring": EventKind.CARD_EXPIRING,
    "charge.failed": EventKind.CHARGE_FAILED,
    "payment_intent.payment_failed": EventKind.PAYMENT_INTENT_FAILED,
}

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
    EventKind.DEFAULT_PAYMENT_METHOD_CHANGED: frozenset({"customer"}),
    EventKind.CUSTOMER_UPDATED: frozenset({"customer"}),
    EventKind.CARD_EXPIRING: frozenset({"card", "source"}),
    EventKind.CHARGE_FAILED: frozenset({"charge"}),
    EventKind.PAYMENT_INTENT_FAILED: frozenset({"payment_intent"}),
}

# An approved outcome is not a decline signal: keeping "authorized" would make is_empty False.
_APPROVED_OUTCOMES: Final = frozenset({"authorized", "manual_review"})

# Legacy card objects say "American Express"; PaymentMethods say "amex".
_BRAND_ALIASES: Final[Mapping[str, str]] = {
    "american_express": "amex",
    "diners_club": "diners",
    "eftpos_australia": "eftpos_au",
}


def _describe(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case Mapping():
            return "object"
        case list() | tuple():
            return "array"
        case _:
            return type(value).__name__


class _Node:
    """A JSON object plus its path from the root, so every error names the exact field."""

    __slots__ = ("path", "raw")

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise EventParseError(f"{path}: expected an object, got {_describe(raw)}")
        self.raw: Mapping[str, Any] = raw
        self.path = path

    def __bool__(self) -> bool:
        """False for an empty object, which is what ``child`` gives for an absent one."""
        return bool(self.raw)

    def _wrong(self, key: str, expected: str, value: object) -> EventParseError:
        return EventParseError(f"{self.path}.{key}: expected {expected}, got {_describe(value)}")

    def _need(self, key: str) -> Any:
        value = self.raw.get(key)
        if value is None or value == "":
            raise EventParseError(f"{self.path}.{key}: required, missing")
        return value

    def need_text(self, key: str) -> str:
        value = self._need(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def text(self, key: str) -> str | None:
        """An optional string field; "" counts as absent."""
        return None if self.raw.get(key) in (None, "") else self.need_text(key)

    def need_integer(self, key: str) -> int:
        value = self._need(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def integer(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else self.need_integer(key)

    def number(self, key: str) -> Decimal | None:
        """An optional JSON number (integer or decimal), exactly."""
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number", value)
        return Decimal(str(value))

    def flag(self, key: str) -> bool:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return bool(value)

    def need_time(self, key: str) -> datetime:
        """A unix timestamp field as an aware UTC datetime."""
        seconds = self.need_integer(key)  # outside the try: EventParseError is a ValueError
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise EventParseError(f"{self.path}.{key}: timestamp out of range") from None

    def time(self, key: str) -> datetime | None:
        return None if self.raw.get(key) is None else self.need_time(key)

    def child(self, key: str) -> _Node:
        """A nested object; an empty one when the field is absent or null."""
        value = self.raw.get(key)
        return _Node({} if value is None else value, f"{self.path}.{key}")

    def need_child(self, key: str) -> _Node:
        return _Node(self._need(key), f"{self.path}.{key}")

    def expanded(self, key: str) -> _Node | None:
        """The object when an expandable field is expanded; None when it is an id or null."""
        value = self.raw.get(key)
        if value is None or isinstance(value, str):
            return None
        return _Node(value, f"{self.path}.{key}")

    def need_ref(self, key: str) -> str:
        """The id of an expandable field, whether it holds the id or the expanded object."""
        value = self._need(key)
        if isinstance(value, Mapping):
            return _Node(value, f"{self.path}.{key}").need_text("id")
        if not isinstance(value, str):
            raise self._wrong(key, "an id or an object", value)
        return value

    def ref(self, key: str) -> str | None:
        return None if self.raw.get(key) in (None, "") else self.need_ref(key)

    def listing(self, key: str) -> list[_Node]:
        """The entries of a Stripe list object ``{"object": "list", "data": [...]}``."""
        data = self.child(key).raw.get("data")
        if data is None:
            return []
        if not isinstance(data, list):
            raise EventParseError(
                f"{self.path}.{key}.data: expected an array, got {_describe(data)}"
            )
        return [_Node(entry, f"{self.path}.{key}.data[{i}]") for i, entry in enumerate(data)]

    def expect_object(self, allowed: frozenset[str]) -> None:
        stated = self.text("object")
        if stated is not None and stated not in allowed:
            wanted = " or ".join(sorted(allowed))
            raise EventParseError(f"{self.path}.object: expected {wanted}, got {stated!r}")


# --- public API --------------------------------------------------------------------------------


def normalise_stripe_event(payload: Mapping[str, Any]) -> NormalisedEvent:
    """Reduce one Stripe event envelope to a ``NormalisedEvent``.

    Types we do not act on become IGNORED without their object being read beyond "is an object".
    """
    event = _Node(payload, "event")
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
    object_type = _Node(obj, "object").text("object")
    if object_type is None:
        return None
    node = _Node(obj, object_type)  # errors then read "invoice.lines.data[0]...", not "object..."
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
            return _payment_method_card(node)
        case "payment_intent":
            return _payment_intent_decline(node)
        case "charge":
            return _charge_decline(node)
        case "invoice_payment":
            return _linked_decline(node.child("payment"))
        case _:
            return None


def customer_facts(obj: Mapping[str, Any]) -> CustomerFacts:
    """One Customer object as the API returns it (a list entry, a retrieve)."""
    node = _Node(obj, "customer")
    node.expect_object(frozenset({"customer"}))
    return _customer(node)


def subscription_facts(obj: Mapping[str, Any]) -> SubscriptionFacts:
    """One Subscription object as the API returns it. Expand ``discounts`` (from API
    2025-09-30 on, ``discounts.source.coupon``): ids alone are flagged unexpanded, and a
    discount without its coupon is an error."""
    node = _Node(obj, "subscription")
    node.expect_object(frozenset({"subscription"}))
    return _subscription(node)


def subscription_trial_end(obj: Mapping[str, Any]) -> datetime | None:
    """When a Subscription object's trial ends or ended; None when it had no trial."""
    return _Node(obj, "subscription").time("trial_end")


def invoice_facts(obj: Mapping[str, Any]) -> InvoiceFacts:
    """One Invoice object as the API returns it, in either API shape."""
    node = _Node(obj, "invoice")
    node.expect_object(frozenset({"invoice"}))
    return _invoice(node)


def decline_from_payment_intent(pi: Mapping[str, Any]) -> Decline:
    """``last_payment_error`` first, then the latest charge's outcome when it is expanded."""
    return _payment_intent_decline(_Node(pi, "payment_intent"))


def decline_from_charge(ch: Mapping[str, Any]) -> Decline:
    """``failure_code`` and ``outcome`` (unless approved), plus the card that was charged."""
    return _charge_decline(_Node(ch, "charge"))


def decline_from_card_error(error: Mapping[str, Any]) -> Decline:
    """The ``error`` object of a 402 ``card_error`` body (not the whole body)."""
    node = _Node(error, "error")
    payment_intent = node.expanded("payment_intent")
    return merge_declines(
        _error_decline(node),
        _payment_intent_decline(payment_intent) if payment_intent else None,
    )


def merge_declines(*declines: Decline | None) -> Decline:
    """Combine partial views of one failed attempt: the first non-empty value per field wins.

    Cards merge field by field too, but only cards of the same payment method (or of an
    unknown one), so one attempt's card never borrows another card's expiry.
    """
    present = [d for d in declines if d is not None]
    merged = {
        f.name: _first(getattr(d, f.name) for d in present)
        for f in fields(Decline)
        if f.name != "card"
    }
    return Decline(**merged, card=_merge_cards([d.card for d in present]))


# --- events ------------------------------------------------------------------------------------


def _event_facts(kind: EventKind, obj: _Node, previous: _Node) -> tuple[EventKind, dict[str, Any]]:
    """The kind (customer.updated may become CUSTOMER_UPDATED) and the fields the object fills."""
    if kind in _OBJECT_TYPES:
        obj.expect_object(_OBJECT_TYPES[kind])
    if kind in _INVOICE_KINDS:
        invoice = _invoice(obj)
        decline = _linked_decline(obj)
        return kind, {"invoice": invoice, "decline": decline, "customer_id": invoice.customer_id}
    match kind:
        case EventKind.SUBSCRIPTION_UPDATED | EventKind.SUBSCRIPTION_DELETED:
            subscription = _subscription(obj)
            return kind, {"subscription": subscription, "customer_id": subscription.customer_id}
        case EventKind.PAYMENT_METHOD_UPDATED | EventKind.CARD_EXPIRING:
            return kind, {"card": _payment_method_card(obj), "customer_id": obj.ref("customer")}
        case EventKind.DEFAULT_PAYMENT_METHOD_CHANGED | EventKind.CUSTOMER_UPDATED:
            customer = _customer(obj)
            if not _default_payment_method_changed(obj, previous):
                kind = EventKind.CUSTOMER_UPDATED  # name, email, locale, timezone: kept
            return kind, {"customer": customer, "customer_id": customer.id}
        case EventKind.CHARGE_FAILED:
            return kind, _attempt_facts(_charge_decline(obj), obj)
        case EventKind.PAYMENT_INTENT_FAILED:
            return kind, _attempt_facts(_payment_intent_decline(obj), obj)
        case _:
            return kind, {}


def _attempt_facts(decline: Decline, obj: _Node) -> dict[str, Any]:
    """A failed Charge / PaymentIntent; its ``invoice`` field was removed in basil."""
    return {
        "decline": decline,
        "related_invoice_id": obj.ref("invoice"),
        "customer_id": obj.ref("customer"),
    }


def _default_payment_method_changed(customer: _Node, previous: _Node) -> bool:
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


def _invoice(inv: _Node) -> InvoiceFacts:
    return InvoiceFacts(
        id=inv.need_text("id"),
        customer_id=inv.need_ref("customer"),
        subscription_id=_invoice_subscription_id(inv),
        status=inv.text("status"),
        amount_due=inv.need_integer("amount_due"),
        amount_paid=inv.integer("amount_paid") or 0,
        currency=inv.need_text("currency").lower(),
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


def _invoice_subscription_id(inv: _Node) -> str | None:
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


def _parent_ref(parent: _Node, details_key: str) -> str | None:
    """``parent.<details>.subscription``, honouring the ``parent.type`` discriminator."""
    if parent.text("type") not in (None, details_key):
        return None
    return parent.child(details_key).ref("subscription")


def _subscription(sub: _Node) -> SubscriptionFacts:
    discounts, unexpanded = _subscription_discounts(sub)
    holders = sub.listing("items")
    item_ends = [end for item in holders if (end := item.time("current_period_end"))]
    if not holders and _pricing(sub):
        holders = [sub]  # pre-2017 shape: one plan and quantity on the subscription itself
    return SubscriptionFacts(
        id=sub.need_text("id"),
        customer_id=sub.need_ref("customer"),
        status=sub.need_text("status"),
        currency=_lower(sub.text("currency") or _item_currency(sub)),
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


def _subscription_discounts(sub: _Node) -> tuple[list[_Node], bool]:
    """The subscription's discounts: ``discounts`` when expanded, else the legacy single
    ``discount``. Ids alone (what webhooks carry) say nothing of the amount: flagged."""
    raw = sub.raw.get("discounts")
    if isinstance(raw, list) and raw:
        nodes = [
            _Node(entry, f"{sub.path}.discounts[{i}]")
            for i, entry in enumerate(raw)
            if isinstance(entry, Mapping)
        ]
        if len(nodes) == len(raw):
            return nodes, False
        legacy = sub.expanded("discount")
        return ([legacy] if legacy else []), True
    legacy = sub.expanded("discount")
    return ([legacy] if legacy else []), False


def _discount(discount: _Node) -> DiscountFacts:
    # API 2025-09-30 moved the coupon under ``source``; older versions have it at the top.
    coupon = discount.expanded("coupon") or discount.child("source").expanded("coupon")
    if coupon is None:
        raise EventParseError(f"{discount.path}.coupon: required, missing")
    return DiscountFacts(
        percent_off=coupon.number("percent_off"),
        amount_off=coupon.integer("amount_off"),
        currency=_lower(coupon.text("currency")),
        duration=coupon.text("duration") or "once",
        end=discount.time("end"),
        id=discount.text("id"),
    )


def _pricing(holder: _Node) -> _Node | None:
    """An item's expanded price, else its legacy plan (both carry the same facts)."""
    return holder.expanded("price") or holder.expanded("plan")


def _subscription_item(holder: _Node) -> SubscriptionItemFacts:
    pricing = _pricing(holder) or _Node({}, f"{holder.path}.price")
    cadence = pricing.child("recurring") or pricing  # prices nest it, plans carry it themselves
    unit_amount = pricing.integer("unit_amount")
    return SubscriptionItemFacts(
        price_id=holder.ref("price") or holder.ref("plan"),
        product_id=pricing.ref("product"),
        unit_amount=pricing.integer("amount") if unit_amount is None else unit_amount,
        quantity=_default(holder.integer("quantity"), 1),  # metered items have none
        interval=cadence.text("interval"),
        interval_count=_default(cadence.integer("interval_count"), 1),
        usage_type=cadence.text("usage_type") or "licensed",
    )


def _item_currency(sub: _Node) -> str | None:
    """Old subscriptions have no currency of their own; their prices do."""
    for holder in [*sub.listing("items"), sub]:
        pricing = _pricing(holder)
        if pricing and (currency := pricing.text("currency")):
            return currency
    return None


def _customer(cus: _Node) -> CustomerFacts:
    locales = cus.raw.get("preferred_locales") or []
    if not isinstance(locales, list) or not all(isinstance(loc, str) for loc in locales):
        raise EventParseError(f"{cus.path}.preferred_locales: expected an array of strings")
    return CustomerFacts(
        id=cus.need_text("id"),
        email=cus.text("email"),
        name=cus.text("name"),
        default_payment_method_id=cus.child("invoice_settings").ref("default_payment_method")
        or cus.ref("default_source"),
        locale=locales[0] if locales else None,
        timezone=cus.child("metadata").text("timezone"),
    )


def _payment_method_card(pm: _Node) -> Card:
    """A PaymentMethod (details in ``card``), a Source (also ``card``) or a legacy Card."""
    return _card(pm.child("card") or pm, pm.need_text("id"))


def _card(details: _Node, payment_method_id: str | None) -> Card:
    brand = details.text("brand")
    return Card(
        payment_method_id=payment_method_id,
        brand=_BRAND_ALIASES.get(key := brand.lower().replace(" ", "_"), key) if brand else None,
        last4=details.text("last4"),
        exp_month=details.integer("exp_month"),
        exp_year=details.integer("exp_year"),
        fingerprint=details.text("fingerprint"),
    )


def _card_ref(node: _Node, key: str) -> Card | None:
    """The card an expandable ``payment_method`` / ``source`` field names."""
    expanded = node.expanded(key)
    if expanded:
        return _payment_method_card(expanded)
    payment_method_id = node.ref(key)
    return Card(payment_method_id=payment_method_id) if payment_method_id else None


# --- declines ----------------------------------------------------------------------------------


def _error_decline(err: _Node) -> Decline:
    """A ``last_payment_error`` or a 402 ``error``: same fields; ``message`` is dropped."""
    return Decline(
        code=err.text("code"),
        decline_code=err.text("decline_code"),
        advice_code=err.text("advice_code"),
        network_decline_code=err.text("network_decline_code"),
        network_advice_code=err.text("network_advice_code"),
        charge_id=err.ref("charge"),
        payment_intent_id=err.ref("payment_intent"),
        card=_card_ref(err, "payment_method") or _card_ref(err, "source"),
    )


def _charge_decline(ch: _Node) -> Decline:
    outcome = ch.child("outcome")
    if outcome.text("type") in _APPROVED_OUTCOMES:
        outcome = _Node({}, outcome.path)
    card_details = ch.child("payment_method_details").child("card")
    # Legacy charges carry the card as `source` instead of payment_method_details.
    card = (
        _card(card_details, ch.ref("payment_method"))
        if card_details
        else _card_ref(ch, "source") or _card_ref(ch, "payment_method")
    )
    return Decline(
        code=ch.text("failure_code"),
        advice_code=outcome.text("advice_code"),
        network_decline_code=outcome.text("network_decline_code"),
        network_advice_code=outcome.text("network_advice_code"),
        outcome_type=outcome.text("type"),
        outcome_reason=outcome.text("reason"),
        network_status=outcome.text("network_status"),
        charge_id=ch.need_text("id"),
        payment_intent_id=ch.ref("payment_intent"),
        card=card,
    )


def _payment_intent_decline(pi: _Node) -> Decline:
    # latest_charge when expanded; before 2022-11-15 the `charges` list (newest first) instead.
    charge = pi.expanded("latest_charge") or next(iter(pi.listing("charges")), None)
    return merge_declines(
        _error_decline(pi.child("last_payment_error")),
        _charge_decline(charge) if charge else None,
        Decline(
            payment_intent_id=pi.need_text("id"),
            charge_id=pi.ref("latest_charge"),
            card=_card_ref(pi, "payment_method"),
        ),
    )


def _linked_decline(holder: _Node) -> Decline:
    """An invoice (old shape) or an InvoicePayment's ``payment``: the PaymentIntent and Charge
    it names, read in full when expanded, else just their ids."""
    payment_intent = holder.expanded("payment_intent")
    charge = holder.expanded("charge")
    return merge_declines(
        _payment_intent_decline(payment_intent) if payment_intent else None,
        _charge_decline(charge) if charge else None,
        Decline(payment_intent_id=holder.ref("payment_intent"), charge_id=holder.ref("charge")),
    )


# --- small helpers -----------------------------------------------------------------------------


def _lower(value: str | None) -> str | None:
    return value.lower() if value else None


def _default(value: int | None, fallback: int) -> int:
    return fallback if value is None else value


def _first(values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def _merge_cards(cards: list[Card | None]) -> Card | None:
    known = [c for c in cards if c is not None]
    if not known:
        return None
    payment_method_id = _first(c.payment_method_id for c in known)
    same = [c for c in known if c.payment_method_id in (None, payment_method_id)]
    return Card(**{f.name: _first(getattr(c, f.name) for c in same) for f in fields(Card)})
