"""Stripe-shaped object builders and wire helpers for the simulated Stripe peer.

This module owns everything about *what Stripe objects look like* and *how Stripe's v1 wire
format is read and written*; it holds no state. `worker.sim.stripe_peer` owns the state machine.

* Builders (`customer`, `payment_method`, `coupon`, `discount`, `subscription`, `invoice`,
  `payment_intent`, `charge`, `invoice_payment`, `portal_session`, `event`) return plain dicts
  in a *superset* shape that carries the fields of both API shapes. `view(obj, shape)` renders
  a deep copy in one shape: "basil" (2025-03-31.basil: invoice.parent, no
  invoice.payment_intent/charge/paid) or "acacia" (2024-06-20: invoice.payment_intent/charge/
  subscription/paid, no parent). Keys that start with "_" are internal to the peer and never
  rendered.
* Field names follow the fixtures in /work/shared/fixtures/stripe (stripe/openapi fixtures3,
  dj-stripe and pay-rails payloads).
* `decode_params` reads form/query bodies in Stripe's bracket notation (`a[b][0]=x`, `expand[]`).
* `expand` applies `expand[]` paths; `diff_previous` computes an event's `previous_attributes`.
"""

from __future__ import annotations

import copy
import secrets
import string
from calendar import monthrange
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

Shape = Literal["basil", "acacia"]
API_VERSIONS: dict[str, str] = {"basil": "2025-03-31.basil", "acacia": "2024-06-20"}

_ALNUM = string.ascii_letters + string.digits

# Fields that exist in only one API shape, by object type.
_ONLY_ACACIA: dict[str, tuple[str, ...]] = {
    "invoice": (
        "payment_intent",
        "charge",
        "paid",
        "paid_out_of_band",
        "subscription",
        "subscription_details",
    ),
    "payment_intent": ("invoice",),
    "charge": ("invoice",),
    "subscription": ("current_period_start", "current_period_end", "plan", "quantity"),
    "line_item": ("subscription", "subscription_item", "type", "price", "plan", "proration"),
}
_ONLY_BASIL: dict[str, tuple[str, ...]] = {
    "invoice": ("parent",),
    "subscription_item": ("current_period_start", "current_period_end"),
    "line_item": ("parent", "pricing"),
}

# Stripe's customer-facing messages for common card errors (docs.stripe.com/declines/codes).
_MESSAGES: dict[str, str] = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "invalid_cvc": "Your card's security code is invalid.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
    "card_velocity_exceeded": "Your card was declined for making repeated attempts too "
    "frequently or exceeding its amount limit.",
    "card_decline_rate_limit_exceeded": "You have exceeded the maximum number of declines on "
    "this card in the last 24 hour period. Please contact "
    "your card issuer for more information.",
}


class ApiError(Exception):
    """An error answer: HTTP `status` with body `{"error": error}`.

    `save` says whether an idempotent request that ended in this error stores it for replay
    (Stripe saves results once the endpoint started executing, not validation failures).
    """

    def __init__(self, status: int, error: dict[str, Any], *, save: bool = True) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = {k: v for k, v in error.items() if v is not None}
        self.save = save


def invalid_request(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    status: int = 400,
    save: bool = False,
) -> ApiError:
    return ApiError(
        status,
        {
            "type": "invalid_request_error",
            "message": message,
            "code": code,
            "param": param,
            "doc_url": doc_url(code) if code else None,
        },
        save=save,
    )


def resource_missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    return invalid_request(
        f"No such {kind}: '{object_id}'", code="resource_missing", param=param, status=404
    )


def auth_error(header: str | None) -> dict[str, Any]:
    if not header:
        message = (
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for "
            "details, or we can help at https://support.stripe.com/."
        )
    else:
        key = header.partition(" ")[2].strip()
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else key
        message = f"Invalid API Key provided: {masked}"
    return {"type": "invalid_request_error", "message": message}


def unrecognized_url(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "invalid_request_error",
        "message": f"Unrecognized request URL ({method}: {path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
    }


def idempotency_error(key: str, *, concurrent: bool) -> dict[str, Any]:
    if concurrent:
        message = (
            "There is currently another in-progress request using this idempotency key "
            f"('{key}'). Please try again later."
        )
    else:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they "
            f"were first used with. Try using a key other than '{key}' if you meant to "
            "execute a different request."
        )
    return {"type": "idempotency_error", "message": message}


def fault_error(status: int) -> dict[str, Any]:
    """The error body of an injected fault: Stripe's rate-limit body for 429, else api_error."""
    if status == 429:
        return {
            "type": "invalid_request_error",
            "code": "rate_limit",
            "doc_url": doc_url("rate_limit"),
            "message": "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
        }
    return {"type": "api_error", "message": f"An unknown error occurred (HTTP {status})."}


def doc_url(code: str) -> str:
    return f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def decline_message(code: str, decline_code: str | None) -> str:
    return _MESSAGES.get(decline_code or "") or _MESSAGES.get(code) or "Your card was declined."


# ---------------------------------------------------------------------------------------------
# ids and time


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALNUM) for _ in range(length))}"


def new_fingerprint() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(16))


def add_interval(anchor: int, interval: str, count: int) -> int:
    """`anchor` (unix seconds) plus `count` intervals; months clamp to the month's last day."""
    start = datetime.fromtimestamp(anchor, tz=UTC)
    if interval in ("day", "week"):
        return anchor + count * (86400 if interval == "day" else 7 * 86400)
    months = count * (12 if interval == "year" else 1)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown interval {interval!r}")
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, monthrange(year, month0 + 1)[1])
    return int(start.replace(year=year, month=month0 + 1, day=day).timestamp())


# ---------------------------------------------------------------------------------------------
# wire helpers


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode Stripe bracket notation: `a[b][0]=x&a[b][1]=y&e[]=z` -> {a: {b: [x, y]}, e: [z]}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        tokens = _split_key(key)
        node = root
        for token in tokens[:-1]:
            name = token or str(len(node))
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        last = tokens[-1] or str(len(node))
        node[last] = value
    return _listify(root)


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    tokens = [head]
    while rest:
        inner, _, rest = rest.partition("]")
        tokens.append(inner)
        rest = rest[1:] if rest.startswith("[") else ""
    return tokens


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def expand_paths(params: dict[str, Any]) -> list[str]:
    raw = params.get("expand", [])
    return [raw] if isinstance(raw, str) else [str(p) for p in raw]


def expand(
    obj: dict[str, Any], paths: list[str], lookup: Callable[[str], dict[str, Any] | None]
) -> dict[str, Any]:
    """Replace ids named by `paths` (e.g. "data.payment.payment_intent") with rendered objects."""
    for path in paths:
        _expand(obj, path.split("."), lookup, path)
    return obj


def _expand(
    node: Any, segs: list[str], lookup: Callable[[str], dict[str, Any] | None], path: str
) -> None:
    if isinstance(node, list):
        for item in node:
            _expand(item, segs, lookup, path)
        return
    head, rest = segs[0], segs[1:]
    if not isinstance(node, dict) or head not in node:
        raise invalid_request(f"This property cannot be expanded ({path}).", param="expand")
    value = node[head]
    if isinstance(value, list):  # a list of ids, e.g. subscription.discounts
        node[head] = value = [_resolve(v, lookup, path) for v in value]
    elif isinstance(value, str):
        node[head] = value = _resolve(value, lookup, path)
    if rest and value is not None:
        _expand(value, rest, lookup, path)


def _resolve(value: Any, lookup: Callable[[str], dict[str, Any] | None], path: str) -> Any:
    if not isinstance(value, str):
        return value
    target = lookup(value)
    if target is None:
        raise invalid_request(f"This property cannot be expanded ({path}).", param="expand")
    return target


def view(obj: Any, shape: Shape) -> Any:
    """Deep copy of `obj` rendered in `shape`, without internal ("_") keys."""
    if isinstance(obj, list):
        return [view(item, shape) for item in obj]
    if not isinstance(obj, dict):
        return copy.copy(obj)
    kind = obj.get("object")
    drop = (
        (_ONLY_BASIL if shape == "acacia" else _ONLY_ACACIA).get(kind, ())
        if isinstance(kind, str)
        else ()
    )
    return {k: view(v, shape) for k, v in obj.items() if not k.startswith("_") and k not in drop}


def diff_previous(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Stripe's `previous_attributes`: old values of changed keys, recursing into sub-hashes."""
    out: dict[str, Any] = {}
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and "object" not in before:
            out[key] = diff_previous(before, after)
        else:
            out[key] = before
    return out


# ---------------------------------------------------------------------------------------------
# builders (superset shape; see view())


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


def portal_session(
    *,
    bps_id: str,
    customer_id: str,
    created: int,
    return_url: str | None,
    flow_type: str | None,
    locale: str | None,
) -> dict[str, Any]:
    flow = None
    if flow_type:
        flow = {
            "type": flow_type,
            "after_completion": {
                "type": "portal_homepage",
                "hosted_confirmation": None,
                "redirect": None,
            },
        }
    return {
        "id": bps_id,
        "object": "billing_portal.session",
        "configuration": "bpc_dunningsimdefault",
        "created": created,
        "customer": customer_id,
        "flow": flow,
        "livemode": False,
        "locale": locale,
        "on_behalf_of": None,
        "return_url": return_url,
        "url": f"https://billing.stripe.test/p/session/{bps_id}",
    }


def event(
    *,
    evt_id: str,
    type_: str,
    obj: dict[str, Any],
    api_version: str,
    created: int,
    previous: dict[str, Any] | None,
    request: dict[str, Any] | None,
    pending_webhooks: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous:
        data["previous_attributes"] = previous
    return {
        "id": evt_id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": request or {"id": None, "idempotency_key": None},
        "type": type_,
    }
