"""One subscription, several failed invoices (a weekly plan): its MRR counts once per period,
and our own cancellation is involuntary for every case of it (issue #9, item 8)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.pipeline import deliver
from tests.support.worked_examples import (
    FEB,
    case_of,
    invoice_failed,
    invoice_paid,
    march,
    report,
    subscription_event,
)
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import DunningState

WEEKLY = 1_000  # a week, in cents: MRR 4,348 (x 52 / 12)


def two_failed_weeks(session: Session, policy: Policy) -> None:
    created = subscription_event("created", "cus_W", "sub_W", WEEKLY, at=FEB, interval="week")
    deliver(session, policy, created, now=FEB)
    for invoice, day in (("in_W1", 2), ("in_W2", 9)):
        deliver(session, policy, invoice_failed(invoice, "cus_W", "sub_W", WEEKLY, march(day)))


def test_mrr_saved_counts_a_subscription_once_per_period(session: Session, policy: Policy) -> None:
    two_failed_weeks(session, policy)
    for invoice, day in (("in_W1", 4), ("in_W2", 11)):
        deliver(session, policy, invoice_paid(invoice, "cus_W", "sub_W", WEEKLY, march(day)))
    (row,) = report(session, "recovery", "2026-03", "2026-03").rows
    mrr = round(WEEKLY * 52 / 12)
    assert (row.recovered_count, row.recovered_amount) == (2, 2 * WEEKLY)
    assert row.mrr_saved == mrr


def test_our_cancellation_is_involuntary_for_every_case_of_the_subscription(
    session: Session, policy: Policy
) -> None:
    two_failed_weeks(session, policy)
    first = case_of(session, "in_W1")
    final = session.scalars(
        select(Action).where(Action.case_id == first.id, Action.kind == ActionKind.FINAL_ACTION)
    ).one()
    final.status, final.claimed_at = ActionStatus.CLAIMED, first.window_ends_at  # cancelling
    session.flush()
    gone = subscription_event(
        "deleted",
        "cus_W",
        "sub_W",
        WEEKLY,
        at=first.window_ends_at + timedelta(seconds=5),
        interval="week",
        status="canceled",
        cancellation_reason="cancellation_requested",  # how Stripe reports our API cancel
    )
    deliver(session, policy, gone, now=first.window_ends_at + timedelta(minutes=1))
    assert case_of(session, "in_W1").state is DunningState.CHURNED
    assert case_of(session, "in_W2").state is DunningState.CHURNED
