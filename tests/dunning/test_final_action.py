"""The final action acts on a fresh picture: Stripe is asked right before acting, and any
terminal fact that arrived meanwhile ends the case exactly once (issue #9, item 6). Against
the Stripe-compatible peer, through the official library and the real task body."""

from __future__ import annotations

import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import KEY, deliver, task_runtime
from tests.support.worked_examples import case_of, invoice_failed
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import run_final_action
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import DunningState
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer


def failed_case(session: Session, policy: Policy, account: StripePeer) -> tuple[str, str, int]:
    """A subscription whose invoice failed at the peer, its case, and the case's final
    action claimed by the scheduler at the window's end (the test sets the clock there)."""
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
    customer = account.create_customer(email="late@example.test", name="Late", card=card)
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    invoice, paid = account.bill(sub)
    assert not paid
    deliver(session, policy, invoice_failed(invoice, customer, sub, 4900, START))
    case = case_of(session, invoice)
    final = session.scalars(
        select(Action).where(Action.case_id == case.id, Action.kind == ActionKind.FINAL_ACTION)
    ).one()
    final.status, final.claimed_at = ActionStatus.CLAIMED, case.window_ends_at
    session.commit()
    return sub, invoice, final.id


def run(session: Session, policy: Policy, url: str, action_id: int) -> None:
    with task_runtime(session, policy, url) as runtime:
        run_final_action(runtime, action_id)


def test_a_customer_who_paid_during_a_backlog_is_not_cancelled(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    sub, invoice, action_id = failed_case(session, policy, account)
    manual_clock.set(case_of(session, invoice).window_ends_at)
    assert account.customer_pays_on_hosted_page(invoice)  # its webhook is still queued
    run(session, policy, url, action_id)
    session.expire_all()
    assert account.get(sub)["status"] != "canceled"
    assert case_of(session, invoice).state is DunningState.RECOVERED
    action = session.get_one(Action, action_id)
    assert (action.status, action.note) == (
        ActionStatus.CANCELLED,
        "invoice is paid at the provider",
    )


def test_an_invoice_voided_while_the_final_action_runs_ends_the_case(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    sub, invoice, action_id = failed_case(session, policy, account)
    manual_clock.set(case_of(session, invoice).window_ends_at)
    stripe.StripeClient(KEY, base_addresses={"api": url}).v1.invoices.void_invoice(invoice)
    voided = ev.envelope(
        "invoice.voided",
        ev.invoice(invoice_id=invoice, status="void", at=manual_clock.now()),
        at=manual_clock.now(),
    )
    deliver(session, policy, voided, now=manual_clock.now())  # while the action is claimed
    session.commit()
    run(session, policy, url, action_id)
    session.expire_all()
    assert account.get(sub)["status"] != "canceled"  # nothing left to collect: no cancel
    assert case_of(session, invoice).state is DunningState.CLOSED
