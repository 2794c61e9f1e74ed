"""Pull decline signals and cards out of raw Stripe payloads, per
``shared/domain/retry-rules.md`` section 1.

Owns: reading PaymentIntents, Charges, InvoicePayments and 402 ``card_error`` bodies into a
``Decline`` (with the ``Card`` that was charged), and merging partial views of one failed
attempt (``merge_declines``). Every malformed input becomes ``EventParseError`` with a message
naming the exact field; nothing else escapes.

Does not own: fetching the PaymentIntent / Charge an invoice event only names (the Stripe
client), classifying declines (the retry policy), or storing anything. Pure functions, no I/O.
``message`` texts from Stripe are never kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Final

from worker.billing.domain import Card, Decline
from worker.billing.payload import Node

# An approved outcome is not a decline signal: keeping "authorized" would make is_empty False.
_APPROVED_OUTCOMES: Final = frozenset({"authorized", "manual_review"})

# Legacy card objects say "American Express"; PaymentMethods say "amex".
_BRAND_ALIASES: Final[Mapping[str, str]] = {
    "american_express": "amex",
    "diners_club": "diners",
    "eftpos_australia": "eftpos_au",
}


# --- public API --------------------------------------------------------------------------------


def decline_from_payment_intent(pi: Mapping[str, Any]) -> Decline:
    """``last_payment_error`` first, then the latest charge's outcome when it is expanded."""
    return payment_intent_decline(Node(pi, "payment_intent"))


def decline_from_charge(ch: Mapping[str, Any]) -> Decline:
    """``failure_code`` and ``outcome`` (unless approved), plus the card that was charged."""
    return charge_decline(Node(ch, "charge"))


def decline_from_card_error(error: Mapping[str, Any]) -> Decline:
    """The ``error`` object of a 402 ``card_error`` body (not the whole body)."""
    node = Node(error, "error")
    payment_intent = node.expanded("payment_intent")
    return merge_declines(
        _error_decline(node),
        payment_intent_decline(payment_intent) if payment_intent else None,
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


# --- cards -------------------------------------------------------------------------------------


def payment_method_card(pm: Node) -> Card:
    """A PaymentMethod (details in ``card``), a Source (also ``card``) or a legacy Card."""
    return _card(pm.child("card") or pm, pm.need_text("id"))


def _card(details: Node, payment_method_id: str | None) -> Card:
    brand = details.text("brand")
    return Card(
        payment_method_id=payment_method_id,
        brand=_BRAND_ALIASES.get(key := brand.lower().replace(" ", "_"), key) if brand else None,
        last4=details.text("last4"),
        exp_month=details.integer("exp_month"),
        exp_year=details.integer("exp_year"),
        fingerprint=details.text("fingerprint"),
    )


def _card_ref(node: Node, key: str) -> Card | None:
    """The card an expandable ``payment_method`` / ``source`` field names."""
    expanded = node.expanded(key)
    if expanded:
        return payment_method_card(expanded)
    payment_method_id = node.ref(key)
    return Card(payment_method_id=payment_method_id) if payment_method_id else None


# --- declines ----------------------------------------------------------------------------------


def _error_decline(err: Node) -> Decline:
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


def charge_decline(ch: Node) -> Decline:
    outcome = ch.child("outcome")
    if outcome.text("type") in _APPROVED_OUTCOMES:
        outcome = Node({}, outcome.path)
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


def payment_intent_decline(pi: Node) -> Decline:
    # latest_charge when expanded; before 2022-11-15 the `charges` list (newest first) instead.
    charge = pi.expanded("latest_charge") or next(iter(pi.listing("charges")), None)
    return merge_declines(
        _error_decline(pi.child("last_payment_error")),
        charge_decline(charge) if charge else None,
        Decline(
            payment_intent_id=pi.need_text("id"),
            charge_id=pi.ref("latest_charge"),
            card=_card_ref(pi, "payment_method"),
        ),
    )


def linked_decline(holder: Node) -> Decline:
    """An invoice (old shape) or an InvoicePayment's ``payment``: the PaymentIntent and Charge
    it names, read in full when expanded, else just their ids."""
    payment_intent = holder.expanded("payment_intent")
    charge = holder.expanded("charge")
    return merge_declines(
        payment_intent_decline(payment_intent) if payment_intent else None,
        charge_decline(charge) if charge else None,
        Decline(payment_intent_id=holder.ref("payment_intent"), charge_id=holder.ref("charge")),
    )


# --- small helpers -----------------------------------------------------------------------------


def _first(values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def _merge_cards(cards: list[Card | None]) -> Card | None:
    known = [c for c in cards if c is not None]
    if not known:
        return None
    payment_method_id = _first(c.payment_method_id for c in known)
    same = [c for c in known if c.payment_method_id in (None, payment_method_id)]
    return Card(**{f.name: _first(getattr(c, f.name) for c in same) for f in fields(Card)})
