"""The worked examples of shared/domain/metrics.md, to the cent, fed through the real event
path: signed-shape webhook payloads into the inbox, the billing and dunning handlers, the MRR
history, then the report exactly as ``dunning report`` builds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.pipeline import deliver
from tests.support.worked_examples import AS_OF, example_3, report
from worker.clock import ManualClock
from worker.config import Policy
from worker.reports.build import build_summary


def test_example_3_customer_level_month(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    example_3(session, policy, manual_clock)
    (row,) = report(session, "retention", "2026-03", "2026-03").rows
    assert row.as_dict() | {"period_start": None, "period_end": None} == {
        "period": "2026-03",
        "period_start": None,
        "period_end": None,
        "segment": None,
        "currency": "usd",
        "starting_mrr": 160_000,
        "new": 50_000,
        "reactivation": 0,
        "expansion": 2_000,
        "contraction_voluntary": 5_000,
        "contraction_involuntary": 20_000,
        "churn_voluntary": 30_000,
        "churn_involuntary": 40_000,
        "ending_mrr": 117_000,
        "nrr": "41.88",
        "grr": "40.62",
        "involuntary_churn_rate": "37.50",
        "nrr_without_involuntary": "79.38",
    }
    (recovery,) = report(session, "recovery", "2026-03", "2026-03").rows
    shown = recovery.as_dict()
    assert (shown["at_risk_count"], shown["at_risk_amount"]) == (2, 65_000)
    assert (shown["recovered_count"], shown["recovered_amount"]) == (1, 25_000)
    assert shown["recovered_by_method"] == {"retry": {"count": 1, "amount": 25_000}}
    assert shown["mrr_saved"] == 25_000  # F
    assert (shown["churned_count"], shown["churned_mrr"]) == (1, 40_000)  # D
    assert shown["recovery_rate_count"] == "50.00"


def test_example_3_headline_figures(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    """The summary's headline for March 2026: the whole range is that one month."""
    example_3(session, policy, manual_clock)
    session.commit()
    built = build_summary(session.get_bind(), first="2026-03", last="2026-03", as_of=AS_OF)  # type: ignore[arg-type]
    (headline,) = built.as_dict()["headline"]
    assert headline == {
        "currency": "usd",
        "recovered_amount": 25_000,  # F
        "recovered_count": 1,
        "at_risk_amount": 65_000,  # D and F
        "at_risk_count": 2,
        "recovery_rate_amount": "38.46",  # 25,000 / 65,000
        "mrr_saved": 25_000,
        "lost_mrr": 95_000,  # contraction 25,000 + churn 70,000
        "involuntary_loss": 60_000,  # D's 40,000 churn and G's 20,000 contraction
        "involuntary_share_of_churn": "63.16",  # 60,000 / 95,000
        "starting_mrr": 160_000,
        "retained_mrr": 67_000,
        "ending_mrr": 117_000,
        "nrr": "41.88",
        "nrr_without_involuntary": "79.38",
    }


@pytest.mark.parametrize(
    ("start", "expansion", "contraction", "churn", "nrr", "grr"),
    [
        (100_000, 22_000, 6_000, 10_000, "106.00", "84.00"),  # example 1, one year
        (100_000, 12_000, 5_000, 8_000, "99.00", "87.00"),  # example 2
    ],
)
def test_examples_1_and_2_aggregate(
    session: Session,
    policy: Policy,
    start: int,
    expansion: int,
    contraction: int,
    churn: int,
    nrr: str,
    grr: str,
) -> None:
    """Four customers carry the aggregate: one expands, one contracts, one churns, one stays.
    Over a year (January to December), with the changes spread over it."""
    january = datetime(2025, 1, 1, tzinfo=UTC)
    steady = start - 4 * 10_000 - contraction - churn
    plan = [
        ("cus_up", 10_000, 10_000 + expansion, "updated", datetime(2025, 4, 3, tzinfo=UTC)),
        ("cus_down", 10_000 + contraction, 10_000, "updated", datetime(2025, 7, 9, tzinfo=UTC)),
        ("cus_gone", churn, 0, "deleted", datetime(2025, 10, 1, tzinfo=UTC)),
        ("cus_same", steady, steady, None, None),
        ("cus_also", 20_000, 20_000, None, None),
    ]
    for customer, before, after, kind, at in plan:
        sub_id = f"sub_{customer}"
        earlier = january - timedelta(days=20)
        created = ev.subscription(
            sub_id=sub_id, customer_id=customer, unit_amount=before, at=earlier, start=earlier
        )
        deliver(session, policy, ev.envelope("customer.subscription.created", created, at=earlier))
        if kind == "updated":
            obj = ev.subscription(sub_id=sub_id, customer_id=customer, unit_amount=after, at=at)
            deliver(session, policy, ev.envelope("customer.subscription.updated", obj, at=at))
        elif kind == "deleted":
            obj = ev.subscription(
                sub_id=sub_id,
                customer_id=customer,
                unit_amount=before,
                status="canceled",
                cancellation_reason="cancellation_requested",
                at=at,
            )
            deliver(session, policy, ev.envelope("customer.subscription.deleted", obj, at=at))
    built = report(session, "retention", "2025-12", "2025-12", by="ttm")
    (row,) = built.rows
    assert row.period == "TTM 2025-12"
    assert (row.starting_mrr, row.expansion, row.contraction, row.churn) == (
        start,
        expansion,
        contraction,
        churn,
    )
    assert (row.as_dict()["nrr"], row.as_dict()["grr"]) == (nrr, grr)
    # The year as one range is the twelve months ending in December, whatever the label.
    (whole,) = report(session, "retention", "2025-01", "2025-12", by="range").rows
    assert whole.period == "2025-01..2025-12"
    assert whole.amounts() == row.amounts()
