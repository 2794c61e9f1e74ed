"""worker.billing.normalise on hand-built payloads (the shared fixtures: test_fixtures.py)."""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.billing.declines import (
    decline_from_card_error,
    decline_from_charge,
    decline_from_payment_intent,
    merge_declines,
)
from worker.billing.domain import (
    Card,
    CustomerFacts,
    Decline,
    EventKind,
    EventParseError,
    InvoiceFacts,
    SubscriptionFacts,
)
from worker.billing.normalise import normalise_stripe_event, parse_stripe_object

CREATED = 1_745_433_962
NEXT_ATTEMPT = 1_745_552_783

INVOICE_OLD: dict[str, Any] = {
    "id": "in_old",
    "object": "invoice",
    "customer": "cus_1",
    "subscription": "sub_old",
    "payment_intent": "pi_old",
    "charge": "ch_old",
    "amount_due": 2500,
    "amount_paid": 0,
    "currency": "EUR",
    "attempt_count": 2,
    "next_payment_attempt": NEXT_ATTEMPT,
    "status": "open",
    "billing_reason": "subscription_cycle",
    "hosted_invoice_url": "https://invoice.stripe.com/i/x",
    "number": "ABC-0002",
    "created": CREATED,
    "customer_email": "ada@example.com",
    "customer_name": "Ada",
}

INVOICE_BASIL: dict[str, Any] = {
    "id": "in_basil",
    "object": "invoice",
    "customer": "cus_1",
    "parent": {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_basil", "metadata": {}},
    },
    "amount_due": 24900,
    "amount_paid": 0,
    "currency": "usd",
    "attempt_count": 1,
    "next_payment_attempt": NEXT_ATTEMPT,
    "status": "open",
}

SUBSCRIPTION: dict[str, Any] = {
    "id": "sub_1",
    "object": "subscription",
    "customer": "cus_1",
    "status": "past_due",
    "currency": "usd",
    "cancel_at_period_end": False,
    "default_payment_method": "pm_default",
    "items": {
        "object": "list",
        "data": [
            {
                "id": "si_1",
                "object": "subscription_item",
                "quantity": 3,
                "current_period_end": 1_750_000_000,
                "price": {
                    "id": "price_1",
                    "object": "price",
                    "product": "prod_1",
                    "unit_amount": 1500,
                    "recurring": {"interval": "year", "interval_count": 1},
                },
            },
            {
                "id": "si_2",
                "object": "subscription_item",
                "current_period_end": 1_760_000_000,
                "price": {
                    "id": "price_2",
                    "product": {"id": "prod_2", "object": "product"},
                    "unit_amount": None,
                    "recurring": {"interval": "month", "interval_count": 3},
                },
            },
        ],
    },
}

PAYMENT_METHOD: dict[str, Any] = {
    "id": "pm_1",
    "object": "payment_method",
    "type": "card",
    "customer": "cus_1",
    "card": {
        "brand": "mastercard",
        "last4": "4444",
        "exp_month": 9,
        "exp_year": 2031,
        "fingerprint": "fp_mc",
    },
}

LEGACY_CARD: dict[str, Any] = {
    "id": "card_1",
    "object": "card",
    "customer": "cus_1",
    "brand": "American Express",
    "last4": "0005",
    "exp_month": 1,
    "exp_year": 2027,
    "fingerprint": "fp_amex",
}

CUSTOMER: dict[str, Any] = {
    "id": "cus_1",
    "object": "customer",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "invoice_settings": {"default_payment_method": "pm_new"},
    "default_source": None,
    "preferred_locales": ["fr-FR", "en"],
    "metadata": {"timezone": "Europe/Paris"},
}

DECLINED_CHARGE: dict[str, Any] = {
    "id": "ch_1",
    "object": "charge",
    "customer": "cus_1",
    "invoice": "in_old",
    "payment_intent": "pi_1",
    "payment_method": "pm_1",
    "status": "failed",
    "failure_code": "card_declined",
    "failure_message": "Your card was declined.",
    "outcome": {
        "type": "issuer_declined",
        "reason": "expired_card",
        "network_status": "declined_by_network",
        "network_decline_code": "54",
        "network_advice_code": "03",
        "advice_code": "confirm_card_data",
        "seller_message": "The bank returned the decline code `expired_card`.",
    },
    "payment_method_details": {
        "type": "card",
        "card": {"brand": "visa", "last4": "4242", "exp_month": 6, "exp_year": 2021},
    },
}

FAILED_PI: dict[str, Any] = {
    "id": "pi_1",
    "object": "payment_intent",
    "customer": "cus_1",
    "invoice": "in_old",
    "status": "requires_payment_method",
    "last_payment_error": {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "advice_code": "try_again_later",
        "message": "Your card has insufficient funds.",
        "charge": "ch_1",
        "payment_method": copy.deepcopy(PAYMENT_METHOD),
    },
    "latest_charge": "ch_1",
}


def envelope(event_type: str, obj: Any, previous: Any = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": "evt_1",
        "object": "event",
        "type": event_type,
        "created": CREATED,
        "api_version": "2025-03-31.basil",
        "livemode": False,
        "data": data,
        **extra,
    }


# --- envelope and kind mapping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "obj", "kind"),
    [
        ("invoice.payment_failed", INVOICE_OLD, EventKind.PAYMENT_FAILED),
        ("invoice.payment_action_required", INVOICE_OLD, EventKind.ACTION_REQUIRED),
        ("invoice.paid", INVOICE_OLD, EventKind.PAYMENT_SUCCEEDED),
        ("invoice.payment_succeeded", INVOICE_OLD, EventKind.PAYMENT_SUCCEEDED),
        ("invoice.voided", INVOICE_OLD, EventKind.INVOICE_VOIDED),
        ("invoice.marked_uncollectible", INVOICE_OLD, EventKind.INVOICE_UNCOLLECTIBLE),
        ("customer.subscription.created", SUBSCRIPTION, EventKind.SUBSCRIPTION_UPDATED),
        ("customer.subscription.updated", SUBSCRIPTION, EventKind.SUBSCRIPTION_UPDATED),
        ("customer.subscription.deleted", SUBSCRIPTION, EventKind.SUBSCRIPTION_DELETED),
        ("payment_method.automatically_updated", PAYMENT_METHOD, EventKind.PAYMENT_METHOD_UPDATED),
        ("payment_method.updated", PAYMENT_METHOD, EventKind.PAYMENT_METHOD_UPDATED),
        ("payment_method.attached", PAYMENT_METHOD, EventKind.PAYMENT_METHOD_UPDATED),
        ("customer.source.expiring", LEGACY_CARD, EventKind.CARD_EXPIRING),
        ("charge.failed", DECLINED_CHARGE, EventKind.CHARGE_FAILED),
        ("payment_intent.payment_failed", FAILED_PI, EventKind.PAYMENT_INTENT_FAILED),
        ("customer.updated", CUSTOMER, EventKind.CUSTOMER_UPDATED),  # no previous_attributes
        ("customer.created", CUSTOMER, EventKind.CUSTOMER_UPDATED),
        ("invoice.created", INVOICE_OLD, EventKind.IGNORED),
        (
            "checkout.session.completed",
            {"id": "cs_1", "object": "checkout.session"},
            EventKind.IGNORED,
        ),
        ("some.future.type", {}, EventKind.IGNORED),
    ],
)
def test_event_type_maps_to_kind(event_type: str, obj: dict[str, Any], kind: EventKind) -> None:
    event = normalise_stripe_event(envelope(event_type, obj))

    assert event.kind is kind
    assert event.event_type == event_type
    assert event.provider == "stripe"


def test_envelope_fields() -> None:
    event = normalise_stripe_event(envelope("charge.failed", DECLINED_CHARGE, livemode=True))

    assert event.event_id == "evt_1"
    assert event.occurred_at == datetime(2025, 4, 23, 18, 46, 2, tzinfo=UTC)
    assert event.api_version == "2025-03-31.basil"
    assert event.livemode is True
    assert event.previous_attributes == {}


def test_ignored_type_carries_no_facts_and_does_not_read_the_object() -> None:
    event = normalise_stripe_event(envelope("invoice.created", {"amount_due": "not checked"}))

    assert event.kind is EventKind.IGNORED
    assert (event.invoice, event.decline, event.customer_id) == (None, None, None)


# --- invoices ----------------------------------------------------------------------------------


def test_invoice_payment_failed_old_shape() -> None:
    event = normalise_stripe_event(envelope("invoice.payment_failed", INVOICE_OLD))

    assert event.invoice == InvoiceFacts(
        id="in_old",
        customer_id="cus_1",
        subscription_id="sub_old",
        status="open",
        amount_due=2500,
        amount_paid=0,
        currency="eur",
        attempt_count=2,
        next_payment_attempt=datetime(2025, 4, 25, 3, 46, 23, tzinfo=UTC),
        hosted_invoice_url="https://invoice.stripe.com/i/x",
        number="ABC-0002",
        billing_reason="subscription_cycle",
        created=datetime(2025, 4, 23, 18, 46, 2, tzinfo=UTC),
        customer_email="ada@example.com",
        customer_name="Ada",
        payment_intent_id="pi_old",
        charge_id="ch_old",
    )
    assert event.customer_id == "cus_1"
    assert event.decline == Decline(payment_intent_id="pi_old", charge_id="ch_old")
    assert event.decline.is_empty


def test_invoice_payment_failed_basil_shape() -> None:
    event = normalise_stripe_event(envelope("invoice.payment_failed", INVOICE_BASIL))

    assert event.invoice is not None
    assert event.invoice.subscription_id == "sub_basil"
    assert event.invoice.payment_intent_id is None
    assert event.invoice.charge_id is None
    assert event.decline == Decline()
    assert event.invoice.next_payment_attempt is not None
    assert event.invoice.next_payment_attempt.tzinfo is UTC


@pytest.mark.parametrize(
    "line",
    [
        {"id": "il_1", "subscription": "sub_line"},
        {
            "id": "il_1",
            "parent": {
                "type": "subscription_item_details",
                "subscription_item_details": {
                    "subscription": "sub_line",
                    "subscription_item": "si",
                },
            },
        },
        {
            "id": "il_1",
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": "ii_1", "subscription": "sub_line"},
            },
        },
    ],
    ids=["line.subscription", "line.parent.subscription_item_details", "invoice_item_details"],
)
def test_invoice_subscription_from_lines_as_last_resort(line: dict[str, Any]) -> None:
    invoice = {
        **INVOICE_BASIL,
        "parent": None,
        "lines": {"object": "list", "data": [{"id": "il_0"}, line]},
    }

    parsed = parse_stripe_object(invoice)

    assert isinstance(parsed, InvoiceFacts)
    assert parsed.subscription_id == "sub_line"


def test_invoice_parent_type_is_honoured() -> None:
    # Stripe's own example: a quote invoice whose subscription_details holds a placeholder.
    invoice = {
        **INVOICE_BASIL,
        "parent": {
            "type": "quote_details",
            "quote_details": {"quote": "qt_1"},
            "subscription_details": {"subscription": "subscription"},
        },
    }

    parsed = parse_stripe_object(invoice)

    assert isinstance(parsed, InvoiceFacts)
    assert parsed.subscription_id is None


def test_invoice_with_expanded_payment_intent_and_charge_carries_the_decline() -> None:
    invoice = {
        **INVOICE_OLD,
        "payment_intent": copy.deepcopy(FAILED_PI),
        "charge": copy.deepcopy(DECLINED_CHARGE),
        "customer": {"id": "cus_1", "object": "customer"},
        "subscription": {"id": "sub_old", "object": "subscription"},
    }

    event = normalise_stripe_event(envelope("invoice.payment_failed", invoice))

    assert event.invoice is not None
    assert (event.invoice.payment_intent_id, event.invoice.charge_id) == ("pi_1", "ch_1")
    assert (event.invoice.customer_id, event.invoice.subscription_id) == ("cus_1", "sub_old")
    decline = event.decline
    assert decline is not None
    assert not decline.is_empty
    # last_payment_error first, the charge's outcome fills what it lacks.
    assert (decline.code, decline.decline_code) == ("card_declined", "insufficient_funds")
    assert decline.advice_code == "try_again_later"
    assert (decline.outcome_type, decline.network_advice_code) == ("issuer_declined", "03")
    assert decline.reason == "insufficient_funds"


# --- declines ----------------------------------------------------------------------------------


def test_decline_from_charge_reads_failure_code_outcome_and_card() -> None:
    decline = decline_from_charge(DECLINED_CHARGE)

    assert decline == Decline(
        code="card_declined",
        advice_code="confirm_card_data",
        network_decline_code="54",
        network_advice_code="03",
        outcome_type="issuer_declined",
        outcome_reason="expired_card",
        network_status="declined_by_network",
        charge_id="ch_1",
        payment_intent_id="pi_1",
        card=Card("pm_1", brand="visa", last4="4242", exp_month=6, exp_year=2021),
    )
    assert "Your card was declined" not in repr(decline)  # failure_message is never kept
    assert "The bank returned" not in repr(decline)  # nor outcome.seller_message


def test_blocked_charge_keeps_stripe_block_reason() -> None:
    charge = {
        **DECLINED_CHARGE,
        "failure_code": "card_declined",
        "outcome": {
            "type": "blocked",
            "reason": "previously_declined_do_not_retry",
            "network_status": "not_sent_to_network",
        },
    }

    decline = decline_from_charge(charge)

    assert (decline.outcome_type, decline.network_status) == ("blocked", "not_sent_to_network")
    assert decline.outcome_reason == "previously_declined_do_not_retry"


def test_approved_charge_is_not_a_decline() -> None:
    charge = {**DECLINED_CHARGE, "failure_code": None, "outcome": {"type": "authorized"}}

    decline = decline_from_charge(charge)

    assert decline.is_empty
    assert decline.outcome_type is None
    assert decline.charge_id == "ch_1"


def test_legacy_charge_takes_the_card_from_source() -> None:
    charge = {
        "id": "ch_legacy",
        "object": "charge",
        "failure_code": "expired_card",
        "source": {**LEGACY_CARD, "brand": "MasterCard"},
    }

    decline = decline_from_charge(charge)

    assert decline.card == Card("card_1", "mastercard", "0005", 1, 2027, "fp_amex")


def test_decline_from_payment_intent_prefers_last_payment_error() -> None:
    pi = {**FAILED_PI, "latest_charge": copy.deepcopy(DECLINED_CHARGE)}

    decline = decline_from_payment_intent(pi)

    assert decline.code == "card_declined"
    assert decline.decline_code == "insufficient_funds"
    assert decline.advice_code == "try_again_later"  # error's, not the outcome's confirm_card_data
    assert decline.outcome_reason == "expired_card"  # only the charge knows the outcome
    assert (decline.payment_intent_id, decline.charge_id) == ("pi_1", "ch_1")
    assert decline.card == Card("pm_1", "mastercard", "4444", 9, 2031, "fp_mc")


def test_decline_from_payment_intent_with_ids_only() -> None:
    pi = {
        "id": "pi_2",
        "object": "payment_intent",
        "latest_charge": "ch_2",
        "payment_method": "pm_2",
    }

    assert decline_from_payment_intent(pi) == Decline(
        charge_id="ch_2", payment_intent_id="pi_2", card=Card("pm_2")
    )


def test_decline_from_payment_intent_reads_the_pre_2022_charges_list() -> None:
    pi = {
        "id": "pi_3",
        "object": "payment_intent",
        "charges": {"object": "list", "data": [copy.deepcopy(DECLINED_CHARGE)]},
    }

    decline = decline_from_payment_intent(pi)

    assert (decline.code, decline.outcome_type, decline.charge_id) == (
        "card_declined",
        "issuer_declined",
        "ch_1",
    )


def test_decline_from_card_error() -> None:
    error = {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "do_not_honor",
        "advice_code": "do_not_try_again",
        "network_decline_code": "05",
        "network_advice_code": "21",
        "message": "Your card was declined.",
        "charge": "ch_9",
        "payment_intent": {"id": "pi_9", "object": "payment_intent", "latest_charge": "ch_9"},
        "payment_method": copy.deepcopy(PAYMENT_METHOD),
        "doc_url": "https://docs.stripe.com/error-codes/card-declined",
    }

    assert decline_from_card_error(error) == Decline(
        code="card_declined",
        decline_code="do_not_honor",
        advice_code="do_not_try_again",
        network_decline_code="05",
        network_advice_code="21",
        charge_id="ch_9",
        payment_intent_id="pi_9",
        card=Card("pm_1", "mastercard", "4444", 9, 2031, "fp_mc"),
    )


def test_invoice_payment_object_yields_its_payment_ids_or_expanded_decline() -> None:
    ids_only = {"id": "inpay_1", "object": "invoice_payment", "payment": {"payment_intent": "pi_7"}}
    expanded = {
        "id": "inpay_2",
        "object": "invoice_payment",
        "payment": {"type": "payment_intent", "payment_intent": copy.deepcopy(FAILED_PI)},
    }

    assert parse_stripe_object(ids_only) == Decline(payment_intent_id="pi_7")
    parsed = parse_stripe_object(expanded)
    assert isinstance(parsed, Decline)
    assert (parsed.decline_code, parsed.payment_intent_id) == ("insufficient_funds", "pi_1")


def test_merge_declines_first_non_empty_value_wins() -> None:
    first = Decline(code="card_declined", charge_id="ch_1", card=Card("pm_1"))
    second = Decline(
        code="expired_card",
        decline_code="expired_card",
        outcome_type="issuer_declined",
        charge_id="ch_2",
        card=Card("pm_1", brand="visa", last4="4242"),
    )

    merged = merge_declines(None, first, second)

    assert merged == Decline(
        code="card_declined",
        decline_code="expired_card",
        outcome_type="issuer_declined",
        charge_id="ch_1",
        card=Card("pm_1", brand="visa", last4="4242"),
    )
    assert merge_declines() == Decline()
    assert merge_declines(None) == Decline()


def test_merge_declines_never_mixes_two_payment_methods() -> None:
    merged = merge_declines(
        Decline(card=Card("pm_a", last4="1111")),
        Decline(card=Card("pm_b", brand="visa", last4="2222", exp_year=2030)),
    )

    assert merged.card == Card("pm_a", last4="1111")


# --- subscriptions, customers, cards -----------------------------------------------------------


def test_subscription_new_shape() -> None:
    subscription = {
        **SUBSCRIPTION,
        "canceled_at": 1_700_000_000,
        "cancellation_details": {"reason": "payment_failed", "comment": None},
    }

    event = normalise_stripe_event(envelope("customer.subscription.updated", subscription))

    facts = event.subscription
    assert facts is not None
    assert (facts.id, facts.customer_id, facts.status) == ("sub_1", "cus_1", "past_due")
    assert event.customer_id == "cus_1"
    assert facts.current_period_end == datetime.fromtimestamp(1_760_000_000, UTC)  # max of items
    assert facts.cancellation_reason == "payment_failed"
    assert facts.canceled_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert facts.default_payment_method_id == "pm_default"
    first, second = facts.items
    assert (first.price_id, first.product_id, first.unit_amount) == ("price_1", "prod_1", 1500)
    assert (first.quantity, first.interval, first.interval_count) == (3, "year", 1)
    assert (second.product_id, second.unit_amount, second.quantity) == ("prod_2", None, 1)
    assert (second.interval, second.interval_count) == ("month", 3)


def test_subscription_item_quantity_zero_is_kept() -> None:
    item = {"id": "si_0", "quantity": 0, "price": {"id": "price_0", "unit_amount": 100}}
    subscription = {**SUBSCRIPTION, "currency": None, "items": {"object": "list", "data": [item]}}

    facts = parse_stripe_object(subscription)

    assert isinstance(facts, SubscriptionFacts)
    assert facts.currency is None  # neither the subscription nor its price says
    assert facts.items[0].quantity == 0
    assert facts.items[0].interval_count == 1  # a price without `recurring` (one-off)


def test_subscription_legacy_plan_shape() -> None:
    subscription = {
        "id": "sub_old",
        "object": "subscription",
        "customer": {"id": "cus_1", "object": "customer"},
        "status": "active",
        "cancel_at_period_end": True,
        "current_period_end": 1_488_987_924,
        "default_source": "card_1",
        "quantity": 2,
        "plan": {
            "id": "gold",
            "object": "plan",
            "amount": 2000,
            "currency": "USD",
            "interval": "month",
            "interval_count": 1,
            "product": "prod_1",
        },
    }

    facts = parse_stripe_object(subscription)

    assert isinstance(facts, SubscriptionFacts)
    assert facts.currency == "usd"  # from the plan: old subscriptions have none
    assert facts.customer_id == "cus_1"
    assert facts.cancel_at_period_end is True
    assert facts.current_period_end == datetime(2017, 3, 8, 15, 45, 24, tzinfo=UTC)
    assert facts.default_payment_method_id == "card_1"
    (item,) = facts.items
    assert (item.price_id, item.unit_amount, item.quantity, item.interval) == (
        "gold",
        2000,
        2,
        "month",
    )


def test_customer_facts() -> None:
    assert parse_stripe_object(CUSTOMER) == CustomerFacts(
        id="cus_1",
        email="ada@example.com",
        name="Ada Lovelace",
        default_payment_method_id="pm_new",
        locale="fr-FR,en",  # preferred_locales, in order
        timezone="Europe/Paris",
    )
    legacy = {
        "id": "cus_2",
        "object": "customer",
        "default_source": {**LEGACY_CARD, "id": "card_2"},
        "preferred_locales": [],
        "metadata": {},
    }
    assert parse_stripe_object(legacy) == CustomerFacts("cus_2", None, None, "card_2", None, None)


@pytest.mark.parametrize(
    "previous",
    [
        {"invoice_settings": {"default_payment_method": "pm_old"}},
        {"invoice_settings": {"default_payment_method": None}},
        {"default_source": "card_old"},
    ],
)
def test_customer_updated_with_default_payment_method_change(previous: dict[str, Any]) -> None:
    event = normalise_stripe_event(envelope("customer.updated", CUSTOMER, previous))

    assert event.kind is EventKind.DEFAULT_PAYMENT_METHOD_CHANGED
    assert event.customer is not None
    assert event.customer.default_payment_method_id == "pm_new"
    assert event.customer_id == "cus_1"
    assert event.previous_attributes == previous


@pytest.mark.parametrize(
    "previous",
    [
        {"email": "old@example.com"},
        {"invoice_settings": {"footer": "old footer"}},
        {"invoice_settings": {"default_payment_method": "pm_new"}},  # same value: no change
        {"default_source": None},  # same value: no change
        {},
    ],
)
def test_customer_updated_without_default_payment_method_change(previous: dict[str, Any]) -> None:
    event = normalise_stripe_event(envelope("customer.updated", CUSTOMER, previous))

    assert event.kind is EventKind.CUSTOMER_UPDATED  # kept: name, email, locale, timezone
    assert event.customer is not None
    assert event.customer_id == "cus_1"


def test_payment_method_event_fills_card_and_customer() -> None:
    pm = {**PAYMENT_METHOD, "card": {**PAYMENT_METHOD["card"], "brand": "MasterCard"}}

    event = normalise_stripe_event(envelope("payment_method.automatically_updated", pm))

    assert event.card == Card("pm_1", "mastercard", "4444", 9, 2031, "fp_mc")
    assert event.customer_id == "cus_1"


def test_card_expiring_with_legacy_card_and_source() -> None:
    card_event = normalise_stripe_event(envelope("customer.source.expiring", LEGACY_CARD))
    source = {
        "id": "src_1",
        "object": "source",
        "type": "card",
        "customer": "cus_2",
        "card": {"brand": "Diners Club", "last4": "0004", "exp_month": 12, "exp_year": 2026},
    }
    source_event = normalise_stripe_event(envelope("customer.source.expiring", source))

    assert card_event.kind is EventKind.CARD_EXPIRING
    assert card_event.card == Card("card_1", "amex", "0005", 1, 2027, "fp_amex")
    assert card_event.customer_id == "cus_1"
    assert source_event.card == Card("src_1", "diners", "0004", 12, 2026)
    assert source_event.customer_id == "cus_2"


def test_charge_failed_event() -> None:
    event = normalise_stripe_event(envelope("charge.failed", DECLINED_CHARGE))

    assert event.decline == decline_from_charge(DECLINED_CHARGE)
    assert event.related_invoice_id == "in_old"
    assert event.customer_id == "cus_1"


def test_payment_intent_failed_event() -> None:
    basil_pi = {k: v for k, v in FAILED_PI.items() if k != "invoice"}

    old = normalise_stripe_event(envelope("payment_intent.payment_failed", FAILED_PI))
    basil = normalise_stripe_event(envelope("payment_intent.payment_failed", basil_pi))

    assert old.decline == decline_from_payment_intent(FAILED_PI)
    assert old.related_invoice_id == "in_old"
    assert basil.related_invoice_id is None
    assert basil.customer_id == "cus_1"


def test_parse_stripe_object_returns_none_for_other_types_and_tombstones() -> None:
    assert parse_stripe_object({"id": "price_1", "object": "price"}) is None
    assert parse_stripe_object({"id": "in_1", "object": "invoice", "deleted": True}) is None
    assert parse_stripe_object({"id": "x"}) is None


# --- malformed input ---------------------------------------------------------------------------


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "event: expected an object, got array"),
        ("evt", "event: expected an object, got string"),
        (None, "event: expected an object, got null"),
        ({}, "event.id: required, missing"),
        (_without(envelope("x.y", {}), "type"), "event.type: required, missing"),
        (_without(envelope("invoice.paid", INVOICE_OLD), "id"), "event.id: required, missing"),
        ({**envelope("x.y", {}), "id": ""}, "event.id: required, missing"),
        ({**envelope("x.y", {}), "type": 7}, "event.type: expected a string, got number"),
        (_without(envelope("x.y", {}), "created"), "event.created: required, missing"),
        ({**envelope("x.y", {}), "created": "2025-01-01"}, "event.created: expected an integer"),
        (
            {**envelope("x.y", {}), "created": True},
            "event.created: expected an integer, got boolean",
        ),
        ({**envelope("x.y", {}), "created": 1.5}, "event.created: expected an integer, got number"),
        ({**envelope("x.y", {}), "created": 10**15}, "event.created: timestamp out of range"),
        ({**envelope("x.y", {}), "created": 10**20}, "event.created: 21-digit integer, too large"),
        ({**envelope("x.y", {}), "livemode": "yes"}, "event.livemode: expected a boolean"),
        (
            {**envelope("x.y", {}), "object": "invoice"},
            "event.object: expected event, got 'invoice'",
        ),
        (_without(envelope("x.y", {}), "data"), "event.data: required, missing"),
        ({**envelope("x.y", {}), "data": {}}, "event.data.object: required, missing"),
        ({**envelope("x.y", {}), "data": []}, "event.data: expected an object, got array"),
        (envelope("x.y", [1]), "event.data.object: expected an object, got array"),
        (envelope("x.y", {}, previous=[]), "event.data.previous_attributes: expected an object"),
        (
            envelope("invoice.payment_failed", _without(INVOICE_OLD, "customer")),
            "event.data.object.customer: required, missing",
        ),
        (
            envelope("invoice.payment_failed", _without(INVOICE_OLD, "id")),
            "event.data.object.id: required, missing",
        ),
        (
            envelope("invoice.payment_failed", _without(INVOICE_OLD, "amount_due")),
            "event.data.object.amount_due: required, missing",
        ),
        (
            envelope("invoice.payment_failed", _without(INVOICE_OLD, "currency")),
            "event.data.object.currency: required, missing",
        ),
        (
            envelope("invoice.payment_failed", {**INVOICE_OLD, "amount_due": "2500"}),
            "event.data.object.amount_due: expected an integer, got string",
        ),
        (
            envelope("invoice.payment_failed", {**INVOICE_OLD, "customer": 42}),
            "event.data.object.customer: expected an id or an object, got number",
        ),
        (
            envelope("invoice.payment_failed", {**INVOICE_OLD, "payment_intent": {"object": "pi"}}),
            "event.data.object.payment_intent.id: required, missing",
        ),
        (
            envelope(
                "invoice.paid", {**INVOICE_BASIL, "parent": None, "lines": {"data": {"x": 1}}}
            ),
            "event.data.object.lines.data: expected an array, got object",
        ),
        (
            envelope(
                "invoice.paid", {**INVOICE_BASIL, "parent": None, "lines": {"data": ["il_1"]}}
            ),
            "event.data.object.lines.data[0]: expected an object, got string",
        ),
        (
            envelope("invoice.payment_failed", DECLINED_CHARGE),
            "event.data.object.object: expected invoice, got 'charge'",
        ),
        (
            envelope("charge.failed", {**DECLINED_CHARGE, "outcome": "blocked"}),
            "event.data.object.outcome: expected an object, got string",
        ),
        (
            envelope("customer.subscription.updated", _without(SUBSCRIPTION, "status")),
            "event.data.object.status: required, missing",
        ),
        (
            envelope("customer.updated", {**CUSTOMER, "preferred_locales": "fr"}),
            "event.data.object.preferred_locales: expected an array of strings",
        ),
        (
            envelope("payment_method.updated", {**PAYMENT_METHOD, "card": {"exp_year": "2030"}}),
            "event.data.object.card.exp_year: expected an integer, got string",
        ),
    ],
)
def test_malformed_event_raises_event_parse_error(payload: Any, message: str) -> None:
    with pytest.raises(EventParseError) as raised:
        normalise_stripe_event(payload)

    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("call", "arg", "message"),
    [
        (parse_stripe_object, [], "object: expected an object, got array"),
        (parse_stripe_object, {"object": "invoice", "id": "in_1"}, "invoice.customer: required"),
        (decline_from_charge, {"object": "charge"}, "charge.id: required, missing"),
        (
            parse_stripe_object,
            {"object": "card", "id": b"card_1"},
            "card.id: expected a string, got bytes",
        ),
        (decline_from_payment_intent, "pi_1", "payment_intent: expected an object, got string"),
        (decline_from_card_error, {"code": ["x"]}, "error.code: expected a string, got array"),
    ],
)
def test_malformed_object_raises_event_parse_error(call: Any, arg: Any, message: str) -> None:
    with pytest.raises(EventParseError, match="^" + message.replace(".", r"\.")):
        call(arg)


# --- property: nothing but EventParseError escapes ---------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)

# The field names the parser reads, so generated objects reach past the first check.
FIELD_NAMES = [
    "id", "object", "type", "created", "data", "customer", "subscription", "parent",
    "subscription_details", "subscription_item_details", "invoice_item_details", "lines",
    "amount_due", "amount_paid", "currency", "attempt_count", "next_payment_attempt", "status",
    "payment_intent", "charge", "latest_charge", "charges", "last_payment_error", "outcome",
    "payment_method", "payment_method_details", "card", "source", "brand", "last4", "exp_month",
    "exp_year", "items", "price", "plan", "recurring", "interval", "quantity", "unit_amount",
    "amount", "current_period_end", "cancellation_details", "reason", "invoice_settings",
    "default_payment_method", "default_source", "preferred_locales", "metadata", "timezone",
    "code", "decline_code", "advice_code", "payment", "deleted", "invoice", "product",
]  # fmt: skip
OBJECT_TYPES = [
    "invoice", "subscription", "customer", "payment_method", "card", "source", "charge",
    "payment_intent", "invoice_payment", "list",
]  # fmt: skip
STRIPE_LEAVES = (
    JSON_LEAVES
    | st.sampled_from(OBJECT_TYPES)
    | st.sampled_from(["cus_1", "sub_1", "pi_1", "ch_1", "pm_1", "usd", "subscription_details"])
    | st.integers(min_value=0, max_value=2_000_000_000)
)
STRIPE_LIKE = st.recursive(
    STRIPE_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=8)
    ),
    max_leaves=40,
)
EVENT_TYPES = st.sampled_from(
    [
        "invoice.payment_failed",
        "invoice.paid",
        "customer.subscription.updated",
        "payment_method.updated",
        "customer.updated",
        "customer.source.expiring",
        "charge.failed",
        "payment_intent.payment_failed",
        "unknown.type",
    ]
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep .hypothesis/ out of the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(ANY_JSON)
def test_arbitrary_json_only_raises_event_parse_error(payload: Any) -> None:
    for call in (
        normalise_stripe_event,
        parse_stripe_object,
        decline_from_charge,
        decline_from_payment_intent,
        decline_from_card_error,
    ):
        with contextlib.suppress(EventParseError):
            call(payload)


@FUZZ
@given(EVENT_TYPES, STRIPE_LIKE, STRIPE_LIKE)
def test_stripe_like_events_only_raise_event_parse_error(
    event_type: str, obj: Any, previous: Any
) -> None:
    try:
        event = normalise_stripe_event(envelope(event_type, obj, previous))
    except EventParseError:
        return
    assert event.event_type == event_type


@FUZZ
@given(STRIPE_LIKE)
def test_stripe_like_objects_only_raise_event_parse_error(obj: Any) -> None:
    for call in (parse_stripe_object, decline_from_payment_intent, decline_from_card_error):
        with contextlib.suppress(EventParseError):
            call(obj)


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*path, i))] or [path]
    return [path]


VALID_EVENTS = [
    envelope("invoice.payment_failed", {**INVOICE_OLD, "payment_intent": FAILED_PI}),
    envelope("invoice.payment_failed", INVOICE_BASIL),
    envelope("customer.subscription.updated", SUBSCRIPTION),
    envelope("customer.updated", CUSTOMER, {"invoice_settings": {"default_payment_method": "x"}}),
    envelope("charge.failed", DECLINED_CHARGE),
    envelope("payment_intent.payment_failed", {**FAILED_PI, "latest_charge": DECLINED_CHARGE}),
]


@FUZZ
@given(st.sampled_from(VALID_EVENTS), st.data())
def test_one_bad_field_in_a_valid_event_only_raises_event_parse_error(
    valid: dict[str, Any], data: st.DataObject
) -> None:
    payload = copy.deepcopy(valid)
    path = data.draw(st.sampled_from(_leaf_paths(payload)))
    target: Any = payload
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(ANY_JSON)

    try:
        normalise_stripe_event(payload)
    except EventParseError as error:
        assert str(error).startswith("event")
