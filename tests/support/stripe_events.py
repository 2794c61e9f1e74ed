"""Stripe-shaped event envelopes for tests that feed handlers directly (no peer).

Shapes follow the fixtures in shared/fixtures/stripe: ``basil`` (2025-03-31+, invoice.parent)
and ``acacia`` (older, invoice.subscription / payment_intent / charge).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


def envelope(
    event_type: str,
    obj: dict[str, Any],
    *,
    at: datetime,
    event_id: str | None = None,
    previous: dict[str, Any] | None = None,
    shape: str = "basil",
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": "2025-03-31.basil" if shape == "basil" else "2024-06-20",
        "created": int(at.timestamp()),
        "livemode": False,
        "type": event_type,
        "data": data,
        "pending_webhooks": 1,
        "request": {"id": None},
    }


def invoice(
    *,
    invoice_id: str,
    customer_id: str = "cus_test",
    subscription_id: str = "sub_test",
    amount_due: int = 4900,
    currency: str = "usd",
    status: str = "open",
    shape: str = "basil",
    payment_intent: str | dict[str, Any] | None = None,
    charge: str | None = None,
    attempt_count: int = 1,
    at: datetime,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer_id,
        "status": status,
        "amount_due": amount_due,
        "amount_paid": amount_due if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else amount_due,
        "currency": currency,
        "attempt_count": attempt_count,
        "attempted": True,
        "next_payment_attempt": None,
        "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
        "number": f"INV-{invoice_id[-4:]}",
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": int(at.timestamp()),
        "customer_email": "jane.doe@example.com",
        "customer_name": "Jane Doe",
    }
    if shape == "basil":
        obj["parent"] = {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription_id},
        }
    else:
        obj.update(
            subscription=subscription_id,
            payment_intent=payment_intent,
            charge=charge,
            paid=status == "paid",
        )
    return obj


def payment_intent(
    *,
    pi_id: str,
    charge_id: str,
    decline_code: str | None = "insufficient_funds",
    code: str = "card_declined",
    advice_code: str | None = None,
    network_advice_code: str | None = None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": pi_id,
        "object": "payment_intent",
        "status": "requires_payment_method",
        "latest_charge": charge_id,
        "last_payment_error": {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "advice_code": advice_code,
            "network_advice_code": network_advice_code,
            "network_decline_code": None,
            "charge": charge_id,
            "payment_method": card,
            "message": "Your card was declined.",
        },
    }


def subscription(
    *,
    sub_id: str = "sub_test",
    customer_id: str = "cus_test",
    unit_amount: int = 4900,
    currency: str = "usd",
    interval: str = "month",
    status: str = "active",
    cancellation_reason: str | None = None,
    quantity: int = 1,
    price_id: str = "price_1",
    start: datetime | None = None,
    at: datetime,
) -> dict[str, Any]:
    ts = int(at.timestamp())
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer_id,
        "start_date": int((start or at).timestamp()),
        "status": status,
        "currency": currency,
        "cancel_at_period_end": False,
        "canceled_at": ts if status == "canceled" else None,
        "ended_at": ts if status == "canceled" else None,
        "cancellation_details": {"reason": cancellation_reason},
        "default_payment_method": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "quantity": quantity,
                    "current_period_end": ts + 30 * 86400,
                    "price": {
                        "id": price_id,
                        "object": "price",
                        "unit_amount": unit_amount,
                        "currency": currency,
                        "product": "prod_1",
                        "recurring": {"interval": interval, "interval_count": 1},
                    },
                }
            ],
        },
    }


def customer_updated(
    default_pm: str, *, was: str | None = None, customer_id: str = "cus_test", at: datetime
) -> dict[str, Any]:
    """``customer.updated``; with ``was``, a change of default payment method from it."""
    customer = {
        "id": customer_id,
        "object": "customer",
        "email": "jane.doe@example.com",
        "invoice_settings": {"default_payment_method": default_pm},
    }
    previous = None if was is None else {"invoice_settings": {"default_payment_method": was}}
    return envelope("customer.updated", customer, previous=previous, at=at)


def payment_method(
    *,
    pm_id: str = "pm_new",
    customer_id: str = "cus_test",
    brand: str = "visa",
    last4: str = "4242",
) -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "customer": customer_id,
        "type": "card",
        "card": {
            "brand": brand,
            "last4": last4,
            "exp_month": 12,
            "exp_year": 2031,
            "fingerprint": f"fp_{pm_id}",
            "funding": "credit",
        },
    }
