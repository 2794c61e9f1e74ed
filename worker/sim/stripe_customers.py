"""Builders for Stripe customers, cards and payment methods (the simulated Stripe peer).

Stateless; each returns a plain dict in the superset shape that `worker.sim.stripe_wire.view`
renders per API shape.
"""

from __future__ import annotations

import secrets
from typing import Any


def _address() -> dict[str, None]:
    return dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state"))


def customer(
    *,
    cus_id: str,
    email: str,
    name: str,
    created: int,
    pm_id: str,
    tz: str | None,
    locale: str | None,
) -> dict[str, Any]:
    return {
        "id": cus_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": email,
        "invoice_prefix": "".join(secrets.choice("0123456789ABCDEF") for _ in range(8)),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": pm_id,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {"timezone": tz} if tz else {},
        "name": name,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [locale] if locale else [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def card_details(
    *,
    brand: str,
    last4: str,
    exp_month: int,
    exp_year: int,
    fingerprint: str,
    funding: str,
    country: str,
) -> dict[str, Any]:
    return {
        "brand": brand,
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "pass",
        },
        "country": country,
        "display_brand": brand,
        "exp_month": exp_month,
        "exp_year": exp_year,
        "fingerprint": fingerprint,
        "funding": funding,
        "generated_from": None,
        "last4": last4,
        "networks": {"available": [brand], "preferred": None},
        "regulated_status": "unregulated",
        "three_d_secure_usage": {"supported": True},
        "wallet": None,
    }


def payment_method(
    *, pm_id: str, customer_id: str, created: int, email: str, name: str, card: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": _address(),
            "email": email,
            "name": name,
            "phone": None,
            "tax_id": None,
        },
        "card": card,
        "created": created,
        "customer": customer_id,
        "livemode": False,
        "metadata": {},
        "type": "card",
    }
