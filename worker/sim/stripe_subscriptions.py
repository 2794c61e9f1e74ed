"""Builders for Stripe products, prices/plans, coupons, discounts and subscriptions.

Stateless; each returns a plain dict in the superset shape that `worker.sim.stripe_wire.view`
renders per API shape (e.g. subscription.current_period_* on the subscription for acacia, on
its items for basil). `set_subscription_period` moves a subscription's period in both places.
"""

from __future__ import annotations

from typing import Any


def product(*, prod_id: str, name: str, created: int) -> dict[str, Any]:
    return {
        "id": prod_id,
        "object": "product",
        "active": True,
        "created": created,
        "description": None,
        "livemode": False,
        "metadata": {},
        "name": name,
        "type": "service",
        "updated": created,
    }


def price_and_plan(
    *, price_id: str, prod_id: str, unit_amount: int, currency: str, interval: str, created: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    price = {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": prod_id,
        "recurring": {
            "interval": interval,
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }
    plan = {
        "id": price_id,
        "object": "plan",
        "active": True,
        "amount": unit_amount,
        "amount_decimal": str(unit_amount),
        "billing_scheme": "per_unit",
        "created": created,
        "currency": currency,
        "interval": interval,
        "interval_count": 1,
        "livemode": False,
        "metadata": {},
        "meter": None,
        "nickname": None,
        "product": prod_id,
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }
    return price, plan


def coupon(
    *,
    coupon_id: str,
    percent_off: float | None,
    amount_off: int | None,
    currency: str | None,
    duration: str,
    duration_in_months: int | None,
    created: int,
) -> dict[str, Any]:
    return {
        "id": coupon_id,
        "object": "coupon",
        "amount_off": amount_off,
        "created": created,
        "currency": currency if amount_off is not None else None,
        "duration": duration,
        "duration_in_months": duration_in_months,
        "livemode": False,
        "max_redemptions": None,
        "metadata": {},
        "name": None,
        "percent_off": percent_off,
        "redeem_by": None,
        "times_redeemed": 1,
        "valid": True,
    }


def discount(
    *,
    di_id: str,
    cpn: dict[str, Any],
    customer_id: str,
    sub_id: str,
    start: int,
    end: int | None,
) -> dict[str, Any]:
    """Both shapes: `coupon` embedded (before 2025-09-30) and `source.coupon`, an id that
    `expand[]=...source.coupon` resolves (2025-09-30.clover on)."""
    return {
        "id": di_id,
        "object": "discount",
        "checkout_session": None,
        "coupon": cpn,
        "customer": customer_id,
        "end": end,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": None,
        "source": {"coupon": cpn["id"], "type": "coupon"},
        "start": start,
        "subscription": sub_id,
        "subscription_item": None,
    }


def subscription(
    *,
    sub_id: str,
    item_id: str,
    customer_id: str,
    created: int,
    end: int,
    price: dict[str, Any],
    plan: dict[str, Any],
    quantity: int,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": created,
        "current_period_end": end,
        "current_period_start": created,
        "discounts": [],
        "metadata": {},
        "plan": plan,
        "price": price,
        "quantity": quantity,
        "subscription": sub_id,
        "tax_rates": [],
    }
    return {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": created,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": price["currency"],
        "current_period_end": end,
        "current_period_start": created,
        "customer": customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": {},
        "pause_collection": None,
        "plan": plan,
        "quantity": quantity,
        "start_date": created,
        "status": "active",
        "test_clock": None,
        "trial_end": None,
        "trial_start": None,
    }


def set_subscription_period(sub: dict[str, Any], start: int, end: int) -> None:
    sub["current_period_start"], sub["current_period_end"] = start, end
    for item in sub["items"]["data"]:
        item["current_period_start"], item["current_period_end"] = start, end
