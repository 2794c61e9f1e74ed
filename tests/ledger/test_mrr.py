"""MRR of one subscription (metrics.md "MRR"), and the discounts a webhook names by id only,
fetched from the Stripe-compatible peer before they are counted."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from worker.billing import mrr
from worker.billing.domain import DiscountFacts, SubscriptionFacts, SubscriptionItemFacts
from worker.ledger.models import MrrChange
from worker.runtime import Runtime
from worker.settings import Secret, Settings
from worker.sim.stripe_peer import SUCCEED, CardSpec, CouponSpec, StripePeer
from worker.webhooks.inbox import store_event
from worker.webhooks.service import process_stored_event

AT = datetime(2026, 3, 2, 12, tzinfo=UTC)


def item(
    amount: int, interval: str = "month", *, count: int = 1, quantity: int = 1, **kw: str
) -> SubscriptionItemFacts:
    return SubscriptionItemFacts("price", "prod", amount, quantity, interval, count, **kw)


def facts(*items: SubscriptionItemFacts, **kw: object) -> SubscriptionFacts:
    base = SubscriptionFacts(
        id="sub_1",
        customer_id="cus_1",
        status="active",
        currency="usd",
        items=items,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        cancellation_reason=None,
        current_period_end=None,
        default_payment_method_id=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def percent(p: str, duration: str = "forever", end: datetime | None = None) -> DiscountFacts:
    return DiscountFacts(Decimal(p), None, None, duration, end)


@pytest.mark.parametrize(
    ("subscription", "expected"),
    [
        (facts(item(12_000, "year")), 1_000),
        (facts(item(3_000, "month", count=3)), 1_000),  # quarterly
        (facts(item(1_000, "week")), 4_333),  # x 52 / 12 = 4,333.33
        (facts(item(100, "day")), 3_042),  # x 365 / 12 = 3,041.67
        (facts(item(1_250, quantity=4), item(999)), 5_999),
        (facts(item(5_000), item(20, usage_type="metered")), 5_000),  # usage is not MRR
        (facts(item(5_000), status="trialing"), 0),
        (facts(item(5_000), status="incomplete"), 0),
        (facts(item(5_000), status="paused"), 0),
        (facts(item(5_000), status="past_due"), 5_000),  # counts until it ends
        (facts(item(5_000), status="unpaid"), 5_000),
        (facts(item(5_000), status="canceled"), 0),
        (facts(item(5_000), discounts=(percent("12.5"),)), 4_375),
        (facts(item(5_000), discounts=(percent("50", "once"),)), 5_000),  # once: ignored
        (
            facts(
                item(12_000, "year"),
                discounts=(DiscountFacts(None, 1_200, "usd", "forever", None),),
            ),
            900,
        ),
        (facts(item(500), discounts=(DiscountFacts(None, 900, "usd", "forever", None),)), 0),
        (facts(item(1), item(2)), 3),
        (facts(item(5, "week")), 22),  # 21.666... rounds half-even once, at the end
    ],
)
def test_mrr_of_a_subscription(subscription: SubscriptionFacts, expected: int) -> None:
    assert mrr.state_at(subscription, AT).mrr == expected


def test_a_repeating_discount_runs_out_without_an_event() -> None:
    ends = AT + timedelta(days=90)
    state = mrr.state_at(facts(item(8_000), discounts=(percent("25", "repeating", ends),)), AT)
    assert (state.mrr, state.discount_ends_at, state.mrr_after_discount) == (6_000, ends, 8_000)
    later = mrr.state_at(facts(item(8_000), discounts=(percent("25", "repeating", ends),)), ends)
    assert (later.mrr, later.discount_ends_at) == (8_000, None)


@pytest.mark.parametrize("with_key", [True, False])
def test_webhook_discounts_are_fetched_before_counting(db_url: str, with_key: bool) -> None:
    peer = StripePeer(api_key="sk_test_mrr", webhook_secret="whsec_mrr")
    customer = peer.create_customer(email="a@example.test", name="A", card=CardSpec([SUCCEED]))
    sub_id = peer.create_subscription(
        customer_id=customer, unit_amount=5_000, coupon=CouponSpec(percent_off=20)
    )
    (created,) = [
        peer.get(e) for e in peer.pending_events()
        if peer.get(e)["type"] == "customer.subscription.created"
    ]  # fmt: skip
    assert created["data"]["object"]["id"] == sub_id
    assert all(isinstance(d, str) for d in created["data"]["object"]["discounts"])  # ids only
    with peer.serve() as api_base:
        settings = Settings(
            database_url=db_url,
            stripe_api_key=Secret("sk_test_mrr") if with_key else None,
            stripe_api_base=api_base,
        )
        runtime = Runtime(settings)
        try:
            with runtime.session() as session:
                stored = store_event(
                    session, provider="stripe", body=json.dumps(created).encode(), now=AT
                )
            assert stored.inbox_id is not None
            process_stored_event(runtime, stored.inbox_id)
            with runtime.session() as session:
                (change,) = session.scalars(select(MrrChange)).all()
        finally:
            runtime.close()
    # With a key the coupon is fetched: 20 % off. Without one, list price (and a log line).
    assert change.mrr == (4_000 if with_key else 5_000)
