"""Outages never fail work for good (issue #10, item 1): a transient failure puts the action
back with a back-off by time; only a permanent reason fails it; a request Stripe says not to
repeat ends that attempt, not the case; emails overdue after an outage are skipped, not sent
in a burst. Against the Stripe-compatible peer and the real task bodies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import KEY, deliver, task_runtime
from tests.support.smtp import smtp_server
from tests.support.worked_examples import case_of, invoice_failed
from worker.billing.budget import DatabaseBudget, OverBudgetError, Rates
from worker.billing.stripe_client import StripeGateway
from worker.clock import ManualClock
from worker.config import Policy
from worker.db import make_engine
from worker.dunning.actions import run_action
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.scheduler import RETRY_AFTER_FIRST
from worker.dunning.state import DunningState
from worker.email.models import Notification
from worker.runtime import Runtime
from worker.settings import Settings
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer


def _failed_invoice(session: Session, policy: Policy, account: StripePeer) -> tuple[str, str]:
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
    customer = account.create_customer(email="down@example.test", name="Down", card=card)
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    invoice, paid = account.bill(sub)
    assert not paid
    deliver(session, policy, invoice_failed(invoice, customer, sub, 4900, START))
    return invoice, sub


def _due(session: Session, invoice: str, kind: ActionKind) -> Action:
    """The case's first planned action of ``kind``, claimed as the scheduler does."""
    action = session.scalars(
        select(Action)
        .where(
            Action.case_id == case_of(session, invoice).id,
            Action.kind == kind,
            Action.status == ActionStatus.PLANNED,
        )
        .order_by(Action.due_at)
    ).first()
    assert action is not None
    action.status, action.claimed_at, action.claims = ActionStatus.CLAIMED, action.due_at, 1
    return action


def _run(
    session: Session,
    policy: Policy,
    url: str,
    kind: ActionKind,
    action_id: int,
    *,
    smtp_url: str | None = None,
) -> None:
    """The task body for ``kind`` (claimed by the test), then the test's view refreshed."""
    with task_runtime(session, policy, url, smtp_url=smtp_url) as runtime:
        run_action(runtime, kind, action_id)
    session.expire_all()


def test_stripe_down_puts_the_retry_back_and_it_charges_once_later(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    retry = _due(session, invoice, ActionKind.RETRY_PAYMENT)
    manual_clock.set(retry.due_at)
    account.inject_fault(
        method="POST", path_prefix=f"/v1/invoices/{invoice}/pay", status=503, times=2
    )
    _run(session, policy, url, ActionKind.RETRY_PAYMENT, retry.id)
    assert retry.status is ActionStatus.PLANNED  # back, not failed
    assert retry.due_at == manual_clock.now() + RETRY_AFTER_FIRST
    assert retry.note is not None and retry.note.startswith("transient: stripe")
    assert account.charge_attempts(invoice) == 1  # only the first automatic attempt
    # Stripe is back: the same action runs again, with the same key, and charges once.
    manual_clock.set(retry.due_at)
    retry.status = ActionStatus.CLAIMED
    _run(session, policy, url, ActionKind.RETRY_PAYMENT, retry.id)
    assert (retry.status, retry.note) == (ActionStatus.DONE, "paid")
    assert account.charge_attempts(invoice) == 2
    assert case_of(session, invoice).state is DunningState.RECOVERED


def test_a_retry_the_fleet_budget_cannot_serve_in_time_is_put_back_uncharged(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """Stripe rate-limited the fleet for longer than a task may wait: the retry is not made
    (no token is taken) and goes back with the transient back-off."""
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    retry = _due(session, invoice, ActionKind.RETRY_PAYMENT)
    manual_clock.set(retry.due_at)
    session.commit()
    db = session.get_bind().url.render_as_string(hide_password=False)  # type: ignore[union-attr]
    budget = DatabaseBudget(make_engine(db), Rates())
    gateway = StripeGateway(KEY, api_base=url, budget=budget, budget_wait_s=0.3)
    runtime = Runtime(Settings(database_url=db), policy=policy, gateway=gateway)
    budget.pause(20)  # a 429 elsewhere in the fleet
    run_action(runtime, ActionKind.RETRY_PAYMENT, retry.id)
    budget.pause(0)  # a longer pause already set stands
    with pytest.raises(OverBudgetError):
        budget.take("write", max_wait_s=1)
    runtime.close()
    session.expire_all()
    assert retry.status is ActionStatus.PLANNED
    assert retry.due_at == manual_clock.now() + RETRY_AFTER_FIRST
    assert retry.note is not None and retry.note.startswith("transient: stripe: not called")
    assert not [r for r in account.requests if r.path.endswith("/pay")]


def test_a_request_stripe_says_not_to_repeat_ends_the_attempt_not_the_case(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    retry = _due(session, invoice, ActionKind.RETRY_PAYMENT)
    manual_clock.set(retry.due_at)
    account.inject_fault(
        method="POST", path_prefix=f"/v1/invoices/{invoice}/pay", status=500, should_retry=False
    )
    _run(session, policy, url, ActionKind.RETRY_PAYMENT, retry.id)
    assert retry.status is ActionStatus.FAILED
    assert retry.note is not None and "provider refused" in retry.note
    case = case_of(session, invoice)
    assert case.state is DunningState.RETRYING
    (following,) = session.scalars(
        select(Action).where(
            Action.case_id == case.id,
            Action.kind == ActionKind.RETRY_PAYMENT,
            Action.status == ActionStatus.PLANNED,
        )
    )
    assert following.idempotency_key != retry.idempotency_key  # its own key
    assert following.due_at > manual_clock.now()


def test_the_final_action_waits_out_an_outage_and_then_runs(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, sub = _failed_invoice(session, policy, account)
    final = _due(session, invoice, ActionKind.FINAL_ACTION)
    manual_clock.set(final.due_at + timedelta(hours=2))  # the window ended during the outage
    account.inject_fault(method="GET", path_prefix=f"/v1/invoices/{invoice}", status=503, times=2)
    _run(session, policy, url, ActionKind.FINAL_ACTION, final.id)
    assert final.status is ActionStatus.PLANNED
    assert account.get(sub)["status"] != "canceled"
    manual_clock.set(final.due_at)
    final.status = ActionStatus.CLAIMED
    _run(session, policy, url, ActionKind.FINAL_ACTION, final.id)
    assert (final.status, final.note) == (ActionStatus.DONE, "cancel_subscription")
    assert account.get(sub)["status"] == "canceled"
    assert case_of(session, invoice).state is DunningState.CHURNED


def test_smtp_down_puts_the_email_back(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    manual_clock.set(email.due_at)
    _run(
        session, policy, url, ActionKind.SEND_EMAIL, email.id, smtp_url="smtp://127.0.0.1:1"
    )  # nothing listens there
    assert email.status is ActionStatus.PLANNED
    assert email.note is not None and email.note.startswith("transient:")
    assert "down@example.test" not in email.note


def test_emails_overdue_after_an_outage_are_skipped_not_sent_in_a_burst(
    session: Session,
    policy: Policy,
    peer: tuple[StripePeer, str],
    manual_clock: ManualClock,
    tmp_path: Path,
) -> None:
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    limit = timedelta(hours=policy.emails.skip_overdue_after_hours)
    manual_clock.set(email.due_at + limit + timedelta(hours=1))
    outbox = f"file://{tmp_path}/outbox"
    _run(session, policy, url, ActionKind.SEND_EMAIL, email.id, smtp_url=outbox)
    assert email.status is ActionStatus.CANCELLED
    hours = policy.emails.skip_overdue_after_hours + 1
    assert email.note == f"skipped: {hours:.1f} h overdue"
    assert not list(tmp_path.rglob("*.eml"))  # nothing went out


def test_smtp_talks_outside_any_transaction(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """While the server takes its time over DATA, other writers are not held up (on SQLite
    the write lock is global), and the email is recorded once it is accepted."""
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    manual_clock.set(email.due_at)
    action_id = email.id
    with smtp_server() as (recorder, port):
        recorder.hold = threading.Event()
        with task_runtime(session, policy, url, smtp_url=f"smtp://127.0.0.1:{port}") as runtime:
            sending = threading.Thread(
                target=run_action, args=(runtime, ActionKind.SEND_EMAIL, action_id)
            )
            sending.start()
            try:
                _wait_for(lambda: _outbox_status(runtime, email.idempotency_key) == "sending")
                with runtime.session() as other:  # another writer, mid-conversation
                    other.execute(text("UPDATE customers SET updated_at = updated_at"))
            finally:
                recorder.hold.set()
                sending.join(30)
    session.expire_all()
    assert len(recorder.messages) == 1
    assert session.get_one(Action, action_id).status is ActionStatus.DONE
    assert _outbox_status_in(session, email.idempotency_key) == "sent"


def test_a_server_that_drops_the_line_before_its_250_gets_the_email_once(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    manual_clock.set(email.due_at)
    with smtp_server() as (recorder, port):
        recorder.drop_before_answer = True
        with task_runtime(session, policy, url, smtp_url=f"smtp://127.0.0.1:{port}") as runtime:
            run_action(runtime, ActionKind.SEND_EMAIL, email.id)
            run_action(runtime, ActionKind.SEND_EMAIL, email.id)  # a redelivered task
    session.expire_all()
    assert len(recorder.messages) == 1  # stored by the server, and never sent again
    assert email.status is ActionStatus.DONE
    assert email.note is not None and email.note.startswith("sent, unconfirmed")
    assert _outbox_status_in(session, email.idempotency_key) == "sent"


def _outbox_status(runtime: Runtime, key: str) -> str | None:
    with runtime.session() as s:
        return _outbox_status_in(s, key)


def _outbox_status_in(session: Session, key: str) -> str | None:
    status = session.scalar(select(Notification.status).where(Notification.dedupe_key == key))
    return status.value if status else None


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_email_held_up_by_a_long_smtp_outage_is_skipped_not_sent_late(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """Each failed try puts the email back a little later; lateness still counts from when
    it was first due, so the day SMTP comes back customers get no burst of stale emails."""
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    first_due = email.due_at
    manual_clock.set(first_due)
    _run(
        session, policy, url, ActionKind.SEND_EMAIL, email.id, smtp_url="smtp://127.0.0.1:1"
    )  # SMTP down: put back
    assert (email.status, email.first_due_at) == (ActionStatus.PLANNED, first_due)
    manual_clock.set(first_due + timedelta(hours=policy.emails.skip_overdue_after_hours + 1))
    email.status = ActionStatus.CLAIMED  # SMTP is back, the scheduler hands it out again
    with smtp_server() as (recorder, port):
        smtp = f"smtp://127.0.0.1:{port}"
        with task_runtime(session, policy, url, smtp_url=smtp) as runtime:
            run_action(runtime, ActionKind.SEND_EMAIL, email.id)
    session.expire_all()
    assert recorder.messages == []
    assert email.status is ActionStatus.CANCELLED
    assert email.note is not None and email.note.startswith("skipped:")


def test_a_twin_task_leaves_the_send_to_the_one_already_sending(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """A reclaimed or redelivered copy of the email task runs while the first one is still
    talking to the server: the email goes out once."""
    account, url = peer
    invoice, _ = _failed_invoice(session, policy, account)
    email = _due(session, invoice, ActionKind.SEND_EMAIL)
    manual_clock.set(email.due_at)
    action_id, key = email.id, email.idempotency_key
    with smtp_server() as (recorder, port):
        recorder.hold = threading.Event()
        smtp = f"smtp://127.0.0.1:{port}"
        with task_runtime(session, policy, url, smtp_url=smtp) as runtime:
            args = (runtime, ActionKind.SEND_EMAIL, action_id)
            first, twin = (threading.Thread(target=run_action, args=args) for _ in range(2))
            first.start()
            try:
                _wait_for(lambda: _outbox_status(runtime, key) == "sending")
                twin.start()
                twin.join(10)
                assert not twin.is_alive()  # it returned at once, leaving the send alone
            finally:
                recorder.hold.set()
                first.join(30)
    session.expire_all()
    assert len(recorder.messages) == 1
    assert session.get_one(Action, action_id).status is ActionStatus.DONE
