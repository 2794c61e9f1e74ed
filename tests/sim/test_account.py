# mypy: disable-error-code="union-attr"
# (the stripe library types most fields Optional; these tests know better)
"""The demo's simulated account (worker.sim.account) and the peer controls it plays its past
with: Stripe's own retries, ending for non-payment, seat changes, the bank's script, and a
webhook endpoint added late. Driven through the control API and read back over HTTP with the
official `stripe` library, as ``dunning backfill`` reads it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import stripe

from worker.clock import ManualClock, use_clock
from worker.sim.account import EARLIEST, months, plan_account, play_past
from worker.sim.population import make_population
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer

API_KEY = "sk_test_account0123456789"
LIVE = datetime(2026, 3, 1, 9, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    manual = ManualClock(datetime(2025, 1, 2, 10, tzinfo=UTC))
    with use_clock(manual):
        yield manual


def _customer(peer: StripePeer) -> tuple[str, str]:
    cus = peer.create_customer(email="ada@example.com", name="Ada", card=CardSpec())
    return cus, peer.create_subscription(customer_id=cus, unit_amount=2900, currency="eur")


def test_provider_retry_collects_and_a_later_endpoint_gets_only_newer_events(
    clock: ManualClock,
) -> None:
    peer = StripePeer(api_key=API_KEY)
    cus, sub = _customer(peer)
    peer.script_card(cus, [INSUFFICIENT_FUNDS, SUCCEED])
    clock.advance(timedelta(days=31))
    invoice, paid = peer.bill(sub)
    assert not paid
    assert peer.get(sub)["status"] == "past_due"
    clock.advance(timedelta(days=3))
    assert peer.provider_retry(invoice)
    got = peer.invoice(invoice)
    assert (got["status"], got["attempt_count"]) == ("paid", 2)
    assert peer.get(sub)["status"] == "active"
    assert peer.events[-2]["type"] == "invoice.payment_succeeded"
    assert peer.connect_endpoint("http://127.0.0.1:9/webhooks/stripe") == len(peer.events)
    assert peer.pending_events() == []
    peer.change_quantity(sub, 3)
    assert [e["type"] for e in peer.events[-1:]] == ["customer.subscription.updated"]
    assert peer.events[-1]["data"]["previous_attributes"]["items"]
    assert peer.get(sub)["items"]["data"][0]["quantity"] == 3
    assert len(peer.pending_events()) == 1  # only what happened after the endpoint was added


def test_retries_run_out_ends_for_non_payment(clock: ManualClock) -> None:
    peer = StripePeer(api_key=API_KEY)
    cus, sub = _customer(peer)
    peer.script_card(cus, [INSUFFICIENT_FUNDS])  # declined for good
    clock.advance(timedelta(days=31))
    invoice, _ = peer.bill(sub)
    assert not peer.provider_retry(invoice)
    peer.cancel_subscription(sub, reason="payment_failed")
    peer.mark_uncollectible(invoice)
    ended = peer.get(sub)
    assert (ended["status"], ended["cancellation_details"]["reason"]) == (
        "canceled",
        "payment_failed",
    )
    assert peer.next_renewal(sub) is None
    assert peer.invoice(invoice)["status"] == "uncollectible"
    with pytest.raises(ValueError, match="uncollectible"):
        peer.provider_retry(invoice)


def test_the_past_is_what_a_backfill_reads(clock: ManualClock) -> None:
    """Thirteen months before the live month, nothing in it; every live customer renews in
    its first ten days; the account's API lists ended subscriptions with their reasons and
    every invoice in the past."""
    population = make_population(40, seed=3)
    account = plan_account(population, seed=3, live_start=LIVE)
    assert account.first_month < months(LIVE, -(EARLIEST - 1))
    clock.set(account.first_month)
    peer = StripePeer(api_key=API_KEY)
    ids = play_past(peer, clock, account)
    assert clock.now() < LIVE
    for member in account.members:
        if member.live:
            renews = peer.next_renewal(ids[member.person.email].subs["main"])
            assert renews == (LIVE + member.person.bill_after).replace(microsecond=0)
    with peer.serve() as base:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": base})
        subs = list(
            client.v1.subscriptions.list({"status": "all", "limit": 100}).auto_paging_iter()
        )
        invoices = list(client.v1.invoices.list({"limit": 100}).auto_paging_iter())
    assert len(subs) == sum(len(m.plans) for m in account.members)
    reasons = Counter(s.cancellation_details.reason for s in subs if s.status == "canceled")
    assert reasons["payment_failed"] > 0
    assert reasons["cancellation_requested"] > 0
    assert {s.currency for s in subs} >= {"usd", "eur", "gbp"}
    assert Counter(i.status for i in invoices).keys() == {"paid", "uncollectible"}
    assert max(i.created for i in invoices) < LIVE.timestamp()
    assert any(i.attempt_count > 1 and i.status == "paid" for i in invoices)  # Stripe retried
    customers = Counter(s.customer for s in subs)
    assert any(n > 1 for n in customers.values())  # add-ons, or a return
    kinds = Counter(c.kind for c in account.changes)
    assert kinds.keys() == {"signup", "cancel", "buy_addon", "cancel_addon", "seats"}
    assert all(LIVE < c.at < LIVE + timedelta(days=30) for c in account.changes)
