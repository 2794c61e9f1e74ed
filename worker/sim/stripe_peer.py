"""A stateful, Stripe-compatible billing API peer for the demo, the tests and the benchmarks.

`StripePeer` owns one simulated Stripe account: customers whose cards follow a script of
outcomes, subscriptions, invoices, payment intents, charges, invoice payments and portal sessions.
It serves the part of Stripe's v1 HTTP API the worker uses (reach it with the official `stripe`
library through `serve()`), with Stripe's wire behaviour where it matters: form-encoded bodies,
`expand[]`, list pagination with `starting_after` and `created` filters, 402 `card_error` bodies,
`Idempotency-Key` replay, Bearer auth, `resource_missing`, injected faults with
`Stripe-Should-Retry` and `Retry-After`, and webhook deliveries signed like Stripe's.

The control API (`create_customer`, `bill`, `update_card`, ...) drives the account in-process.
Every timestamp comes from the injected `clock`, except webhook signature times, which use the
wall clock because receivers check them against their own wall clock. One lock guards all state;
webhooks are never posted while it is held.

`StripePeer` is built in layers, one module each, every layer extending the one before it:
`stripe_state.PeerState` (the state, its lock, object lookups and views) ->
`stripe_webhooks.Webhooks` (emitting, signing and delivering events) ->
`stripe_billing.Billing` (payment methods, discounts, invoices, cancellations, charge attempts)
-> `stripe_api.ApiHandlers` (the route table and its handlers) -> `stripe_http.HttpWire`
(serving: auth, injected faults, idempotency replay, answers) -> `StripePeer` here (the
constructor and the control API). Scripted cards and coupons live in `worker.sim.stripe_specs`
and object shapes in `worker.sim.stripe_objects`; this module re-exports the names callers use.

    peer = StripePeer(webhook_url="http://127.0.0.1:8000/webhooks/stripe", api_key="sk_test_x")
    cus = peer.create_customer(email="a@example.com", name="Ada",
                               card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED]))
    sub = peer.create_subscription(customer_id=cus, unit_amount=2900)
    with peer.serve() as base_url:
        invoice_id, paid = peer.bill(sub)          # declined: invoice.payment_failed etc.
        peer.deliver_pending()                     # signed POSTs to webhook_url
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": base_url},
                                     max_network_retries=0)
        client.v1.invoices.pay(invoice_id, options={"idempotency_key": f"{invoice_id}:2"})

Extra events beyond the minimum a caller may expect, as Stripe sends them: customer.created and
payment_method.attached (create_customer); customer.subscription.updated when bill() advances
the period and when the latest invoice's outcome flips the status active <-> past_due;
charge.succeeded and payment_intent.succeeded before invoice.paid; payment_intent.requires_action
before invoice.payment_action_required; payment_intent.canceled after invoice.voided.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from worker.clock import now as clock_now
from worker.sim import stripe_objects as so
from worker.sim.stripe_http import HttpWire
from worker.sim.stripe_objects import Shape
from worker.sim.stripe_specs import (
    AUTHENTICATION_REQUIRED,
    BLOCKED_EXCESSIVE_RETRIES,
    DO_NOT_HONOR,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    PROCESSING,
    PROCESSING_ERROR,
    STOLEN_CARD,
    SUCCEED,
    CardSpec,
    CouponSpec,
    Decline,
    card_script,
)
from worker.sim.stripe_state import Fault, RecordedRequest

__all__ = [
    "AUTHENTICATION_REQUIRED",
    "BLOCKED_EXCESSIVE_RETRIES",
    "DO_NOT_HONOR",
    "EXPIRED_CARD",
    "INSUFFICIENT_FUNDS",
    "PROCESSING",
    "PROCESSING_ERROR",
    "STOLEN_CARD",
    "SUCCEED",
    "CardSpec",
    "CouponSpec",
    "Decline",
    "RecordedRequest",
    "StripePeer",
]


class StripePeer(HttpWire):
    """One simulated Stripe account: the control API below, the HTTP API and webhooks above."""

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str = "whsec_test",  # noqa: S107 - the test endpoint secret
        clock: Callable[[], datetime] = clock_now,
        api_shape: Shape = "basil",
        api_key: str | None = None,
        honor_stripe_version: bool = False,
    ) -> None:
        """`api_shape` shapes events (the webhook endpoint's pinned version) and, unless
        `honor_stripe_version`, API responses too. With `honor_stripe_version` each response
        follows the request's Stripe-Version header like real Stripe: basil for 2025-03-31 and
        later (stripe 16.1 sends 2026-10-28.endive by default), acacia before."""
        super().__init__(
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            clock=clock,
            api_shape=api_shape,
            api_key=api_key,
            honor_stripe_version=honor_stripe_version,
        )
        self._routes = self._route_table()
        self.asgi_app = self._asgi_app()

    # ----------------------------------------------------------------------------- control API

    def create_customer(
        self,
        *,
        email: str,
        name: str,
        card: CardSpec,
        timezone: str | None = None,
        locale: str | None = None,
    ) -> str:
        with self._lock:
            pm_id = so.new_id("pm")
            cust = self._store(
                so.customer(
                    cus_id=so.new_id("cus", 14),
                    email=email,
                    name=name,
                    created=self._now(),
                    pm_id=pm_id,
                    tz=timezone,
                    locale=locale,
                )
            )
            pm = self._new_payment_method(pm_id, cust, card)
            self._emit("customer.created", cust)
            self._emit("payment_method.attached", pm)
        self._after_control()
        return cust["id"]

    def create_subscription(
        self,
        *,
        customer_id: str,
        unit_amount: int,
        currency: str = "usd",
        interval: str = "month",
        quantity: int = 1,
        product_name: str = "Pro",
        trial_days: int = 0,
        coupon: CouponSpec | None = None,
    ) -> str:
        """A new subscription, `trialing` for `trial_days` first when given (its first period is
        the trial; bill() then starts the paid periods and makes it active)."""
        with self._lock:
            self._require("customer", customer_id)
            now = self._now()
            prod = self._store(
                so.product(prod_id=so.new_id("prod", 14), name=product_name, created=now)
            )
            price, plan = so.price_and_plan(
                price_id=so.new_id("price"),
                prod_id=prod["id"],
                unit_amount=unit_amount,
                currency=currency,
                interval=interval,
                created=now,
            )
            self._store(price)
            trial_end = now + trial_days * 86400 if trial_days else None
            sub = self._store(
                so.subscription(
                    sub_id=so.new_id("sub"),
                    item_id=so.new_id("si", 14),
                    customer_id=customer_id,
                    created=now,
                    end=trial_end or so.add_interval(now, interval, 1),
                    price=price,
                    plan=plan,
                    quantity=quantity,
                )
            )
            if trial_end is not None:
                sub.update(
                    status="trialing",
                    trial_start=now,
                    trial_end=trial_end,
                    billing_cycle_anchor=trial_end,
                )
            if coupon is not None:
                sub["discounts"] = [self._new_discount(coupon, sub, currency)["id"]]
            sub["_periods"], sub["_product_name"] = 0 if trial_end else 1, product_name
            self._emit("customer.subscription.created", sub)
        self._after_control()
        return sub["id"]

    def bill(self, subscription_id: str) -> tuple[str, bool]:
        """Invoice the subscription's next period, finalize it and make the automatic first
        charge attempt with the default card. Returns (invoice_id, paid)."""
        with self._lock:
            sub = self._require("subscription", subscription_id)
            if sub["status"] == "canceled":
                raise ValueError(f"subscription {subscription_id} is canceled")
            cust = self._objs[sub["customer"]]
            interval = sub["items"]["data"][0]["price"]["recurring"]["interval"]
            old = (sub["current_period_start"], sub["current_period_end"])
            sub["_periods"] += 1
            new = (old[1], so.add_interval(sub["billing_cycle_anchor"], interval, sub["_periods"]))
            inv = self._store(
                so.invoice(
                    inv_id=so.new_id("in"),
                    line_id=so.new_id("il"),
                    sub=sub,
                    cust=cust,
                    created=self._now(),
                    period=old,
                    line_period=new,
                    billing_reason="subscription_cycle",
                )
            )
            before = self._view(sub)
            so.set_subscription_period(sub, *new)
            sub["latest_invoice"] = inv["id"]
            if sub["status"] == "trialing":  # the trial is over: the first paid period starts
                sub["status"] = "active"
            self._emit_update("customer.subscription.updated", sub, before)
            self._emit("invoice.created", inv)
            self._finalize(inv, cust)
            self._emit("invoice.finalized", inv)
            outcome = self._attempt(inv, self._default_pm(inv), automatic=True)
        self._after_control()
        return inv["id"], outcome == "paid"

    def update_card(
        self, customer_id: str, card: CardSpec, *, via: Literal["network_updater", "customer"]
    ) -> str:
        """network_updater: the default PM keeps its id, gets the new card details and script
        (fingerprint kept when last4 is unchanged and none is given) and emits
        payment_method.automatically_updated. customer: a new PM is attached and becomes the
        customer's default (payment_method.attached + customer.updated)."""
        with self._lock:
            cust = self._require("customer", customer_id)
            old_pm = self._objs[cust["invoice_settings"]["default_payment_method"]]
            if via == "network_updater":
                pm = self._refresh_card(old_pm, card)
            elif via == "customer":
                pm = self._new_payment_method(so.new_id("pm"), cust, card)
                self._emit("payment_method.attached", pm)
                before = self._view(cust)
                cust["invoice_settings"]["default_payment_method"] = pm["id"]
                self._emit_update("customer.updated", cust, before)
            else:
                raise ValueError(f"unknown via {via!r}")
        self._after_control()
        return pm["id"]

    def attach_card(self, customer_id: str, card: CardSpec) -> str:
        """Another saved card of the customer, not its default (payment_method.attached)."""
        with self._lock:
            cust = self._require("customer", customer_id)
            pm = self._new_payment_method(so.new_id("pm"), cust, card)
            self._emit("payment_method.attached", pm)
        self._after_control()
        return str(pm["id"])

    def detach_card(self, payment_method_id: str, *, notify: bool = True) -> None:
        """The customer removes a saved card (payment_method.detached; ``notify=False``: the
        event is lost, so only Stripe knows)."""
        with self._lock:
            pm = self._require("payment_method", payment_method_id)
            before = self._view(pm)
            pm["customer"] = None
            if notify:
                self._emit_update("payment_method.detached", pm, before)
        self._after_control()

    def portal_saved(self, customer_id: str) -> str:
        return self.update_card(customer_id, self.portal_card, via="customer")

    def customer_pays_on_hosted_page(self, invoice_id: str) -> bool:
        """A customer-initiated attempt (e.g. after 3DS) with the default card's next outcome."""
        with self._lock:
            inv = self._require("invoice", invoice_id)
            if inv["status"] == "paid":
                return True
            if inv["status"] not in ("open", "uncollectible"):
                raise ValueError(f"invoice {invoice_id} is {inv['status']}")
            outcome = self._attempt(inv, self._default_pm(inv), automatic=False)
        self._after_control()
        return outcome == "paid"

    def settle_processing(self, invoice_id: str, outcome: Decline | str = SUCCEED) -> None:
        """The bank settles the invoice's pending debit (PaymentIntent ``processing``): the
        same charge succeeds (``invoice.paid``) or fails (``invoice.payment_failed``)."""
        with self._lock:
            self._settle_processing(self._require("invoice", invoice_id), outcome)
        self._after_control()

    def cancel_subscription(
        self, subscription_id: str, *, reason: str = "cancellation_requested"
    ) -> None:
        """``reason="payment_failed"`` is Stripe ending it when its own retries ran out."""
        with self._lock:
            self._cancel(self._require("subscription", subscription_id), reason, None, None)
        self._after_control()

    def change_quantity(self, subscription_id: str, quantity: int) -> None:
        """The customer changes the seat count in place (customer.subscription.updated; no
        proration items are simulated)."""
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        with self._lock:
            sub = self._require("subscription", subscription_id)
            if sub["status"] == "canceled":
                raise ValueError(f"subscription {subscription_id} is canceled")
            before = self._view(sub)
            sub["quantity"] = quantity
            sub["items"]["data"][0]["quantity"] = quantity
            self._emit_update("customer.subscription.updated", sub, before)
        self._after_control()

    def provider_retry(self, invoice_id: str) -> bool:
        """Stripe's own automatic retry of an open invoice (Smart Retries) with the default
        card's next outcome: the events of an automatic attempt. True when it paid."""
        with self._lock:
            inv = self._require("invoice", invoice_id)
            if inv["status"] != "open":
                raise ValueError(f"invoice {invoice_id} is {inv['status']}")
            outcome = self._attempt(inv, self._default_pm(inv), automatic=True)
        self._after_control()
        return outcome == "paid"

    def mark_uncollectible(self, invoice_id: str) -> None:
        """What Stripe does to an open invoice when its retries ran out and the account's
        setting says so (invoice.marked_uncollectible)."""
        with self._lock:
            inv = self._require("invoice", invoice_id)
            if inv["status"] != "open":
                raise ValueError(f"invoice {invoice_id} is {inv['status']}")
            self._mark_uncollectible_now(inv)
        self._after_control()

    def script_card(self, customer_id: str, outcomes: list[Decline | str]) -> None:
        """What the bank answers for the customer's default card from now on. The simulated
        bank's side only: no Stripe object changes and no event is sent."""
        with self._lock:
            cust = self._require("customer", customer_id)
            pm_id = cust["invoice_settings"]["default_payment_method"]
            self._scripts[pm_id] = card_script(CardSpec(outcomes=list(outcomes)))

    def connect_endpoint(self, url: str) -> int:
        """Add the webhook endpoint at ``url`` now. As with Stripe, it is sent only the events
        created from now on: the undelivered earlier ones are dropped (they stay in
        ``/v1/events``). Returns how many were dropped."""
        with self._lock:
            dropped = len(self._pending)
            self._pending.clear()
            self.webhook_url = url
        return dropped

    def inject_fault(
        self,
        *,
        method: str,
        path_prefix: str,
        status: int,
        times: int = 1,
        should_retry: bool | None = None,
        body: dict[str, Any] | None = None,
        after: int = 0,
        retry_after: float | None = None,
    ) -> None:
        """The next `times` requests with this method whose path starts with `path_prefix`
        (once `after` such requests went through normally) answer `status` and have no effect
        (not saved for idempotency either, so a retry with the same key then runs for real).
        `body` is the whole body or just its error object; by default 429 gets Stripe's
        rate_limit error and other statuses an api_error. `retry_after` sets that header."""
        with self._lock:
            self._faults.append(
                Fault(
                    method.upper(),
                    path_prefix,
                    status,
                    times,
                    should_retry,
                    body,
                    after,
                    retry_after,
                )
            )

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            return self._view(self._require("invoice", invoice_id))

    def get(self, object_id: str) -> dict[str, Any]:
        """Any stored object (customer, pm, subscription, invoice, pi, charge, event...)."""
        with self._lock:
            return self._view(self._objs[object_id])

    def next_renewal(self, subscription_id: str) -> datetime | None:
        """When bill() should next run for the subscription (its period's end); None once it
        is canceled."""
        with self._lock:
            sub = self._require("subscription", subscription_id)
            if sub["status"] == "canceled":
                return None
            return datetime.fromtimestamp(sub["current_period_end"], tz=UTC)

    def charge_attempts(self, invoice_id: str) -> int:
        with self._lock:
            return self._attempts[invoice_id]
