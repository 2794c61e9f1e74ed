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
webhooks are never posted while it is held. Object shapes live in `worker.sim.stripe_objects`.

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

import base64
import hmac
import json
import logging
import operator
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.clock import now as clock_now
from worker.httpserver import serve_in_thread
from worker.sim import stripe_objects as so
from worker.sim.stripe_objects import ApiError, Shape, invalid_request, resource_missing

log = logging.getLogger(__name__)

SUCCEED = "succeed"


@dataclass
class Decline:
    """One scripted decline. `outcome_reason`/`message` override charge.outcome.reason and the
    error message Stripe would pick (e.g. reason "previously_declined_do_not_retry")."""

    code: str = "card_declined"
    decline_code: str | None = None
    advice_code: str | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None
    outcome_type: str = "issuer_declined"  # or "blocked"
    requires_action: bool = False  # PI requires_action, invoice.payment_action_required
    outcome_reason: str | None = None
    message: str | None = None

    def details(self) -> dict[str, Any]:
        blocked = self.outcome_type == "blocked"
        return {
            "code": self.code,
            "decline_code": self.decline_code,
            "advice_code": self.advice_code,
            "network_decline_code": None if blocked else self.network_decline_code,
            "network_advice_code": None if blocked else self.network_advice_code,
            "outcome_type": self.outcome_type,
            "outcome_reason": self.outcome_reason,
            "message": self.message or so.decline_message(self.code, self.decline_code),
        }


# Common scripted declines (values as Stripe reports them; see domain/retry-rules.md §1).
INSUFFICIENT_FUNDS = Decline(
    decline_code="insufficient_funds", advice_code="try_again_later", network_decline_code="51"
)
DO_NOT_HONOR = Decline(decline_code="do_not_honor", network_decline_code="05")
EXPIRED_CARD = Decline(
    code="expired_card",
    decline_code="expired_card",
    advice_code="confirm_card_data",
    network_decline_code="54",
    network_advice_code="03",
)
STOLEN_CARD = Decline(
    decline_code="stolen_card", advice_code="do_not_try_again", network_decline_code="43"
)
PROCESSING_ERROR = Decline(
    code="processing_error", decline_code="processing_error", network_decline_code="96"
)
AUTHENTICATION_REQUIRED = Decline(
    code="authentication_required", decline_code="authentication_required", requires_action=True
)
BLOCKED_EXCESSIVE_RETRIES = Decline(
    decline_code="generic_decline",
    outcome_type="blocked",
    outcome_reason="previously_declined_do_not_retry",
    advice_code="do_not_try_again",
)


@dataclass
class CardSpec:
    brand: str = "visa"
    last4: str = "4242"
    exp_month: int = 12
    exp_year: int = 2030
    fingerprint: str | None = None  # generated if None
    # consumed one per charge attempt; the last one repeats forever
    outcomes: list[Decline | str] = field(default_factory=lambda: [SUCCEED])
    funding: str = "credit"
    country: str = "US"


@dataclass
class CouponSpec:
    """A coupon applied when the subscription is created (Stripe's duration semantics)."""

    percent_off: float | None = None
    amount_off: int | None = None  # minor units per billing period, in the price's currency
    duration: Literal["forever", "repeating", "once"] = "forever"
    duration_in_months: int | None = None  # repeating only


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int
    stripe_version: str | None = None
    replayed: bool = False
    request_id: str = ""
    at: float = field(default_factory=time.monotonic)  # when answered (monotonic seconds)


@dataclass
class _CardScript:
    outcomes: list[Decline | str]
    cursor: int = 0

    def next(self) -> Decline | str:
        if not self.outcomes:
            return SUCCEED
        outcome = self.outcomes[min(self.cursor, len(self.outcomes) - 1)]
        self.cursor += 1
        return outcome


@dataclass
class _Fault:
    method: str
    path_prefix: str
    status: int
    remaining: int
    should_retry: bool | None
    body: dict[str, Any] | None
    after: int = 0  # matching requests still to let through first
    retry_after: float | None = None


@dataclass
class _Saved:  # one idempotency key
    method: str
    path: str
    params: dict[str, Any]
    created: int
    in_flight: bool = True
    status: int = 0
    body: bytes = b""
    request_id: str = ""


@dataclass
class _Ctx:  # one API request
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_id: str
    stripe_version: str | None


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    emitted: bool = False


Handler = Callable[..., dict[str, Any]]
_KIND_LABEL = {"payment_method": "PaymentMethod"}


def _truthy(value: Any) -> bool:
    return str(value).lower() == "true"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


class StripePeer:
    IDEMPOTENCY_TTL = 24 * 3600  # keys may be pruned after 24 h (of the injected clock)
    MAX_IDEMPOTENCY_KEYS = 100_000

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
        self.webhook_url = webhook_url
        self.honor_stripe_version = honor_stripe_version
        self.webhook_secret = webhook_secret
        self.clock = clock
        self.api_shape: Shape = api_shape
        self.api_key = api_key
        self.auto_deliver = False
        self.latency = 0.0  # seconds slept (outside the lock) by every routed API request
        # Seconds slept after a request took effect, before answering: a client killed in
        # this gap has charged the card without hearing so (crash-recovery tests).
        self.reply_delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._delivery_lock = threading.Lock()
        self._objs: dict[str, dict[str, Any]] = {}
        self._by_type: defaultdict[str, list[str]] = defaultdict(list)
        self._scripts: dict[str, _CardScript] = {}
        self._attempts: Counter[str] = Counter()
        self._pending: dict[str, None] = {}
        self._faults: list[_Fault] = []
        self._idem: OrderedDict[str, _Saved] = OrderedDict()
        self._request: dict[str, Any] | None = None  # set while an API handler runs
        self._reply_shape: Shape | None = None  # set while an API handler runs
        self._http: httpx.Client | None = None  # webhook deliveries
        self._routes = self._route_table()
        self.asgi_app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                )
            ]
        )

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

    def cancel_subscription(
        self, subscription_id: str, *, reason: str = "cancellation_requested"
    ) -> None:
        with self._lock:
            self._cancel(self._require("subscription", subscription_id), reason, None, None)
        self._after_control()

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
                _Fault(
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

    def charge_attempts(self, invoice_id: str) -> int:
        with self._lock:
            return self._attempts[invoice_id]

    # ------------------------------------------------------------------------------- webhooks

    def signed_payload(self, event: dict[str, Any]) -> tuple[bytes, str]:
        body = _dumps(event)
        timestamp = int(time.time())
        mac = hmac.new(self.webhook_secret.encode(), f"{timestamp}.".encode() + body, "sha256")
        return body, f"t={timestamp},v1={mac.hexdigest()}"

    def deliver_pending(self) -> int:
        """POST every pending event to webhook_url in order; non-2xx answers stay pending."""
        return self._drain(blocking=True)

    def redeliver(self, event_id: str) -> int:
        with self._lock:
            event = self._events_only(event_id)
        status = self._post_event(event)
        if 200 <= status < 300:
            with self._lock:
                self._pending.pop(event_id, None)
        return status

    def pending_events(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def _events_only(self, event_id: str) -> dict[str, Any]:
        event = self._objs.get(event_id)
        if event is None or event.get("object") != "event":
            raise KeyError(event_id)
        return event

    def _after_control(self) -> None:
        if self.auto_deliver:
            self._drain(blocking=False)

    def _drain(self, *, blocking: bool) -> int:
        # A non-blocking caller leaves its events to whoever holds the delivery lock; the holder
        # releases it under the state lock only after seeing no untried pending event, so no
        # event can be left behind.
        if self.webhook_url is None or not self._delivery_lock.acquire(blocking=blocking):
            return 0
        delivered, tried, held = 0, set(), True
        try:
            while True:
                with self._lock:
                    batch = [self._objs[e] for e in self._pending if e not in tried]
                    if not batch:
                        self._delivery_lock.release()
                        held = False
                        return delivered
                for event in batch:
                    tried.add(event["id"])
                    if 200 <= self._post_event(event) < 300:
                        with self._lock:
                            self._pending.pop(event["id"], None)
                        delivered += 1
        finally:
            if held:
                self._delivery_lock.release()

    def close(self) -> None:
        """Close the webhook HTTP client (a later delivery opens a new one)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def _post_event(self, event: dict[str, Any]) -> int:
        url = self.webhook_url
        if url is None:
            return 0
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=10)
            http = self._http
        body, signature = self.signed_payload(event)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            return http.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("webhook delivery of %s failed: %s", event["id"], exc)
            return 0

    # -------------------------------------------------------------------------------- serving

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Run the API with uvicorn in a daemon thread; yields the base URL."""
        with serve_in_thread(self.asgi_app, host, port) as url:
            yield url

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        reply = await run_in_threadpool(
            self._handle,
            request.method,
            request.url.path,
            request.url.query,
            body,
            dict(request.headers),
        )
        deliver = reply.emitted and self.auto_deliver and self.webhook_url is not None
        return Response(
            reply.body,
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
            background=BackgroundTask(self._drain, blocking=False) if deliver else None,
        )

    def _handle(
        self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]
    ) -> _Reply:
        pairs = parse_qsl(query, keep_blank_values=True)
        if method == "POST":
            pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        ctx = _Ctx(
            method,
            path,
            so.decode_params(pairs),
            headers.get("idempotency-key") if method == "POST" else None,
            so.new_id("req", 14),
            headers.get("stripe-version"),
        )
        with self._lock:
            early = self._preflight(ctx, headers.get("authorization"))
        if isinstance(early, _Reply):
            return early
        handler, args = early
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            emitted_before = len(self.events)
            self._request = {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key}
            self._reply_shape = self._shape_for(ctx.stripe_version)
            try:
                status, payload, save = 200, handler(ctx, *args), True
            except ApiError as exc:
                status, payload, save = exc.status, {"error": exc.error}, exc.save
            except Exception:  # a peer bug: answer like Stripe's 500, never save it
                log.exception("stripe peer handler failed for %s %s", method, path)
                status, payload, save = (
                    500,
                    {"error": {"type": "api_error", "message": "An unknown error occurred."}},
                    False,
                )
            finally:
                self._request, self._reply_shape = None, None
            reply = self._respond(ctx, status, _dumps(payload))
            self._settle_key(ctx, reply, save)
            reply.emitted = len(self.events) > emitted_before
        if self.reply_delay:
            time.sleep(self.reply_delay)
        return reply

    def _preflight(self, ctx: _Ctx, auth: str | None) -> _Reply | tuple[Handler, tuple[str, ...]]:
        if not self._authorized(auth):
            return self._error_reply(ctx, 401, so.auth_error(auth))
        fault = self._take_fault(ctx)
        if fault is not None:
            return fault
        routed = self._match(ctx.method, ctx.path)
        if routed is None:
            return self._error_reply(ctx, 404, so.unrecognized_url(ctx.method, ctx.path))
        key = ctx.idempotency_key
        if key is None:
            return routed
        saved = self._idem.get(key)
        if (
            saved is not None
            and not saved.in_flight
            and self._now() - saved.created >= self.IDEMPOTENCY_TTL
        ):
            del self._idem[key]
            saved = None
        if saved is None:
            self._idem[key] = _Saved(ctx.method, ctx.path, ctx.params, self._now())
            while len(self._idem) > self.MAX_IDEMPOTENCY_KEYS:
                self._idem.popitem(last=False)
            return routed
        if saved.in_flight:
            return self._error_reply(ctx, 409, so.idempotency_error(key, concurrent=True))
        if (saved.method, saved.path, saved.params) != (ctx.method, ctx.path, ctx.params):
            return self._error_reply(ctx, 400, so.idempotency_error(key, concurrent=False))
        return self._respond(
            ctx,
            saved.status,
            saved.body,
            replayed=True,
            extra={"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
        )

    def _settle_key(self, ctx: _Ctx, reply: _Reply, save: bool) -> None:
        key = ctx.idempotency_key
        if key is None:
            return
        saved = self._idem.get(key)
        if saved is None or not saved.in_flight:  # evicted meanwhile: nothing to settle
            return
        if save:
            saved.in_flight, saved.status, saved.body = False, reply.status, reply.body
            saved.request_id = ctx.request_id
        else:
            del self._idem[key]

    def _authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, credential = (header or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                credential = base64.b64decode(credential).decode().partition(":")[0]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credential.strip().encode(), self.api_key.encode())

    def _take_fault(self, ctx: _Ctx) -> _Reply | None:
        for fault in self._faults:
            if fault.method == ctx.method and ctx.path.startswith(fault.path_prefix):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                body = fault.body or {"error": so.fault_error(fault.status)}
                if "error" not in body:  # accept a bare error object too
                    body = {"error": body}
                extra = (
                    {}
                    if fault.should_retry is None
                    else {"Stripe-Should-Retry": "true" if fault.should_retry else "false"}
                )
                if fault.retry_after is not None:
                    extra["Retry-After"] = f"{fault.retry_after:g}"
                return self._respond(ctx, fault.status, _dumps(body), extra=extra)
        return None

    def _error_reply(self, ctx: _Ctx, status: int, error: dict[str, Any]) -> _Reply:
        return self._respond(ctx, status, _dumps({"error": error}))

    def _respond(
        self,
        ctx: _Ctx,
        status: int,
        body: bytes,
        *,
        replayed: bool = False,
        extra: dict[str, str] | None = None,
    ) -> _Reply:
        headers = {
            "Request-Id": ctx.request_id,
            "Stripe-Version": so.API_VERSIONS[self._shape_for(ctx.stripe_version)],
            **(extra or {}),
        }
        if ctx.idempotency_key:
            headers["Idempotency-Key"] = ctx.idempotency_key
        self.requests.append(
            RecordedRequest(
                ctx.method,
                ctx.path,
                ctx.params,
                ctx.idempotency_key,
                status,
                ctx.stripe_version,
                replayed,
                ctx.request_id,
            )
        )
        return _Reply(status, body, headers)

    # -------------------------------------------------------------------------------- routes

    def _route_table(self) -> list[tuple[str, str, Handler]]:
        r = self._retrieve
        return [
            ("GET", "/v1/customers", self._list("customer", _matcher("email"))),
            ("GET", "/v1/customers/*", r("customer")),
            ("GET", "/v1/payment_methods/*", r("payment_method")),
            ("GET", "/v1/products/*", r("product")),
            ("GET", "/v1/prices/*", r("price")),
            ("GET", "/v1/subscriptions", self._list("subscription", self._match_subscription)),
            ("GET", "/v1/subscriptions/*", r("subscription")),
            ("POST", "/v1/subscriptions/*", self._update_subscription),
            ("DELETE", "/v1/subscriptions/*", self._delete_subscription),
            (
                "GET",
                "/v1/invoices",
                self._list("invoice", _matcher("customer", "subscription", "status")),
            ),
            ("GET", "/v1/invoices/*", r("invoice")),
            ("POST", "/v1/invoices/*/pay", self._pay),
            ("POST", "/v1/invoices/*/void", self._void),
            ("POST", "/v1/invoices/*/mark_uncollectible", self._mark_uncollectible),
            ("GET", "/v1/payment_intents/*", r("payment_intent")),
            ("GET", "/v1/charges", self._list("charge", _matcher("customer", "payment_intent"))),
            ("GET", "/v1/charges/*", r("charge")),
            (
                "GET",
                "/v1/invoice_payments",
                self._list("invoice_payment", self._match_invoice_payment),
            ),
            ("GET", "/v1/invoice_payments/*", r("invoice_payment")),
            ("GET", "/v1/events", self._list("event", self._match_event)),
            ("GET", "/v1/events/*", r("event")),
            ("POST", "/v1/billing_portal/sessions", self._portal_session),
        ]

    def _match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]] | None:
        parts = path.rstrip("/").split("/")
        for route_method, pattern, handler in self._routes:
            expected = pattern.split("/")
            if route_method != method or len(expected) != len(parts):
                continue
            pairs = list(zip(expected, parts, strict=True))
            if all(e in ("*", p) for e, p in pairs):
                return handler, tuple(p for e, p in pairs if e == "*")
        return None

    def _retrieve(self, kind: str) -> Handler:
        def handler(ctx: _Ctx, object_id: str) -> dict[str, Any]:
            return self._render(self._fetch(kind, object_id), ctx)

        return handler

    def _list(self, kind: str, keep: Callable[[dict[str, Any], dict[str, Any]], bool]) -> Handler:
        def handler(ctx: _Ctx) -> dict[str, Any]:
            if not self._visible(kind):
                raise ApiError(404, so.unrecognized_url(ctx.method, ctx.path), save=False)
            params = ctx.params
            items = [self._objs[i] for i in reversed(self._by_type[kind])]
            items = [o for o in items if keep(o, params) and _created_in(o, params.get("created"))]
            ids = [o["id"] for o in items]
            if params.get("starting_after") in ids:
                items = items[ids.index(params["starting_after"]) + 1 :]
            elif params.get("ending_before") in ids:
                items = items[: ids.index(params["ending_before"])]
            limit = max(1, min(100, int(params.get("limit") or 10)))
            page = items[-limit:] if "ending_before" in params else items[:limit]
            body = {
                "object": "list",
                "data": [self._out(o) for o in page],
                "has_more": len(items) > limit,
                "url": ctx.path,
            }
            return so.expand(body, so.expand_paths(params), self._lookup)

        return handler

    @staticmethod
    def _match_subscription(sub: dict[str, Any], params: dict[str, Any]) -> bool:
        status = params.get("status")
        if status is None and sub["status"] == "canceled":
            return False  # Stripe lists non-canceled subscriptions by default
        return _matcher("customer")(sub, params) and status in (None, "all", sub["status"])

    @staticmethod
    def _match_invoice_payment(inpay: dict[str, Any], params: dict[str, Any]) -> bool:
        payment = params.get("payment") or {}
        wanted_pi = payment.get("payment_intent") if isinstance(payment, dict) else None
        return _matcher("invoice", "status")(inpay, params) and wanted_pi in (
            None,
            inpay["payment"]["payment_intent"],
        )

    @staticmethod
    def _match_event(event: dict[str, Any], params: dict[str, Any]) -> bool:
        wanted = params.get("types") or ([params["type"]] if "type" in params else [])
        return not wanted or any(
            event["type"] == t or (t.endswith(".*") and event["type"].startswith(t[:-1]))
            for t in wanted
        )

    def _pay(self, ctx: _Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(
            ctx,
            {
                "payment_method",
                "off_session",
                "forgive",
                "paid_out_of_band",
                "source",
                "mandate",
                "expand",
            },
        )
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] == "paid":
            raise invalid_request("Invoice is already paid", save=True)
        if inv["status"] != "open" and inv["status"] != "uncollectible":
            raise invalid_request(
                f"This invoice can no longer be paid because it is {inv['status']}.", save=True
            )
        if _truthy(ctx.params.get("paid_out_of_band")):
            self._mark_paid_out_of_band(inv)
            return self._render(inv, ctx)
        pm_id = ctx.params.get("payment_method") or self._default_pm(inv)
        pm = self._fetch("payment_method", pm_id, param="payment_method")
        if pm["customer"] != inv["customer"]:
            raise invalid_request(
                f"The PaymentMethod {pm_id} does not belong to the Customer {inv['customer']}.",
                param="payment_method",
            )
        outcome = self._attempt(inv, pm_id, automatic=False)
        if outcome == "paid":
            return self._render(inv, ctx)
        pi = self._objs[inv["payment_intent"]]
        error = {
            **pi["last_payment_error"],
            "payment_intent": self._out(pi),
            "request_log_url": f"https://dashboard.stripe.com/test/logs/{ctx.request_id}",
        }
        if outcome == "action_required":  # Stripe answers 400, not 402, for off-session 3DS
            code = "invoice_payment_intent_requires_action"
            raise ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": code,
                    "doc_url": so.doc_url(code),
                    "message": "The invoice payment requires additional action. Retrieve the "
                    "invoice's PaymentIntent to complete the payment.",
                    "payment_intent": error["payment_intent"],
                    "request_log_url": error["request_log_url"],
                },
            )
        raise ApiError(402, error)

    def _void(self, ctx: _Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"expand"})
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] not in ("open", "uncollectible"):
            raise invalid_request(
                f"You can only void an open or uncollectible invoice; this "
                f"invoice is {inv['status']}.",
                save=True,
            )
        now = self._now()
        inv.update(status="void", auto_advance=False)
        inv["status_transitions"]["voided_at"] = now
        self._emit("invoice.voided", inv)
        pi = self._objs.get(inv["payment_intent"] or "")
        if pi is not None:
            pi.update(status="canceled", canceled_at=now, cancellation_reason="void_invoice")
            inpay = self._objs[inv["_payment"]]
            inpay["status"] = "canceled"
            inpay["status_transitions"]["canceled_at"] = now
            self._emit("payment_intent.canceled", pi)
        return self._render(inv, ctx)

    def _mark_uncollectible(self, ctx: _Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"expand"})
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] != "open":
            raise invalid_request(
                f"You can only mark an open invoice as uncollectible; this "
                f"invoice is {inv['status']}.",
                save=True,
            )
        inv.update(status="uncollectible", auto_advance=False)
        inv["status_transitions"]["marked_uncollectible_at"] = self._now()
        self._emit("invoice.marked_uncollectible", inv)
        return self._render(inv, ctx)

    def _update_subscription(self, ctx: _Ctx, sub_id: str) -> dict[str, Any]:
        params = ctx.params
        self._check_params(
            ctx,
            {
                "metadata",
                "pause_collection",
                "cancel_at_period_end",
                "default_payment_method",
                "description",
                "expand",
                "cancellation_details",
                "proration_behavior",
            },
        )
        sub = self._fetch("subscription", sub_id)
        if sub["status"] == "canceled" and set(params) - {
            "metadata",
            "cancellation_details",
            "expand",
        }:
            raise invalid_request(
                "A canceled subscription can only update its cancellation_details and metadata."
            )
        changes = self._subscription_changes(sub, params)
        before = self._view(sub)
        sub.update(changes)
        self._emit_update("customer.subscription.updated", sub, before)
        return self._render(sub, ctx)

    def _subscription_changes(self, sub: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if "metadata" in params:
            meta = {} if params["metadata"] == "" else {**sub["metadata"], **params["metadata"]}
            changes["metadata"] = {k: v for k, v in meta.items() if v != ""}
        if "pause_collection" in params:
            pause = params["pause_collection"]
            if pause != "" and (
                not isinstance(pause, dict)
                or pause.get("behavior") not in ("keep_as_draft", "mark_uncollectible", "void")
            ):
                raise invalid_request(
                    "Invalid pause_collection[behavior].", param="pause_collection[behavior]"
                )
            changes["pause_collection"] = (
                None
                if pause == ""
                else {
                    "behavior": pause["behavior"],
                    "resumes_at": int(pause["resumes_at"]) if pause.get("resumes_at") else None,
                }
            )
        if "cancel_at_period_end" in params:
            at_end = _truthy(params["cancel_at_period_end"])
            changes["cancel_at_period_end"] = at_end
            changes["cancel_at"] = sub["current_period_end"] if at_end else None
        if "default_payment_method" in params:
            pm_id = params["default_payment_method"] or None
            if pm_id is not None:
                self._fetch("payment_method", pm_id, param="default_payment_method")
            changes["default_payment_method"] = pm_id
        if "description" in params:
            changes["description"] = params["description"] or None
        if isinstance(params.get("cancellation_details"), dict):
            details = params["cancellation_details"]
            changes["cancellation_details"] = {
                **sub["cancellation_details"],
                **{k: details[k] or None for k in ("comment", "feedback") if k in details},
            }
        return changes

    def _delete_subscription(self, ctx: _Ctx, sub_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"cancellation_details", "invoice_now", "prorate", "expand"})
        sub = self._fetch("subscription", sub_id)
        if sub["status"] == "canceled":
            raise invalid_request(f"The subscription {sub_id} has already been canceled.")
        details = ctx.params.get("cancellation_details") or {}
        self._cancel(
            sub,
            "cancellation_requested",
            details.get("comment") or None,
            details.get("feedback") or None,
        )
        return self._render(sub, ctx)

    def _portal_session(self, ctx: _Ctx) -> dict[str, Any]:
        self._check_params(
            ctx,
            {
                "customer",
                "return_url",
                "flow_data",
                "locale",
                "configuration",
                "on_behalf_of",
                "expand",
            },
        )
        if not ctx.params.get("customer"):
            raise invalid_request(
                "Missing required param: customer.", param="customer", code="parameter_missing"
            )
        cust = self._fetch("customer", ctx.params["customer"], param="customer")
        flow = ctx.params.get("flow_data") or {}
        flow_type = flow.get("type") if isinstance(flow, dict) else None
        allowed = (
            "payment_method_update",
            "subscription_cancel",
            "subscription_update",
            "subscription_update_confirm",
        )
        if flow and flow_type not in allowed:
            raise invalid_request(
                f"Invalid flow_data[type]: must be one of {', '.join(allowed)}",
                param="flow_data[type]",
            )
        session = self._store(
            so.portal_session(
                bps_id=so.new_id("bps"),
                customer_id=cust["id"],
                created=self._now(),
                return_url=ctx.params.get("return_url"),
                flow_type=flow_type,
                locale=ctx.params.get("locale"),
            )
        )
        return self._render(session, ctx)

    # ------------------------------------------------------------------------- state helpers

    def _now(self) -> int:
        moment = self.clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._objs[obj["id"]] = obj
        self._by_type[obj["object"]].append(obj["id"])
        return obj

    def _view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` in the account's shape: events, previous_attributes, inspection helpers."""
        rendered: dict[str, Any] = so.view(obj, self.api_shape)
        return rendered

    def _out(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` in the shape of the API request being answered."""
        rendered: dict[str, Any] = so.view(obj, self._reply_shape or self.api_shape)
        return rendered

    def _shape_for(self, stripe_version: str | None) -> Shape:
        if not self.honor_stripe_version or not stripe_version:
            return self.api_shape
        return "basil" if stripe_version[:10] >= "2025-03-31" else "acacia"

    def _visible(self, kind: str) -> bool:
        return kind != "invoice_payment" or (self._reply_shape or self.api_shape) == "basil"

    def _lookup(self, object_id: str) -> dict[str, Any] | None:
        obj = self._objs.get(object_id)
        return self._out(obj) if obj is not None and self._visible(obj["object"]) else None

    def _render(self, obj: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        return so.expand(self._out(obj), so.expand_paths(ctx.params), self._lookup)

    def _fetch(self, kind: str, object_id: str, *, param: str = "id") -> dict[str, Any]:
        obj = self._objs.get(object_id)
        if obj is None or obj["object"] != kind or not self._visible(kind):
            raise resource_missing(_KIND_LABEL.get(kind, kind), object_id, param)
        return obj

    def _require(self, kind: str, object_id: str) -> dict[str, Any]:
        obj = self._objs.get(object_id)
        if obj is None or obj["object"] != kind:
            raise KeyError(f"no such {kind}: {object_id}")
        return obj

    @staticmethod
    def _check_params(ctx: _Ctx, allowed: set[str]) -> None:
        for name in ctx.params:
            if name not in allowed:
                raise invalid_request(
                    f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
                )

    def _emit(
        self, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> None:
        evt = so.event(
            evt_id=so.new_id("evt"),
            type_=type_,
            obj=self._view(obj),
            api_version=so.API_VERSIONS[self.api_shape],
            created=self._now(),
            previous=previous,
            request=self._request,
            pending_webhooks=1 if self.webhook_url else 0,
        )
        self._store(evt)
        self.events.append(evt)
        self._pending[evt["id"]] = None

    def _emit_update(self, type_: str, obj: dict[str, Any], before: dict[str, Any]) -> None:
        previous = so.diff_previous(before, self._view(obj))
        if previous:
            self._emit(type_, obj, previous)

    def _new_payment_method(
        self, pm_id: str, cust: dict[str, Any], spec: CardSpec
    ) -> dict[str, Any]:
        card = so.card_details(
            brand=spec.brand,
            last4=spec.last4,
            exp_month=spec.exp_month,
            exp_year=spec.exp_year,
            fingerprint=spec.fingerprint or so.new_fingerprint(),
            funding=spec.funding,
            country=spec.country,
        )
        pm = self._store(
            so.payment_method(
                pm_id=pm_id,
                customer_id=cust["id"],
                created=self._now(),
                email=cust["email"],
                name=cust["name"],
                card=card,
            )
        )
        self._scripts[pm_id] = _script(spec)
        return pm

    def _new_discount(self, spec: CouponSpec, sub: dict[str, Any], currency: str) -> dict[str, Any]:
        now = self._now()
        cpn = self._store(
            so.coupon(
                coupon_id=so.new_id("cpn", 8),
                percent_off=spec.percent_off,
                amount_off=spec.amount_off,
                currency=currency,
                duration=spec.duration,
                duration_in_months=spec.duration_in_months,
                created=now,
            )
        )
        months = spec.duration_in_months if spec.duration == "repeating" else None
        return self._store(
            so.discount(
                di_id=so.new_id("di"),
                cpn=cpn,
                customer_id=sub["customer"],
                sub_id=sub["id"],
                start=now,
                end=so.add_interval(now, "month", months) if months else None,
            )
        )

    def _refresh_card(self, pm: dict[str, Any], spec: CardSpec) -> dict[str, Any]:
        before = self._view(pm)
        card = pm["card"]
        fingerprint = spec.fingerprint or (
            card["fingerprint"] if spec.last4 == card["last4"] else so.new_fingerprint()
        )
        card.update(
            brand=spec.brand,
            display_brand=spec.brand,
            last4=spec.last4,
            exp_month=spec.exp_month,
            exp_year=spec.exp_year,
            fingerprint=fingerprint,
            funding=spec.funding,
            country=spec.country,
        )
        self._scripts[pm["id"]] = _script(spec)
        self._emit(
            "payment_method.automatically_updated", pm, so.diff_previous(before, self._view(pm))
        )
        return pm

    def _default_pm(self, inv: dict[str, Any]) -> str:
        sub = self._objs[inv["subscription"]]
        cust = self._objs[inv["customer"]]
        pm_id: str = (
            sub["default_payment_method"] or cust["invoice_settings"]["default_payment_method"]
        )
        return pm_id

    def _finalize(self, inv: dict[str, Any], cust: dict[str, Any]) -> None:
        now = self._now()
        number = f"{cust['invoice_prefix']}-{cust['next_invoice_sequence']:04d}"
        cust["next_invoice_sequence"] += 1
        inv.update(
            status="open",
            number=number,
            effective_at=now,
            webhooks_delivered_at=now,
            hosted_invoice_url=f"https://invoice.stripe.test/i/{inv['id']}",
            invoice_pdf=f"https://invoice.stripe.test/i/{inv['id']}/pdf",
        )
        inv["status_transitions"]["finalized_at"] = now

    def _cancel(
        self, sub: dict[str, Any], reason: str, comment: str | None, feedback: str | None
    ) -> None:
        now = self._now()
        sub.update(
            status="canceled",
            canceled_at=now,
            ended_at=now,
            cancel_at=None,
            cancellation_details={"comment": comment, "feedback": feedback, "reason": reason},
        )
        for inv_id in self._by_type["invoice"]:  # Stripe stops automatic collection
            inv = self._objs[inv_id]
            if inv["subscription"] == sub["id"] and inv["status"] == "open":
                inv["auto_advance"] = False
        self._emit("customer.subscription.deleted", sub)

    # ---------------------------------------------------------------------------- payments

    def _attempt(self, inv: dict[str, Any], pm_id: str, *, automatic: bool) -> str:
        """One charge attempt: "paid", "declined" or "action_required"."""
        outcome = self._scripts[pm_id].next()
        self._attempts[inv["id"]] += 1
        pi = self._payment_intent_for(inv, pm_id)
        inv["attempted"] = True
        if automatic or inv["attempt_count"] == 0:
            inv["attempt_count"] += 1
        pm = self._objs[pm_id]
        if not isinstance(outcome, Decline):
            self._settle_paid(inv, pi, pm)
            return "paid"
        fields = outcome.details()
        error = {
            "type": "card_error",
            **{
                k: fields[k]
                for k in (
                    "code",
                    "decline_code",
                    "advice_code",
                    "network_decline_code",
                    "network_advice_code",
                    "message",
                )
            },
            "charge": None,
            "doc_url": so.doc_url(fields["code"]),
            "payment_method": self._view(pm),
        }
        if outcome.requires_action:
            pi.update(
                status="requires_action",
                last_payment_error=error,
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "stripe_js": f"https://hooks.stripe.test/3d_secure_2/{pi['id']}",
                    },
                },
            )
            self._emit("payment_intent.requires_action", pi)
            self._emit("invoice.payment_action_required", inv)
            self._subscription_after_attempt(inv, paid=False)
            return "action_required"
        ch = self._store(
            so.charge(ch_id=so.new_id("ch"), pi=pi, pm=pm, created=self._now(), decline=fields)
        )
        error["charge"] = ch["id"]
        pi.update(
            status="requires_payment_method",
            latest_charge=ch["id"],
            last_payment_error=error,
            next_action=None,
        )
        inv["charge"] = ch["id"]
        self._emit("charge.failed", ch)
        self._emit("payment_intent.payment_failed", pi)
        self._emit("invoice.payment_failed", inv)
        self._subscription_after_attempt(inv, paid=False)
        return "declined"

    def _payment_intent_for(self, inv: dict[str, Any], pm_id: str) -> dict[str, Any]:
        if inv["payment_intent"] is None:
            now = self._now()
            pi = self._store(
                so.payment_intent(pi_id=so.new_id("pi"), inv=inv, created=now, pm_id=pm_id)
            )
            inpay = self._store(
                so.invoice_payment(
                    inpay_id=so.new_id("inpay"), inv=inv, pi_id=pi["id"], created=now
                )
            )
            inv["payment_intent"], inv["_payment"] = pi["id"], inpay["id"]
        pi = self._objs[inv["payment_intent"]]
        pi["payment_method"] = pm_id
        return pi

    def _settle_paid(self, inv: dict[str, Any], pi: dict[str, Any], pm: dict[str, Any]) -> None:
        now = self._now()
        ch = self._store(so.charge(ch_id=so.new_id("ch"), pi=pi, pm=pm, created=now, decline=None))
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=ch["id"],
            last_payment_error=None,
            next_action=None,
        )
        self._mark_invoice_paid(inv, now)
        inv["charge"] = ch["id"]
        inpay = self._objs[inv["_payment"]]
        inpay.update(status="paid", amount_paid=inv["amount_paid"])
        inpay["status_transitions"]["paid_at"] = now
        self._emit("charge.succeeded", ch)
        self._emit("payment_intent.succeeded", pi)
        self._emit("invoice.paid", inv)
        self._emit("invoice.payment_succeeded", inv)
        self._subscription_after_attempt(inv, paid=True)

    def _mark_paid_out_of_band(self, inv: dict[str, Any]) -> None:
        self._mark_invoice_paid(inv, self._now())
        inv["paid_out_of_band"] = True
        self._emit("invoice.paid", inv)
        self._subscription_after_attempt(inv, paid=True)

    @staticmethod
    def _mark_invoice_paid(inv: dict[str, Any], now: int) -> None:
        inv.update(
            status="paid",
            paid=True,
            amount_paid=inv["amount_due"],
            amount_remaining=0,
            auto_advance=False,
        )
        inv["status_transitions"]["paid_at"] = now

    def _subscription_after_attempt(self, inv: dict[str, Any], *, paid: bool) -> None:
        sub = self._objs[inv["subscription"]]
        if sub["latest_invoice"] != inv["id"]:
            return
        flips = {("past_due", True): "active", ("active", False): "past_due"}
        status = flips.get((sub["status"], paid))
        if status is not None:
            before = self._view(sub)
            sub["status"] = status
            self._emit_update("customer.subscription.updated", sub, before)


def _script(spec: CardSpec) -> _CardScript:
    for outcome in spec.outcomes:
        if not isinstance(outcome, Decline) and outcome != SUCCEED:
            raise ValueError(f"card outcome must be a Decline or SUCCEED, not {outcome!r}")
    return _CardScript(list(spec.outcomes))


def _created_in(obj: dict[str, Any], bounds: Any) -> bool:
    """Stripe's `created` list filter: a timestamp, or `created[gt|gte|lt|lte]`."""
    if bounds is None:
        return True
    if not isinstance(bounds, dict):
        return bool(obj["created"] == int(bounds))
    tests = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
    return all(tests[op](obj["created"], int(v)) for op, v in bounds.items() if op in tests)


def _matcher(*names: str) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    """A list filter: every named query param, when given, must equal the object's field."""

    def keep(obj: dict[str, Any], params: dict[str, Any]) -> bool:
        return all(params.get(n) in (None, obj.get(n)) for n in names)

    return keep
