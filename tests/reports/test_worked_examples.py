"""The worked examples of shared/domain/metrics.md, to the cent, fed through the real event
path: signed-shape webhook payloads into the inbox, the billing and dunning handlers, the MRR
history, then the report exactly as ``dunning report`` builds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.pipeline import deliver, dunning_record
from worker.billing.domain import Decline
from worker.billing.models import Invoice
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import run_final_action
from worker.dunning.models import ActionKind, ActionStatus, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.reports.build import build_report
from worker.reports.model import Report
from worker.runtime import Runtime
from worker.settings import Secret, Settings
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, CardSpec, StripePeer

FEB = datetime(2026, 2, 2, 9, tzinfo=UTC)
PEER_KEY = "sk_test_examples"
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def march(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def subscription_event(
    kind: str, customer: str, sub_id: str, amount: int, *, at: datetime, **kw: Any
) -> dict[str, Any]:
    obj = ev.subscription(sub_id=sub_id, customer_id=customer, unit_amount=amount, at=at, **kw)
    return ev.envelope(f"customer.subscription.{kind}", obj, at=at)


def invoice_failed(invoice_id: str, customer: str, sub_id: str, amount: int, at: datetime) -> Any:
    pi = ev.payment_intent(pi_id=f"pi_{invoice_id}", charge_id=f"ch_{invoice_id}")
    obj = ev.invoice(
        invoice_id=invoice_id,
        customer_id=customer,
        subscription_id=sub_id,
        amount_due=amount,
        shape="acacia",
        payment_intent=pi,
        at=at,
    )
    obj["subscription"] = sub_id
    return ev.envelope("invoice.payment_failed", obj, at=at, shape="acacia")


def invoice_paid(invoice_id: str, customer: str, sub_id: str, amount: int, at: datetime) -> Any:
    obj = ev.invoice(
        invoice_id=invoice_id,
        customer_id=customer,
        subscription_id=sub_id,
        amount_due=amount,
        status="paid",
        at=at,
    )
    return ev.envelope("invoice.paid", obj, at=at)


def case_of(session: Session, invoice_ref: str) -> DunningCase:
    return session.scalars(
        select(DunningCase)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.provider_id == invoice_ref)
    ).one()


def report(session: Session, kind: str, first: str, last: str, **kw: Any) -> Report:
    session.commit()  # the report reads in its own read-only transaction
    engine = session.get_bind()
    return build_report(engine, kind, first=first, last=last, as_of=AS_OF, **kw)  # type: ignore[arg-type]


def example_3(session: Session, policy: Policy, clock: ManualClock) -> None:
    """Customers A-G of the worked example, as events in February and March 2026. D's
    subscription also lives in a Stripe-compatible peer, which our final action cancels."""
    clock.set(FEB)
    peer = StripePeer(api_key=PEER_KEY, webhook_secret="whsec_example", clock=clock.now)
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS])
    sub_d = peer.create_subscription(
        customer_id=peer.create_customer(email="d@example.test", name="D", card=card),
        unit_amount=40_000,
    )
    for customer, sub_id, amount, quantity in [
        ("cus_A", "sub_A", 10_000, 1),
        ("cus_B", "sub_B", 5_000, 4),
        ("cus_C", "sub_C", 30_000, 1),
        ("cus_D", sub_d, 40_000, 1),
        ("cus_F", "sub_F", 25_000, 1),
        ("cus_G", "sub_G1", 20_000, 1),
        ("cus_G", "sub_G2", 15_000, 1),
    ]:
        created = subscription_event("created", customer, sub_id, amount, at=FEB, quantity=quantity)
        deliver(session, policy, created, now=FEB)
    # A upgraded; B removed a seat; C cancelled.
    deliver(session, policy, subscription_event("updated", "cus_A", "sub_A", 12_000, at=march(10)))
    b_fewer = subscription_event("updated", "cus_B", "sub_B", 5_000, at=march(12), quantity=3)
    deliver(session, policy, b_fewer)
    c_gone = subscription_event(
        "deleted",
        "cus_C",
        "sub_C",
        30_000,
        at=march(15),
        status="canceled",
        cancellation_reason="cancellation_requested",
    )
    deliver(session, policy, c_gone)
    # D: card declined, the dunning window ran out, our final action cancelled it. Stripe
    # reports a cancellation made through the API as "cancellation_requested".
    deliver(session, policy, invoice_failed("in_D", "cus_D", sub_d, 40_000, march(2)), march(2))
    case_d = case_of(session, "in_D")
    end = case_d.window_ends_at
    final = session.scalars(
        select(Action).where(Action.case_id == case_d.id, Action.kind == ActionKind.FINAL_ACTION)
    ).one()
    final.status, final.claimed_at = ActionStatus.CLAIMED, end  # the scheduler's claim
    session.commit()
    clock.set(end)
    url = session.get_bind().url.render_as_string(hide_password=False)  # type: ignore[union-attr]
    with peer.serve() as api_base:
        settings = Settings(
            database_url=url, stripe_api_key=Secret(PEER_KEY), stripe_api_base=api_base
        )
        runtime = Runtime(settings, policy=policy)
        try:  # the real task: it cancels D's subscription at the peer
            run_final_action(runtime, final.id)
        finally:
            runtime.close()
    assert peer.get(sub_d)["status"] == "canceled"
    d_gone = subscription_event(  # and Stripe's own deletion event follows
        "deleted",
        "cus_D",
        sub_d,
        40_000,
        at=end + timedelta(minutes=1),
        status="canceled",
        cancellation_reason="cancellation_requested",
    )
    deliver(session, policy, d_gone, now=end + timedelta(minutes=2))
    # E signed up.
    deliver(session, policy, subscription_event("created", "cus_E", "sub_E", 50_000, at=march(20)))
    # F: failed, our first retry declined, the second went through.
    deliver(session, policy, invoice_failed("in_F", "cus_F", "sub_F", 25_000, march(5)), march(5))
    for succeeded in (False, True):
        retry = session.scalars(
            select(Action).where(
                Action.case_id == case_of(session, "in_F").id,
                Action.kind == ActionKind.RETRY_PAYMENT,
                Action.status == ActionStatus.PLANNED,
            )
        ).one()
        retry.status, retry.claimed_at = ActionStatus.CLAIMED, retry.due_at
        clock.set(retry.due_at)  # the retry task records its result at the clock's time
        decline = Decline(code="card_declined", decline_code="insufficient_funds")
        result = PaymentResult(succeeded=succeeded, decline=None if succeeded else decline)
        dunning_record(session, policy, retry.id, result)
        if succeeded:
            paid = invoice_paid("in_F", "cus_F", "sub_F", 25_000, retry.due_at)
            deliver(session, policy, paid, now=retry.due_at)
    # G: two subscriptions; the 20,000 one ended for non-payment.
    g_gone = subscription_event(
        "deleted",
        "cus_G",
        "sub_G1",
        20_000,
        at=march(20),
        status="canceled",
        cancellation_reason="payment_failed",
    )
    deliver(session, policy, g_gone)


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
