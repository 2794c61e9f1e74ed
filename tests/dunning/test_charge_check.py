"""The card's rules are checked again right before a retry's charge, under the card's lock:
attempts made since the retry was planned (the customer's, the provider's, another invoice's
retry going through right now) move it to the first compliant time instead of breaking the
minimum gap or the network budget (issue #9, item 3). Against the Stripe-compatible peer,
through the official library and the real task body."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import deliver, failed, task_runtime
from tests.support.worked_examples import case_of
from worker.billing import service as billing
from worker.billing.domain import CustomerFacts
from worker.clock import ManualClock
from worker.config import Policy
from worker.db import make_engine, make_sessionmaker
from worker.dunning import operations
from worker.dunning.actions import run_retry
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.operations import CaseNotRetryableError, retry_now
from worker.dunning.views import show_case
from worker.sim.stripe_peer import DO_NOT_HONOR, SUCCEED, CardSpec, StripePeer


def _two_invoices_on_one_card(
    session: Session, policy: Policy, account: StripePeer, *, brand: str = "mastercard"
) -> tuple[str, str, dict[str, Any]]:
    """One customer, one card, two subscriptions whose invoices both failed on it; their
    failures delivered to us with the peer's card (same payment method, same fingerprint)."""
    card = CardSpec(brand=brand, last4="4444", outcomes=[DO_NOT_HONOR] * 4 + [SUCCEED])
    customer = account.create_customer(email="two@example.test", name="Two", card=card)
    pm = account.get(account.get(customer)["invoice_settings"]["default_payment_method"])
    invoices = []
    for amount in (2900, 4900):
        invoice, paid = account.bill(
            account.create_subscription(customer_id=customer, unit_amount=amount)
        )
        assert not paid
        invoices.append(invoice)
    for invoice in invoices:
        deliver(session, policy, failed(invoice, "do_not_honor", card=pm))
    return invoices[0], invoices[1], pm


def _retry(session: Session, invoice: str) -> Action:
    case = case_of(session, invoice)
    return session.scalars(
        select(Action)
        .where(Action.case_id == case.id, Action.kind == ActionKind.RETRY_PAYMENT)
        .order_by(Action.id.desc())
    ).first()  # type: ignore[return-value]


def _claim(session: Session, action: Action, at: Any) -> int:
    """What the scheduler does when the retry comes due."""
    action.status, action.claimed_at, action.claims = ActionStatus.CLAIMED, at, 1
    session.commit()
    return action.id


def test_a_customer_attempt_since_planning_moves_the_retry(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """The older invoice's retry was planned; ten minutes before it comes due the customer
    tries the card on the newer invoice's hosted page. Nothing re-plans the older invoice's
    retry, so only the check before the charge sees the card was just used."""
    account, url = peer
    older, newer, pm = _two_invoices_on_one_card(session, policy, account)
    retry = _retry(session, older)
    due = retry.due_at
    tried = due - timedelta(minutes=10)
    manual_clock.set(tried)
    assert not account.customer_pays_on_hosted_page(newer)
    customer_try = failed(newer, "do_not_honor", at=tried, card=pm, charge="ch_customer")
    deliver(session, policy, customer_try, now=tried)
    assert _retry(session, older).due_at == due  # still planned where it was
    manual_clock.set(due)
    attempts = account.charge_attempts(older)
    action_id = _claim(session, retry, due)
    with task_runtime(session, policy, url) as runtime:
        run_retry(runtime, action_id)
    session.expire_all()
    assert account.charge_attempts(older) == attempts  # not charged ...
    moved = session.get_one(Action, action_id)
    assert moved.status is ActionStatus.PLANNED  # ... but moved to the first compliant time
    assert moved.due_at == tried + timedelta(hours=policy.retries.min_gap_hours)
    assert "right before the charge; moved: minimum gap" in moved.reason
    shown = show_case(session, case_of(session, older).id)  # what `dunning cases show` prints
    assert shown is not None
    (explained,) = [a for a in shown["actions"] if a["id"] == action_id]
    assert explained["reason"] == moved.reason
    # When it comes due again the card is clear: it charges.
    manual_clock.set(moved.due_at)
    with task_runtime(session, policy, url) as runtime:
        run_retry(runtime, _claim(session, moved, moved.due_at))
    assert account.charge_attempts(older) == attempts + 1


def test_two_invoices_never_charge_one_card_at_the_same_instant(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """Both retries handed to workers at once (planned before either knew of the other): the
    one whose charge is going through holds the card; the other moves by the minimum gap."""
    account, url = peer
    older, newer, _ = _two_invoices_on_one_card(session, policy, account)
    first, second = _retry(session, older), _retry(session, newer)
    at = first.due_at
    second.due_at = at  # as an earlier release planned them
    manual_clock.set(at)
    first_id, second_id = _claim(session, first, at), _claim(session, second, at)
    before = account.charge_attempts(older), account.charge_attempts(newer)
    account.reply_delay = 1.0  # the first charge is in flight while the second is checked
    with task_runtime(session, policy, url) as runtime:
        charging = threading.Thread(target=run_retry, args=(runtime, first_id))
        charging.start()
        try:
            _wait_until_charging(session, first_id)
            run_retry(runtime, second_id)
        finally:
            charging.join()
    session.expire_all()
    assert account.charge_attempts(older) == before[0] + 1
    assert account.charge_attempts(newer) == before[1]
    moved = session.get_one(Action, second_id)
    assert moved.status is ActionStatus.PLANNED
    assert moved.due_at == at + timedelta(hours=policy.retries.min_gap_hours)
    assert "another invoice's retry on this card" in moved.reason


def _wait_until_charging(session: Session, action_id: int) -> None:
    for _ in range(200):
        session.expire_all()
        if session.get_one(Action, action_id).charging_at is not None:
            session.rollback()
            return
        session.rollback()
        threading.Event().wait(0.01)
    pytest.fail("the first retry never started its charge")


def test_ops_retry_now_waives_our_gap_never_a_network_rule(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    older, newer, pm = _two_invoices_on_one_card(session, policy, account)
    # Minutes after the failure: the minimum gap is ours to waive, so it goes now.
    now = START + timedelta(minutes=5)
    manual_clock.set(now)
    action = retry_now(session, case_of(session, older).id, policy=policy, now=now)
    assert (action.due_at, action.ops_requested) == (now, True)
    attempts = account.charge_attempts(older)
    with task_runtime(session, policy, url) as runtime:
        run_retry(runtime, _claim(session, action, now))
    assert account.charge_attempts(older) == attempts + 1
    # Mastercard MAC 03 on the card: no retry for 30 days, whoever asks.
    later = now + timedelta(hours=1)
    blocked = failed(
        newer, "do_not_honor", at=later, card=pm, charge="ch_mac", network_advice_code="03"
    )
    deliver(session, policy, blocked, now=later)
    with pytest.raises(CaseNotRetryableError, match="MAC 03"):
        retry_now(session, case_of(session, newer).id, policy=policy, now=later)


def test_a_retry_and_a_card_update_webhook_do_not_deadlock(
    pg: str, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """The webhook updates the customer's row and then locks each open case; the retry holds
    its case while it takes the card lock. That lock is not the customer's row, so the two
    queue instead of deadlocking (PostgreSQL: SQLite has one writer at a time anyway)."""
    _, url = peer
    factory = make_sessionmaker(make_engine(pg))
    with factory() as setup:
        deliver(setup, policy, failed("in_dl"))
        retry = _retry(setup, "in_dl")
        manual_clock.set(retry.due_at)
        action_id = _claim(setup, retry, retry.due_at)
    webhook = factory()
    new_default = CustomerFacts("cus_test", None, None, "pm_new", None, None)
    customer = billing.upsert_customer(webhook, new_default, at=manual_clock.now())
    webhook.flush()  # the customer's row is now locked by the webhook's transaction
    errors: list[BaseException] = []

    def retry_task() -> None:
        with task_runtime(factory(), policy, url) as runtime:
            try:
                run_retry(runtime, action_id)
            except BaseException as exc:
                errors.append(exc)

    task = threading.Thread(target=retry_task)
    task.start()
    task.join(0.5)  # it has the case now
    try:
        operations.card_updated(
            webhook,
            customer,
            by_network=False,
            source="evt_card",
            reason="customer.updated",
            policy=policy,
            now=manual_clock.now(),
        )
        webhook.commit()
    except BaseException as exc:
        errors.append(exc)
    finally:
        task.join(10)
        webhook.close()
    assert [f"{type(e).__name__}: {e}".splitlines()[0] for e in errors] == []
