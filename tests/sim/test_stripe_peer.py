# mypy: disable-error-code="union-attr, attr-defined, index, operator"
# (the stripe library types most fields Optional or shape-specific; these tests know better)
"""The simulated Stripe peer, driven over real HTTP on loopback through the official `stripe`
library (no mocks): decline bodies, idempotency, faults, both API shapes, signed webhooks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import stripe
import uvicorn

from worker.clock import ManualClock
from worker.sim.stripe_objects import decode_params
from worker.sim.stripe_peer import (
    AUTHENTICATION_REQUIRED,
    EXPIRED_CARD,
    SUCCEED,
    CardSpec,
    Decline,
    StripePeer,
)

API_KEY = "sk_test_peer0123456789abcdef"
SECRET = "whsec_peer_test"
START = datetime(2031, 1, 15, 9, 30, tzinfo=UTC)  # far from wall time on purpose
DECLINE = Decline(
    decline_code="insufficient_funds",
    advice_code="try_again_later",
    network_decline_code="51",
    network_advice_code="02",
)

Start = Callable[..., tuple[StripePeer, stripe.StripeClient]]


def client_for(url: str, key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


class AppSwitch:
    """One loopback server for the module whose ASGI app each test swaps in: uvicorn needs
    ~0.2 s to stop, so a server per test would dominate the run. `serve()` itself is tested
    in test_api_key_is_required_when_configured."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[str, AppSwitch]]:
    switch = AppSwitch()
    server = uvicorn.Server(
        uvicorn.Config(switch, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", switch
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def start(clock: ManualClock, shared_server: tuple[str, AppSwitch]) -> Iterator[Start]:
    url, switch = shared_server
    peers: list[StripePeer] = []

    def _start(**kwargs: Any) -> tuple[StripePeer, stripe.StripeClient]:
        peer = StripePeer(clock=clock.now, api_key=API_KEY, webhook_secret=SECRET, **kwargs)
        switch.app = peer.asgi_app
        peers.append(peer)
        return peer, client_for(url)

    yield _start
    for peer in peers:
        peer.close()


class Receiver:
    """A tiny webhook endpoint on loopback that stores raw bodies and signatures."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, str]] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        self.url = ""

    def answer(self, body: bytes, signature: str) -> int:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                return 500
            self.deliveries.append((body, signature))
            return 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(rec.answer(body, self.headers["Stripe-Signature"]))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe"
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(5)


def new_subscription(peer: StripePeer, *outcomes: Decline | str, **card: Any) -> tuple[str, str]:
    cus = peer.create_customer(
        email="ada@example.com",
        name="Ada Lovelace",
        card=CardSpec(outcomes=list(outcomes or [SUCCEED]), **card),
        timezone="Europe/London",
        locale="en-GB",
    )
    return cus, peer.create_subscription(customer_id=cus, unit_amount=2900)


def types(peer: StripePeer) -> list[str]:
    return [e["type"] for e in peer.events]


# --------------------------------------------------------------------------------- declines


def test_declined_pay_is_a_402_card_error_with_all_decline_codes(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE)
    inv_id, paid = peer.bill(sub)
    assert not paid
    assert types(peer)[-4:] == [
        "charge.failed",
        "payment_intent.payment_failed",
        "invoice.payment_failed",
        "customer.subscription.updated",
    ]

    with pytest.raises(stripe.CardError) as caught:
        client.v1.invoices.pay(inv_id, options={"idempotency_key": "retry-1"})
    err = caught.value
    assert err.http_status == 402
    assert err.code == "card_declined"
    assert err.error is not None
    assert (err.error.decline_code, err.error.advice_code) == (
        "insufficient_funds",
        "try_again_later",
    )
    assert (err.error.network_decline_code, err.error.network_advice_code) == ("51", "02")
    assert err.error.message == "Your card has insufficient funds."
    assert err.error.payment_intent is not None
    assert err.error.payment_intent.status == "requires_payment_method"
    assert err.error.payment_intent.last_payment_error.decline_code == "insufficient_funds"
    assert err.error.payment_method is not None
    assert err.error.payment_method.card.last4 == "4242"

    charge = client.v1.charges.retrieve(str(err.error.charge))
    assert charge.status == "failed"
    assert charge.failure_code == "card_declined"
    assert charge.outcome.type == "issuer_declined"
    assert charge.outcome.reason == "insufficient_funds"
    assert charge.outcome.network_status == "declined_by_network"
    assert charge.payment_method_details.card.fingerprint

    invoice = client.v1.invoices.retrieve(inv_id)
    assert (invoice.status, invoice.attempt_count, invoice.attempted) == ("open", 1, True)
    assert invoice.next_payment_attempt is None
    assert peer.charge_attempts(inv_id) == 2
    assert types(peer).count("invoice.payment_failed") == 2  # manual attempts emit it too
    assert peer.events[-1]["request"]["idempotency_key"] == "retry-1"


def test_blocked_decline_is_not_sent_to_the_network(start: Start) -> None:
    peer, _ = start()
    blocked = Decline(
        decline_code="generic_decline",
        outcome_type="blocked",
        outcome_reason="previously_declined_do_not_retry",
        network_decline_code="05",
    )
    _, sub = new_subscription(peer, blocked)
    peer.bill(sub)
    charge = next(e["data"]["object"] for e in peer.events if e["type"] == "charge.failed")
    assert charge["outcome"]["type"] == "blocked"
    assert charge["outcome"]["network_status"] == "not_sent_to_network"
    assert charge["outcome"]["reason"] == "previously_declined_do_not_retry"
    assert charge["outcome"]["network_decline_code"] is None


# ------------------------------------------------------------------------------ idempotency


def test_repeated_idempotency_key_replays_without_a_second_charge(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            client.v1.invoices.pay(inv_id, options={"idempotency_key": "inv-attempt-2"})
        errors.append(caught.value)
        if len(errors) == 1:
            attempts, events = peer.charge_attempts(inv_id), len(peer.events)

    first, second = errors
    assert first.error is not None and second.error is not None
    assert first.error.charge == second.error.charge
    assert second.headers["Idempotent-Replayed"] == "true"
    assert peer.charge_attempts(inv_id) == attempts
    assert len(peer.events) == events
    assert [r.replayed for r in peer.requests[-2:]] == [False, True]


def test_same_key_with_other_params_is_an_idempotency_error(start: Start) -> None:
    peer, client = start()
    cus, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(inv_id, options={"idempotency_key": "k"})
    pm = client.v1.customers.retrieve(cus).invoice_settings.default_payment_method
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.invoices.pay(
            inv_id, {"payment_method": str(pm)}, options={"idempotency_key": "k"}
        )
    assert caught.value.http_status == 400
    assert peer.charge_attempts(inv_id) == 2


def test_concurrent_request_with_the_same_key_gets_409(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, SUCCEED)
    inv_id, _ = peer.bill(sub)  # paid; a pay then answers 400 "already paid" (saved)
    peer.latency = 0.3
    statuses: list[int] = []

    def pay() -> None:
        try:
            client.v1.invoices.pay(inv_id, options={"idempotency_key": "same"})
        except stripe.StripeError as exc:
            statuses.append(exc.http_status or 0)

    threads = [threading.Thread(target=pay) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    assert sorted(statuses) == [400, 409]


def test_validation_errors_are_not_saved_for_the_key(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE, SUCCEED)
    inv_id, _ = peer.bill(sub)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.pay(
            inv_id,
            {"bogus": "1"},  # type: ignore[arg-type]
            options={"idempotency_key": "v"},
        )
    assert caught.value.param == "bogus"
    assert client.v1.invoices.pay(inv_id, options={"idempotency_key": "v"}).status == "paid"


# -------------------------------------------------------------------------------- successes


def test_successful_pay_marks_paid_and_reactivates_the_subscription(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE, SUCCEED)
    inv_id, _ = peer.bill(sub)
    assert client.v1.subscriptions.retrieve(sub).status == "past_due"

    invoice = client.v1.invoices.pay(inv_id, options={"idempotency_key": "k2"})
    assert (invoice.status, invoice.amount_paid, invoice.amount_remaining) == ("paid", 2900, 0)
    assert invoice.status_transitions.paid_at == int(START.timestamp())
    assert types(peer)[-5:] == [
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ]
    assert peer.events[-1]["data"]["previous_attributes"] == {"status": "past_due"}
    assert client.v1.subscriptions.retrieve(sub).status == "active"

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.pay(inv_id)
    assert caught.value.http_status == 400
    assert "already paid" in str(caught.value.user_message)


def test_bill_uses_the_clock_and_advances_the_period(start: Start, clock: ManualClock) -> None:
    peer, client = start()
    _, sub = new_subscription(peer)
    clock.advance(timedelta(days=31))
    inv_id, paid = peer.bill(sub)
    assert paid
    invoice = client.v1.invoices.retrieve(inv_id)
    assert invoice.created == int((START + timedelta(days=31)).timestamp())
    assert invoice.lines.data[0].period.start == int(
        datetime(2031, 2, 15, 9, 30, tzinfo=UTC).timestamp()
    )
    assert invoice.hosted_invoice_url == f"https://invoice.stripe.test/i/{inv_id}"
    assert invoice.billing_reason == "subscription_cycle"
    assert invoice.customer_email == "ada@example.com"
    assert types(peer)[:4] == [
        "customer.created",
        "payment_method.attached",
        "customer.subscription.created",
        "customer.subscription.updated",
    ]
    assert "invoice.created" in types(peer) and "invoice.finalized" in types(peer)


# ----------------------------------------------------------------------------------- faults


def test_injected_500_carries_should_retry_and_has_no_effect(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE, SUCCEED)
    inv_id, _ = peer.bill(sub)
    peer.inject_fault(method="POST", path_prefix="/v1/invoices/", status=500, should_retry=True)
    events = len(peer.events)
    with pytest.raises(stripe.APIError) as caught:
        client.v1.invoices.pay(inv_id, options={"idempotency_key": "k3"})
    assert caught.value.http_status == 500
    assert caught.value.headers["Stripe-Should-Retry"] == "true"
    assert peer.charge_attempts(inv_id) == 1
    assert len(peer.events) == events
    # the fault was not saved under the key: the retry runs for real
    assert client.v1.invoices.pay(inv_id, options={"idempotency_key": "k3"}).status == "paid"


def test_injected_429_is_a_rate_limit_error(start: Start) -> None:
    peer, client = start()
    peer.inject_fault(
        method="GET", path_prefix="/v1/customers", status=429, times=2, should_retry=False
    )
    cus, _ = new_subscription(peer)
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError) as caught:
            client.v1.customers.retrieve(cus)
        assert caught.value.headers["Stripe-Should-Retry"] == "false"
    assert client.v1.customers.retrieve(cus).id == cus


# ----------------------------------------------------------------------------------- shapes


def test_acacia_invoice_carries_payment_intent_charge_and_subscription(start: Start) -> None:
    peer, client = start(api_shape="acacia")
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    invoice = client.v1.invoices.retrieve(inv_id, {"expand": ["payment_intent"]})
    assert "parent" not in invoice
    assert (invoice.subscription, invoice.paid) == (sub, False)
    assert invoice.payment_intent.last_payment_error.decline_code == "insufficient_funds"
    assert invoice.charge == invoice.payment_intent.latest_charge
    assert invoice.payment_intent.invoice == inv_id
    assert client.v1.subscriptions.retrieve(sub).current_period_end > int(START.timestamp())
    assert {e["api_version"] for e in peer.events} == {"2024-06-20"}
    failed = next(e for e in peer.events if e["type"] == "invoice.payment_failed")
    assert failed["data"]["object"]["payment_intent"].startswith("pi_")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoice_payments.list({"invoice": inv_id})
    assert caught.value.http_status == 404


def test_basil_invoice_has_parent_and_invoice_payments_expand(start: Start) -> None:
    peer, client = start(api_shape="basil")
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    invoice = client.v1.invoices.retrieve(inv_id)
    assert invoice.parent.subscription_details.subscription == sub
    for removed in ("payment_intent", "charge", "paid", "subscription"):
        assert removed not in invoice
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.retrieve(inv_id, {"expand": ["payment_intent"]})

    payments = client.v1.invoice_payments.list(
        {"invoice": inv_id, "expand": ["data.payment.payment_intent"]}
    )
    assert len(payments.data) == 1
    payment = payments.data[0]
    assert (payment.invoice, payment.status, payment.payment.type) == (
        inv_id,
        "open",
        "payment_intent",
    )
    pi = payment.payment.payment_intent
    assert pi.last_payment_error.advice_code == "try_again_later"
    assert "invoice" not in pi
    assert peer.requests[-1].params == {
        "invoice": inv_id,
        "expand": ["data.payment.payment_intent"],
    }
    assert client.v1.payment_intents.retrieve(pi.id).status == "requires_payment_method"
    item = client.v1.subscriptions.retrieve(sub).items.data[0]
    assert item.current_period_end > item.current_period_start
    assert {e["api_version"] for e in peer.events} == {"2025-03-31.basil"}


def test_honor_stripe_version_shapes_responses_per_request(start: Start) -> None:
    peer, client = start(api_shape="acacia", honor_stripe_version=True)
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    latest = client.v1.invoices.retrieve(inv_id)  # stripe 16.1 sends a post-basil version
    assert "payment_intent" not in latest and latest.parent.type == "subscription_details"
    assert len(client.v1.invoice_payments.list({"invoice": inv_id}).data) == 1
    pinned = client.v1.invoices.retrieve(inv_id, options={"stripe_version": "2024-06-20"})
    assert pinned.payment_intent.startswith("pi_") and "parent" not in pinned
    failed = next(e for e in peer.events if e["type"] == "invoice.payment_failed")
    assert failed["api_version"] == "2024-06-20"  # events keep the endpoint's version
    assert failed["data"]["object"]["payment_intent"] == pinned.payment_intent


# --------------------------------------------------------------------------------- webhooks


def test_webhooks_are_signed_like_stripe_and_verify(start: Start, receiver: Receiver) -> None:
    peer, _ = start(webhook_url=receiver.url)
    _, sub = new_subscription(peer, DECLINE)
    peer.bill(sub)
    assert receiver.deliveries == []  # auto_deliver is off
    assert peer.deliver_pending() == len(peer.events)
    assert peer.deliver_pending() == 0

    delivered_ids = []
    for body, header in receiver.deliveries:
        stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=300)
        event = stripe.Webhook.construct_event(body, header, SECRET, tolerance=300)
        delivered_ids.append(event.id)
        assert abs(int(header.split(",")[0][2:]) - time.time()) < 60  # wall clock
        assert event.created == int(START.timestamp())  # injected clock
    assert delivered_ids == [e["id"] for e in peer.events]

    body, header = peer.signed_payload(peer.events[0])
    stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_other", 300)


def test_failed_delivery_stays_pending_until_it_succeeds(start: Start, receiver: Receiver) -> None:
    peer, _ = start(webhook_url=receiver.url)
    new_subscription(peer)
    receiver.fail_next = 1
    assert peer.deliver_pending() == len(peer.events) - 1
    assert peer.pending_events() == [peer.events[0]["id"]]
    assert peer.deliver_pending() == 1
    assert peer.pending_events() == []
    assert peer.redeliver(peer.events[0]["id"]) == 200
    assert len(receiver.deliveries) == len(peer.events) + 1


def test_auto_deliver_posts_after_control_and_api_calls(start: Start, receiver: Receiver) -> None:
    peer, client = start(webhook_url=receiver.url)
    peer.auto_deliver = True
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    assert len(receiver.deliveries) == len(peer.events)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(inv_id)
    deadline = time.monotonic() + 5  # delivery runs after the response has been sent
    while peer.pending_events() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(receiver.deliveries) == len(peer.events)
    assert peer.pending_events() == []


# ------------------------------------------------------------------------------------ cards


def test_network_updater_refreshes_the_same_payment_method(start: Start) -> None:
    peer, client = start()
    cus, sub = new_subscription(peer, EXPIRED_CARD, exp_year=2030)
    inv_id, paid = peer.bill(sub)
    assert not paid
    pm_id = str(client.v1.customers.retrieve(cus).invoice_settings.default_payment_method)
    fingerprint = client.v1.payment_methods.retrieve(pm_id).card.fingerprint

    new_pm = peer.update_card(cus, CardSpec(exp_year=2034), via="network_updater")
    assert new_pm == pm_id
    event = peer.events[-1]
    assert event["type"] == "payment_method.automatically_updated"
    assert event["data"]["object"]["card"]["exp_year"] == 2034
    assert event["data"]["previous_attributes"] == {"card": {"exp_year": 2030}}
    assert client.v1.payment_methods.retrieve(pm_id).card.fingerprint == fingerprint
    assert client.v1.invoices.pay(inv_id).status == "paid"


def test_customer_adds_a_new_card(start: Start) -> None:
    peer, client = start()
    cus, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    old_pm = peer.get(cus)["invoice_settings"]["default_payment_method"]
    new_pm = peer.update_card(cus, CardSpec(brand="mastercard", last4="4444"), via="customer")
    assert new_pm != old_pm
    assert types(peer)[-2:] == ["payment_method.attached", "customer.updated"]
    assert peer.events[-1]["data"]["previous_attributes"] == {
        "invoice_settings": {"default_payment_method": old_pm}
    }
    customer = client.v1.customers.retrieve(
        cus, {"expand": ["invoice_settings.default_payment_method"]}
    )
    assert customer.invoice_settings.default_payment_method.card.last4 == "4444"
    assert client.v1.invoices.pay(inv_id).status == "paid"


def test_authentication_required_then_customer_pays_on_hosted_page(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, AUTHENTICATION_REQUIRED, AUTHENTICATION_REQUIRED, SUCCEED)
    inv_id, paid = peer.bill(sub)
    assert not paid
    assert types(peer)[-3:] == [
        "payment_intent.requires_action",
        "invoice.payment_action_required",
        "customer.subscription.updated",
    ]
    assert "invoice.payment_failed" not in types(peer)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.pay(inv_id)
    assert caught.value.code == "invoice_payment_intent_requires_action"
    assert caught.value.error is not None
    assert caught.value.error.payment_intent.status == "requires_action"
    assert peer.customer_pays_on_hosted_page(inv_id)
    assert peer.invoice(inv_id)["status"] == "paid"
    assert peer.charge_attempts(inv_id) == 3


# -------------------------------------------------------------------- subscriptions/invoices


def test_cancel_subscription_via_api_and_control(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer)
    canceled = client.v1.subscriptions.cancel(
        sub, {"cancellation_details": {"comment": "too expensive"}}
    )
    assert canceled.status == "canceled"
    assert canceled.ended_at == canceled.canceled_at == int(START.timestamp())
    assert (canceled.cancellation_details.reason, canceled.cancellation_details.comment) == (
        "cancellation_requested",
        "too expensive",
    )
    assert peer.requests[-1].method == "DELETE"
    assert peer.requests[-1].params == {"cancellation_details": {"comment": "too expensive"}}
    assert peer.events[-1]["type"] == "customer.subscription.deleted"

    _, other = new_subscription(peer)
    peer.cancel_subscription(other, reason="payment_failed")
    deleted = peer.events[-1]["data"]["object"]
    assert deleted["cancellation_details"]["reason"] == "payment_failed"


def test_update_subscription_pause_and_metadata(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer)
    updated = client.v1.subscriptions.update(
        sub, {"pause_collection": {"behavior": "void"}, "metadata": {"dunning": "paused"}}
    )
    assert updated.pause_collection.behavior == "void"
    assert updated.metadata["dunning"] == "paused"
    assert peer.events[-1]["data"]["previous_attributes"] == {
        "pause_collection": None,
        "metadata": {"dunning": None},
    }  # Stripe marks new keys null
    resumed = client.v1.subscriptions.update(sub, {"pause_collection": ""})
    assert resumed.pause_collection is None


def test_mark_uncollectible_then_void(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer, DECLINE)
    inv_id, _ = peer.bill(sub)
    assert client.v1.invoices.mark_uncollectible(inv_id).status == "uncollectible"
    assert peer.events[-1]["type"] == "invoice.marked_uncollectible"
    voided = client.v1.invoices.void_invoice(inv_id)
    assert voided.status == "void"
    assert types(peer)[-2:] == ["invoice.voided", "payment_intent.canceled"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(inv_id)
    assert [i.id for i in client.v1.invoices.list({"subscription": sub}).data] == [inv_id]


def test_billing_portal_session(start: Start) -> None:
    peer, client = start()
    cus, _ = new_subscription(peer)
    session = client.v1.billing_portal.sessions.create(
        {
            "customer": cus,
            "return_url": "https://app.example/billing",
            "flow_data": {"type": "payment_method_update"},
        }
    )
    assert session.object == "billing_portal.session"
    assert session.url == f"https://billing.stripe.test/p/session/{session.id}"
    assert session.id.startswith("bps_")
    assert (session.customer, session.return_url) == (cus, "https://app.example/billing")
    assert peer.requests[-1].params["flow_data"] == {"type": "payment_method_update"}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.billing_portal.sessions.create({"customer": "cus_missing"})
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


# ----------------------------------------------------------------------- retrieval and auth


def test_retrieve_objects_and_missing_ones(start: Start) -> None:
    peer, client = start()
    cus, sub = new_subscription(peer)
    customer = client.v1.customers.retrieve(cus)
    assert customer.metadata["timezone"] == "Europe/London"
    assert customer.preferred_locales == ["en-GB"]
    pm = client.v1.payment_methods.retrieve(str(customer.invoice_settings.default_payment_method))
    assert (pm.card.brand, pm.card.funding, pm.customer) == ("visa", "credit", cus)
    price = client.v1.subscriptions.retrieve(sub).items.data[0].price
    assert (price.unit_amount, price.currency, price.recurring.interval) == (2900, "usd", "month")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.retrieve("in_missing")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
    events = client.v1.events.list({"type": "customer.*"})
    assert [e.type for e in events.data] == ["customer.subscription.created", "customer.created"]


def test_requests_record_what_the_stripe_library_sends(start: Start) -> None:
    peer, client = start()
    _, sub = new_subscription(peer)
    client.v1.subscriptions.update(sub, {"metadata": {"a": "1"}})
    request = peer.requests[-1]
    assert request.idempotency_key  # stripe 16 adds a random key to every POST
    assert request.stripe_version and request.stripe_version[:2] == "20"
    assert request.params == {"metadata": {"a": "1"}}


def test_api_key_is_required_when_configured(start: Start) -> None:
    peer, _ = start()
    cus, _ = new_subscription(peer)
    with peer.serve() as base:
        with pytest.raises(stripe.AuthenticationError) as caught:
            client_for(base, "sk_test_wrong_key_000000").v1.customers.retrieve(cus)
        assert caught.value.http_status == 401
        assert "Invalid API Key provided" in str(caught.value.user_message)
        bare = httpx.get(f"{base}/v1/customers/{cus}")
        assert bare.status_code == 401
        assert bare.json()["error"]["type"] == "invalid_request_error"
        unknown = httpx.get(f"{base}/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"})
        assert unknown.status_code == 404
        assert "Unrecognized request URL" in unknown.json()["error"]["message"]


def test_decode_params_reads_bracket_notation() -> None:
    pairs = [
        ("expand[0]", "a"),
        ("expand[1]", "b.c"),
        ("flow_data[type]", "x"),
        ("items[0][price]", "p"),
        ("items[0][quantity]", "2"),
        ("tags[]", "t1"),
        ("tags[]", "t2"),
        ("plain", ""),
    ]
    assert decode_params(pairs) == {
        "expand": ["a", "b.c"],
        "flow_data": {"type": "x"},
        "items": [{"price": "p", "quantity": "2"}],
        "tags": ["t1", "t2"],
        "plain": "",
    }
