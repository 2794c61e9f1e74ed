"""Every JSON file under shared/fixtures/stripe/ goes through worker.billing.normalise.

The fixtures are real Stripe-shaped data from public sources in both API shapes (see the
README there). Each source has its own test; ``test_every_fixture_file_is_exercised`` fails when
a new file lands that no test reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.support.paths import SHARED, require_shared
from worker.billing.domain import (
    Card,
    CustomerFacts,
    Decline,
    EventKind,
    InvoiceFacts,
    SubscriptionFacts,
)
from worker.billing.normalise import normalise_stripe_event, parse_stripe_object

FIXTURES = SHARED / "fixtures" / "stripe"


@pytest.fixture(autouse=True)
def _fixtures_present() -> None:
    require_shared(FIXTURES)


def _files(folder: str) -> list[Path]:
    return sorted((FIXTURES / folder).glob("*.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_fixture", "object": "event", "type": event_type, "created": 1, "data": data}


DJ_STRIPE = _files("dj-stripe")
PAY_RAILS = _files("pay-rails")
LOCALSTRIPE = _files("localstripe-generated")
CLI_TRIGGERS = _files("stripe-cli-triggers")
OPENAPI = FIXTURES / "stripe-openapi" / "fixtures3.json"
OPENAPI_RESOURCES: dict[str, Any] = _load(OPENAPI)["resources"] if OPENAPI.is_file() else {}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_every_fixture_file_is_exercised() -> None:
    covered = {*DJ_STRIPE, *PAY_RAILS, *LOCALSTRIPE, *CLI_TRIGGERS, OPENAPI}

    assert set(FIXTURES.rglob("*.json")) == covered
    assert len(OPENAPI_RESOURCES) == 176


# --- dj-stripe: pre-2025 objects ---------------------------------------------------------------


@pytest.mark.parametrize("path", DJ_STRIPE, ids=_ids(DJ_STRIPE))
def test_dj_stripe_object(path: Path) -> None:
    obj = _load(path)

    parsed = parse_stripe_object(obj)

    match obj["object"]:
        case "invoice":
            assert isinstance(parsed, InvoiceFacts)
            assert parsed.subscription_id is not None
            assert parsed.subscription_id.startswith("sub_")
            assert parsed.payment_intent_id is not None
            assert parsed.payment_intent_id.startswith("pi_")
            assert parsed.charge_id is not None
            assert parsed.charge_id.startswith("ch_")
            assert (parsed.customer_id, parsed.currency, parsed.status) == (
                "cus_6lsBvm5rJ0zyHc",
                "usd",
                "paid",
            )
        case "charge" | "payment_intent":
            # A succeeded payment: ids and card, but no decline signal.
            assert isinstance(parsed, Decline)
            assert parsed.is_empty
            assert (parsed.charge_id, parsed.payment_intent_id) == (
                "ch_fakefakefakefakefake0001",
                "pi_fakefakefakefakefake0001",
            )
            assert parsed.card is not None
            assert (parsed.card.brand, parsed.card.last4) == ("visa", "4242")
        case "payment_method" | "card":
            assert isinstance(parsed, Card)
            assert parsed.payment_method_id == obj["id"]
            assert (parsed.brand, parsed.last4, parsed.exp_month, parsed.exp_year) == (
                "visa",  # the legacy card says "Visa"
                "4242",
                6,
                2021,
            )
            assert parsed.fingerprint == "88PuXw9tEmvYe69o"
        case "subscription":
            assert isinstance(parsed, SubscriptionFacts)
            assert parsed.status == "active"
            assert parsed.currency == "usd"  # taken from the plan: these have no currency
            assert parsed.items
            assert all(i.interval == "month" and i.unit_amount for i in parsed.items)
            assert parsed.current_period_end is not None
            assert parsed.current_period_end.tzinfo is UTC
        case "customer":
            assert isinstance(parsed, CustomerFacts)
            assert parsed.email is not None
            assert parsed.default_payment_method_id == obj["default_source"]["id"]
        case "plan" | "price" | "product" | "line_item":
            assert parsed is None
        case other:
            pytest.fail(f"{path.name}: no expectation for object type {other!r}")


# --- pay-rails: webhook data sections ----------------------------------------------------------

PAY_RAILS_KINDS = {
    "charge.succeeded": EventKind.IGNORED,
    "charge.updated": EventKind.IGNORED,
    "customer.deleted": EventKind.IGNORED,
    "customer.updated": EventKind.DEFAULT_PAYMENT_METHOD_CHANGED,
    "invoice.payment_action_required": EventKind.ACTION_REQUIRED,
    "invoice.payment_failed": EventKind.PAYMENT_FAILED,
    "invoice.updated": EventKind.IGNORED,  # holds an invoice_payment, not an invoice
    "payment_method.attached": EventKind.PAYMENT_METHOD_UPDATED,
    "payment_method.updated": EventKind.PAYMENT_METHOD_UPDATED,
    "customer.subscription.created": EventKind.SUBSCRIPTION_UPDATED,
    "customer.subscription.updated": EventKind.SUBSCRIPTION_UPDATED,
    "customer.subscription.deleted": EventKind.SUBSCRIPTION_DELETED,
}
PAY_RAILS_SECTIONS = [p for p in PAY_RAILS if p.name != "invoice.json"]


def _pay_rails_type(path: Path) -> str:
    return f"customer.{path.stem}" if path.stem.startswith("subscription.") else path.stem


@pytest.mark.parametrize("path", PAY_RAILS_SECTIONS, ids=_ids(PAY_RAILS_SECTIONS))
def test_pay_rails_data_section(path: Path) -> None:
    event_type = _pay_rails_type(path)

    event = normalise_stripe_event(_envelope(event_type, _load(path)))

    assert event.kind is PAY_RAILS_KINDS[event_type]
    if event.kind is not EventKind.IGNORED:
        assert event.customer_id is not None


def test_pay_rails_invoice_payment_failed_is_basil_shaped() -> None:
    data = _load(FIXTURES / "pay-rails" / "invoice.payment_failed.json")

    event = normalise_stripe_event(_envelope("invoice.payment_failed", data))

    invoice = event.invoice
    assert invoice is not None
    assert invoice.subscription_id == "sub_1234"  # from parent.subscription_details
    assert (invoice.payment_intent_id, invoice.charge_id) == (None, None)
    assert (invoice.attempt_count, invoice.amount_due, invoice.currency) == (1, 24900, "usd")
    assert invoice.next_payment_attempt == datetime(2025, 4, 25, 3, 46, 23, tzinfo=UTC)
    assert event.decline == Decline()  # the worker must fetch /v1/invoice_payments


def test_pay_rails_invoice_payment_action_required_names_its_payment_intent() -> None:
    data = _load(FIXTURES / "pay-rails" / "invoice.payment_action_required.json")

    event = normalise_stripe_event(_envelope("invoice.payment_action_required", data))

    assert event.invoice is not None
    assert event.invoice.subscription_id == "sub_1234"
    assert event.decline == Decline(payment_intent_id="pi_1234")


def test_pay_rails_customer_updated_default_payment_method() -> None:
    data = _load(FIXTURES / "pay-rails" / "customer.updated.json")

    event = normalise_stripe_event(_envelope("customer.updated", data))

    assert event.kind is EventKind.DEFAULT_PAYMENT_METHOD_CHANGED
    assert event.previous_attributes == {"invoice_settings": {"default_payment_method": "pm_1000"}}
    assert event.customer is not None
    assert event.customer.id == "cus_1234"


def test_pay_rails_payment_method_updated_card() -> None:
    data = _load(FIXTURES / "pay-rails" / "payment_method.updated.json")

    event = normalise_stripe_event(_envelope("payment_method.updated", data))

    assert event.card == Card("pm_1000", "visa", "3184", 12, 2035, "qu2JxQg97yWGBVrd")


def test_pay_rails_invoice_payment_object() -> None:
    data = _load(FIXTURES / "pay-rails" / "invoice.updated.json")

    assert parse_stripe_object(data["object"]) == Decline(
        payment_intent_id="pi_3T4AIlGWAy8Dppqh3Vsl9Pya"
    )


def test_pay_rails_bare_invoice_has_both_old_ids() -> None:
    parsed = parse_stripe_object(_load(FIXTURES / "pay-rails" / "invoice.json"))

    assert isinstance(parsed, InvoiceFacts)
    assert parsed.payment_intent_id == "pi_3RFFrjKXBGcbgpbZ0mAQxeI1"
    assert parsed.charge_id == "ch_3RFFrjKXBGcbgpbZ0g57Qovb"
    assert parsed.status == "paid"


# --- stripe-openapi: Stripe's canonical example objects ----------------------------------------

OPENAPI_EXPECTED_TYPES: dict[str, type] = {
    "invoice": InvoiceFacts,
    "subscription": SubscriptionFacts,
    "customer": CustomerFacts,
    "payment_method": Card,
    "card": Card,
    "source": Card,
    "payment_intent": Decline,
    "charge": Decline,
    "invoice_payment": Decline,
}


@pytest.mark.parametrize("name", sorted(OPENAPI_RESOURCES))
def test_openapi_resource(name: str) -> None:
    obj = OPENAPI_RESOURCES[name]

    parsed = parse_stripe_object(obj)

    expected = None if obj.get("deleted") else OPENAPI_EXPECTED_TYPES.get(obj.get("object"))
    if expected is None:
        assert parsed is None
    else:
        assert isinstance(parsed, expected)


def test_openapi_invoice_is_current_shape() -> None:
    parsed = parse_stripe_object(OPENAPI_RESOURCES["invoice"])

    assert isinstance(parsed, InvoiceFacts)
    assert (parsed.payment_intent_id, parsed.charge_id) == (None, None)
    # parent.type is quote_details: the placeholder subscription_details is not read.
    assert parsed.subscription_id is None
    assert (parsed.customer_id, parsed.amount_due, parsed.currency) == (
        "cus_QXg1o8vcGmoR32",
        1000,
        "usd",
    )


def test_openapi_subscription_period_end_is_on_items() -> None:
    resource = OPENAPI_RESOURCES["subscription"]
    assert "current_period_end" not in resource

    parsed = parse_stripe_object(resource)

    assert isinstance(parsed, SubscriptionFacts)
    item_end = resource["items"]["data"][0]["current_period_end"]
    assert parsed.current_period_end == datetime.fromtimestamp(item_end, UTC)
    assert parsed.cancel_at_period_end is True
    (item,) = parsed.items
    assert (item.unit_amount, item.interval, item.interval_count) == (2000, "month", 1)


def test_openapi_cards() -> None:
    expected = ("visa", "4242", 8, 2030, "AOB934RVNwzk6xtn")
    for name in ("payment_method", "card"):
        card = parse_stripe_object(OPENAPI_RESOURCES[name])
        assert isinstance(card, Card)
        assert (card.brand, card.last4, card.exp_month, card.exp_year, card.fingerprint) == expected
    charge = parse_stripe_object(OPENAPI_RESOURCES["charge"])
    assert isinstance(charge, Decline)
    assert charge.card == Card("card_1PgaftB7WZ01zgkWm3waTcFp", *expected)


def test_openapi_event_resource_is_ignored() -> None:
    event = normalise_stripe_event(OPENAPI_RESOURCES["event"])

    assert (event.event_type, event.kind) == ("plan.created", EventKind.IGNORED)
    assert event.api_version is None


# --- localstripe: whole signed event envelopes -------------------------------------------------

LOCALSTRIPE_KINDS = {
    "customer.subscription.created": EventKind.SUBSCRIPTION_UPDATED,
    "customer.subscription.deleted": EventKind.SUBSCRIPTION_DELETED,
    "invoice.created": EventKind.IGNORED,
    "invoice.payment_failed": EventKind.PAYMENT_FAILED,
    "payment_intent.payment_failed": EventKind.PAYMENT_INTENT_FAILED,
}


@pytest.mark.parametrize("path", LOCALSTRIPE, ids=_ids(LOCALSTRIPE))
def test_localstripe_delivery_verifies_and_normalises(path: Path) -> None:
    delivery = _load(path)
    payload, header, secret = (
        delivery["payload"],
        delivery["stripe_signature_header"],
        delivery["secret"],
    )

    # stripe 16.1 skips the age check when tolerance is falsy; these were signed in 2026-11.
    assert stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload + " ", header, secret, tolerance=None)

    event = normalise_stripe_event(json.loads(payload))

    assert path.stem == f"signed_{event.event_type}"
    assert event.kind is LOCALSTRIPE_KINDS[event.event_type]
    assert event.api_version == "2017-08-15"


def test_localstripe_invoice_payment_failed_carries_the_expanded_charge() -> None:
    delivery = _load(FIXTURES / "localstripe-generated" / "signed_invoice.payment_failed.json")

    event = normalise_stripe_event(json.loads(delivery["payload"]))

    assert event.invoice is not None
    assert event.invoice.subscription_id == "sub_ZN2N4k9xDHhSXJ"
    assert event.decline is not None
    assert (event.decline.code, event.decline.charge_id, event.decline.payment_intent_id) == (
        "card_declined",
        "ch_39hpIxyrwk4t5j",
        "pi_iWevRvamfU5Vv3",
    )


def test_localstripe_payment_intent_failed_names_its_invoice() -> None:
    delivery = _load(
        FIXTURES / "localstripe-generated" / "signed_payment_intent.payment_failed.json"
    )

    event = normalise_stripe_event(json.loads(delivery["payload"]))

    assert event.related_invoice_id == "in_Ez3Hti7pIF5qbS"
    assert event.decline is not None
    assert event.decline.code == "card_declined"
    assert event.customer_id == "cus_FZLQjgRLboZpxX"


# --- stripe-cli triggers: request recipes, not payloads ----------------------------------------

FAILING_TRIGGERS = {
    "charge.failed",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "payment_intent.payment_failed",
}


@pytest.mark.parametrize("path", CLI_TRIGGERS, ids=_ids(CLI_TRIGGERS))
def test_cli_trigger_recipe(path: Path) -> None:
    recipe = _load(path)

    steps = recipe["fixtures"]
    assert steps
    assert all(step["path"].startswith("/v1/") and step["method"] for step in steps)
    error_types = {step.get("expected_error_type") for step in steps} - {None}
    # The declined attempt is a 402 card_error; decline_from_card_error reads that body.
    assert error_types == ({"card_error"} if path.stem in FAILING_TRIGGERS else set())
