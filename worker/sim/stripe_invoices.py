"""Builders for Stripe invoices (with their line), payment intents, invoice payments and charges.

Stateless; each returns a plain dict in the superset shape that `worker.sim.stripe_wire.view`
renders per API shape. `charge_outcome` maps a scripted decline (or success) to charge.outcome.
"""

from __future__ import annotations

import secrets
from typing import Any

from worker.sim.stripe_wire import new_id


def invoice(
    *,
    inv_id: str,
    line_id: str,
    sub: dict[str, Any],
    cust: dict[str, Any],
    created: int,
    period: tuple[int, int],
    line_period: tuple[int, int],
    billing_reason: str,
) -> dict[str, Any]:
    item = sub["items"]["data"][0]
    amount = item["price"]["unit_amount"] * item["quantity"]
    currency = item["price"]["currency"]
    return {
        "id": inv_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Dunning Simulator",
        "account_tax_ids": None,
        "amount_due": amount,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": amount,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": billing_reason,
        "charge": None,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": cust["id"],
        "customer_address": None,
        "customer_email": cust["email"],
        "customer_name": cust["name"],
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": [_line(line_id, inv_id, sub, line_period)],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "paid": False,
        "paid_out_of_band": False,
        "parent": {
            "quote_details": None,
            "type": "subscription_details",
            "subscription_details": {"metadata": {}, "subscription": sub["id"]},
        },
        "payment_intent": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": period[1],
        "period_start": period[0],
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": sub["id"],
        "subscription_details": {"metadata": {}},
        "subtotal": amount,
        "subtotal_excluding_tax": amount,
        "test_clock": None,
        "total": amount,
        "total_discount_amounts": [],
        "total_excluding_tax": amount,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def _line(
    line_id: str, inv_id: str, sub: dict[str, Any], period: tuple[int, int]
) -> dict[str, Any]:
    item = sub["items"]["data"][0]
    price, quantity = item["price"], item["quantity"]
    interval = price["recurring"]["interval"]
    return {
        "id": line_id,
        "object": "line_item",
        "amount": price["unit_amount"] * quantity,
        "currency": price["currency"],
        "description": f"{quantity} × {sub.get('_product_name', price['product'])} "  # noqa: RUF001
        f"(at {price['unit_amount'] / 100:.2f} / {interval})",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": inv_id,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "type": "subscription_item_details",
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": item["id"],
            },
        },
        "period": {"end": period[1], "start": period[0]},
        "plan": item["plan"],
        "price": price,
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": str(price["unit_amount"]),
        },
        "proration": False,
        "quantity": quantity,
        "subscription": sub["id"],
        "subscription_item": item["id"],
        "taxes": [],
        "type": "subscription",
    }


def payment_intent(*, pi_id: str, inv: dict[str, Any], created: int, pm_id: str) -> dict[str, Any]:
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": inv["amount_due"],
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{pi_id}_secret_{new_id('x', 25)[2:]}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": inv["currency"],
        "customer": inv["customer"],
        "description": "Subscription update",
        "invoice": inv["id"],
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": pm_id,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": "off_session",
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }


def invoice_payment(
    *, inpay_id: str, inv: dict[str, Any], pi_id: str, created: int
) -> dict[str, Any]:
    return {
        "id": inpay_id,
        "object": "invoice_payment",
        "amount_paid": None,
        "amount_requested": inv["amount_due"],
        "created": created,
        "currency": inv["currency"],
        "invoice": inv["id"],
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": pi_id},
        "status": "open",
        "status_transitions": {"canceled_at": None, "paid_at": None},
    }


def charge_outcome(decline: dict[str, Any] | None) -> dict[str, Any]:
    """Charge.outcome for a success (`decline` None), an issuer decline or a Stripe block."""
    if decline is None:
        return {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 20,
            "rule": None,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    if decline["outcome_type"] == "blocked":
        reason = decline["outcome_reason"] or "highest_risk_level"
        return {
            "advice_code": decline["advice_code"],
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "not_sent_to_network",
            "reason": reason,
            "risk_level": "highest" if reason == "highest_risk_level" else "normal",
            "risk_score": 90 if reason == "highest_risk_level" else 40,
            "rule": None,
            "seller_message": "Stripe blocked this payment.",
            "type": "blocked",
        }
    generic = "generic_decline" if decline["code"] == "card_declined" else decline["code"]
    reason = decline["outcome_reason"] or decline["decline_code"] or generic
    seller = (
        "The bank did not return any further details with this decline."
        if reason == "generic_decline"
        else f"The bank returned the decline code `{reason}`."
    )
    return {
        "advice_code": decline["advice_code"],
        "network_advice_code": decline["network_advice_code"],
        "network_decline_code": decline["network_decline_code"],
        "network_status": "declined_by_network",
        "reason": reason,
        "risk_level": "normal",
        "risk_score": 20,
        "rule": None,
        "seller_message": seller,
        "type": "issuer_declined",
    }


def charge(
    *,
    ch_id: str,
    pi: dict[str, Any],
    pm: dict[str, Any],
    created: int,
    decline: dict[str, Any] | None,
) -> dict[str, Any]:
    card = pm["card"]
    ok = decline is None
    failure = decline or {}
    return {
        "id": ch_id,
        "object": "charge",
        "amount": pi["amount"],
        "amount_captured": pi["amount"] if ok else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": new_id("txn") if ok else None,
        "billing_details": pm["billing_details"],
        "calculated_statement_descriptor": "DUNNING SIM",
        "captured": ok,
        "created": created,
        "currency": pi["currency"],
        "customer": pi["customer"],
        "description": pi["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": failure.get("code"),
        "failure_message": failure.get("message"),
        "fraud_details": {},
        "invoice": pi["invoice"],
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": charge_outcome(decline),
        "paid": ok,
        "payment_intent": pi["id"],
        "payment_method": pm["id"],
        "payment_method_details": {
            "type": "card",
            "card": {
                "amount_authorized": pi["amount"] if ok else None,
                "brand": card["brand"],
                "checks": card["checks"],
                "country": card["country"],
                "exp_month": card["exp_month"],
                "exp_year": card["exp_year"],
                "fingerprint": card["fingerprint"],
                "funding": card["funding"],
                "last4": card["last4"],
                "mandate": None,
                "network": card["brand"],
                "network_transaction_id": secrets.token_hex(8) if ok else None,
                "three_d_secure": None,
                "wallet": None,
            },
        },
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if ok else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }
