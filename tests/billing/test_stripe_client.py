"""The Stripe gateway against the Stripe-compatible peer, through the official library."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from tests.support.processes import free_port
from worker.billing.stripe_client import (
    ProviderError,
    StripeGateway,
    TransientProviderError,
)
from worker.sim.stripe_peer import (
    AUTHENTICATION_REQUIRED,
    INSUFFICIENT_FUNDS,
    SUCCEED,
    CardSpec,
    Decline,
    StripePeer,
)

KEY = "sk_test_gateway"


@pytest.fixture(params=["basil", "acacia"])
def peer(request: pytest.FixtureRequest) -> Iterator[tuple[StripePeer, StripeGateway]]:
    stripe_peer = StripePeer(api_key=KEY, api_shape=request.param)
    with stripe_peer.serve() as base:
        yield stripe_peer, StripeGateway(KEY, api_base=base, wait=lambda _state: 0)


def _failed_invoice(peer: StripePeer, *outcomes: Decline | str) -> str:
    customer = peer.create_customer(
        email="a@example.com", name="A", card=CardSpec(brand="mastercard", outcomes=list(outcomes))
    )
    invoice_id, paid = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=1500))
    assert not paid
    return invoice_id


def pays(peer: StripePeer) -> list[tuple[int, str | None]]:
    return [(r.status, r.idempotency_key) for r in peer.requests if r.path.endswith("/pay")]


def test_a_decline_is_an_outcome_not_an_error(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    mac = Decline(decline_code="do_not_honor", network_decline_code="05", network_advice_code="24")
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, mac)
    result = gateway.pay_invoice(invoice_id, idempotency_key="k1")
    assert not result.succeeded
    assert result.decline is not None
    assert (result.decline.decline_code, result.decline.network_advice_code) == (
        "do_not_honor",
        "24",
    )
    assert result.decline.charge_id is not None
    assert result.decline.card is not None
    assert result.decline.card.brand == "mastercard"


def test_the_same_key_replays_instead_of_charging(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, SUCCEED)
    assert gateway.pay_invoice(invoice_id, idempotency_key="k-once").succeeded
    assert gateway.pay_invoice(invoice_id, idempotency_key="k-once").succeeded
    assert stripe_peer.charge_attempts(invoice_id) == 2  # the bill and one retry
    assert [r.replayed for r in stripe_peer.requests if r.path.endswith("/pay")] == [False, True]


def test_transient_errors_are_retried_with_the_same_key(
    peer: tuple[StripePeer, StripeGateway],
) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, SUCCEED)
    stripe_peer.inject_fault(
        method="POST", path_prefix="/v1/invoices/", status=500, should_retry=True
    )
    stripe_peer.inject_fault(method="POST", path_prefix="/v1/invoices/", status=409)
    stripe_peer.inject_fault(
        method="POST", path_prefix="/v1/invoices/", status=429, should_retry=True
    )
    assert gateway.pay_invoice(invoice_id, idempotency_key="k-t").succeeded
    assert pays(stripe_peer) == [(500, "k-t"), (409, "k-t"), (429, "k-t"), (200, "k-t")]


def test_should_retry_false_is_final(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, SUCCEED)
    stripe_peer.inject_fault(
        method="POST", path_prefix="/v1/invoices/", status=500, should_retry=False
    )
    with pytest.raises(ProviderError, match="HTTP 500"):
        gateway.pay_invoice(invoice_id, idempotency_key="k-f")
    assert pays(stripe_peer) == [(500, "k-f")]


def test_persistent_outage_surfaces_as_transient(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS)
    stripe_peer.inject_fault(method="POST", path_prefix="/v1/invoices/", status=503, times=10)
    with pytest.raises(TransientProviderError):
        gateway.pay_invoice(invoice_id, idempotency_key="k-o")
    assert len(pays(stripe_peer)) == 4  # tenacity's attempts, then Celery's turn


def test_nobody_listening_is_transient() -> None:
    gateway = StripeGateway(KEY, api_base=f"http://127.0.0.1:{free_port()}", wait=lambda _s: 0)
    with pytest.raises(TransientProviderError):
        gateway.pay_invoice("in_x", idempotency_key="k")


def test_authentication_is_an_outcome(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, AUTHENTICATION_REQUIRED)
    result = gateway.pay_invoice(invoice_id, idempotency_key="k-3ds")
    assert not result.succeeded
    assert result.requires_action


def test_a_permanent_refusal_is_a_provider_error(peer: tuple[StripePeer, StripeGateway]) -> None:
    _, gateway = peer
    with pytest.raises(ProviderError):
        gateway.pay_invoice("in_missing", idempotency_key="k-404")


def test_fetch_decline_for_an_invoice_event(peer: tuple[StripePeer, StripeGateway]) -> None:
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS)
    invoice = stripe_peer.invoice(invoice_id)
    pi = invoice.get("payment_intent")  # acacia names it; basil goes through invoice_payments
    decline = gateway.fetch_decline(invoice_id=invoice_id, payment_intent_id=pi, charge_id=None)
    assert decline.decline_code == "insufficient_funds"
    assert decline.advice_code == "try_again_later"
    assert decline.outcome_type == "issuer_declined"
    assert decline.charge_id is not None


def _attempts(operation: str) -> dict[str, float]:
    """``dunning_stripe_requests_total`` of ``operation`` by outcome, from the registry this
    process exposes on /metrics."""
    outcomes = (
        "ok",
        "declined",
        "rate_limited",
        "client_error",
        "server_error",
        "connection_error",
    )
    return {
        outcome: REGISTRY.get_sample_value(
            "dunning_stripe_requests_total", {"operation": operation, "outcome": outcome}
        )
        or 0.0
        for outcome in outcomes
    }


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_every_http_attempt_is_counted_by_outcome(peer: tuple[StripePeer, StripeGateway]) -> None:
    """Tenacity's retries count one by one, so a 429 storm shows in the metrics even when
    the call succeeds in the end."""
    stripe_peer, gateway = peer
    invoice_id = _failed_invoice(stripe_peer, INSUFFICIENT_FUNDS, INSUFFICIENT_FUNDS)
    stripe_peer.inject_fault(method="POST", path_prefix="/v1/invoices/", status=429)
    stripe_peer.inject_fault(
        method="POST", path_prefix="/v1/invoices/", status=500, should_retry=True
    )
    before = _attempts("invoices.pay")
    assert not gateway.pay_invoice(invoice_id, idempotency_key="k-count").succeeded
    assert pays(stripe_peer) == [(429, "k-count"), (500, "k-count"), (402, "k-count")]
    assert _moved(before, _attempts("invoices.pay")) == {
        "rate_limited": 1,
        "server_error": 1,
        "declined": 1,
    }

    before = _attempts("invoices.retrieve")
    assert gateway.invoice_status(invoice_id) == "open"
    stripe_peer.inject_fault(method="GET", path_prefix="/v1/invoices/", status=400)
    with pytest.raises(ProviderError):
        gateway.invoice_status(invoice_id)
    assert _moved(before, _attempts("invoices.retrieve")) == {"ok": 1, "client_error": 1}


def test_connection_errors_are_counted_per_attempt() -> None:
    gateway = StripeGateway(
        KEY, api_base=f"http://127.0.0.1:{free_port()}", wait=lambda _s: 0, attempts=3
    )
    before = _attempts("subscriptions.cancel")
    with pytest.raises(TransientProviderError):
        gateway.cancel_subscription("sub_x", idempotency_key="k")
    assert _moved(before, _attempts("subscriptions.cancel")) == {"connection_error": 3}
