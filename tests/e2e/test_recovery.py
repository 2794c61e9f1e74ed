"""A failed payment arrives as a signed webhook and leaves as a recovered invoice."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from tests.support.stack import Stack, wait_for
from worker import clock
from worker.billing.models import PaymentAttempt
from worker.dunning.models import CaseTransition
from worker.dunning.operations import retry_now
from worker.dunning.state import DunningState
from worker.dunning.views import show_case
from worker.ledger.models import EndCause, LedgerMovement, MrrChange
from worker.sim.driver import in_flight, next_due, settle
from worker.sim.stripe_peer import DO_NOT_HONOR, INSUFFICIENT_FUNDS, SUCCEED, CardSpec


def _retry_now(stack: Stack, case_id: int) -> str:
    with stack.app.runtime.session() as session:
        return retry_now(
            session, case_id, policy=stack.app.runtime.policy, now=clock.now()
        ).idempotency_key


def test_failure_to_recovery(stack: Stack, manual_clock: clock.ManualClock) -> None:
    peer = stack.peer
    customer = peer.create_customer(
        email="jane.doe@example.com",
        name="Jane Doe",
        card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, INSUFFICIENT_FUNDS, SUCCEED]),
    )
    sub = peer.create_subscription(customer_id=customer, unit_amount=4900)
    invoice_id, paid = peer.bill(sub)
    assert not paid
    peer.deliver_pending()

    (case,) = wait_for(
        lambda: [c for c in stack.cases() if c.state is DunningState.RETRYING],
        what="a retrying case",
    )
    # The decline code was fetched from the provider (the basil invoice carries none).
    assert case.decline_code == "insufficient_funds"

    # A duplicate delivery of the same event: 2xx, no second effect.
    failed_event = next(e["id"] for e in peer.events if e["type"] == "invoice.payment_failed")
    assert peer.redeliver(failed_event) == 200

    # The first email goes out through the scheduler.
    stack.tick()
    wait_for(lambda: stack.mail_with("email:first"), what="the payment_failed email")

    # Ops: retry now, twice; each attempt has its own idempotency key.
    first_key = _retry_now(stack, case.id)
    stack.tick()
    wait_for(lambda: peer.charge_attempts(invoice_id) == 2, what="our first retry")
    wait_for(lambda: _attempts(stack) == 2, what="the declined retry recorded")
    peer.deliver_pending()  # Stripe's invoice.payment_failed for our own attempt
    manual_clock.advance(timedelta(minutes=5))
    second_key = _retry_now(stack, case.id)
    assert second_key != first_key
    stack.tick()
    wait_for(lambda: stack.cases()[0].state is DunningState.RECOVERED, what="recovery")
    peer.deliver_pending()  # invoice.paid etc.
    stack.tick()
    wait_for(lambda: stack.mail_with("email:recovered"), what="the recovered email")
    stack.tick()

    pay_keys = [r.idempotency_key for r in peer.requests if r.path.endswith("/pay")]
    assert pay_keys == [first_key, second_key]
    with stack.app.runtime.session() as session:
        detail = show_case(session, case.id)
        failures = session.scalar(
            select(func.count())
            .select_from(CaseTransition)
            .where(CaseTransition.case_id == case.id, CaseTransition.event == "payment_failed")
        )
    assert detail is not None
    assert detail["recovered_method"] == "retry"
    assert failures == 2, [(t["event"], t["source"], t["reason"]) for t in detail["transitions"]]
    assert len(stack.mail_with("email:recovered")) == 1
    assert peer.charge_attempts(invoice_id) == 3


def _attempts(stack: Stack) -> int:
    with stack.app.runtime.session() as session:
        return session.scalar(select(func.count()).select_from(PaymentAttempt)) or 0


def _run_month(stack: Stack, manual_clock: clock.ManualClock, until: datetime) -> None:
    """Jump the clock from one due action to the next, letting the pipeline settle."""
    assert settle(stack.app, stack.peer), in_flight(stack.app)
    while (due := next_due(stack.app)) is not None and due <= until:
        manual_clock.set(max(due, manual_clock.now()))
        assert settle(stack.app, stack.peer), in_flight(stack.app)


def test_unrecovered_case_churns_at_the_window_end(
    stack: Stack, manual_clock: clock.ManualClock
) -> None:
    peer = stack.peer
    customer = peer.create_customer(
        email="nofunds@example.com",
        name="Nico",
        timezone="Europe/Berlin",
        locale="de_DE",
        card=CardSpec(outcomes=[INSUFFICIENT_FUNDS]),
    )
    sub = peer.create_subscription(customer_id=customer, unit_amount=4900, currency="eur")
    invoice_id, _ = peer.bill(sub)
    opened = manual_clock.now()
    _run_month(stack, manual_clock, opened + timedelta(days=30))

    (case,) = stack.cases()
    assert case.state is DunningState.CHURNED
    assert peer.get(sub)["status"] == "canceled"  # the configured final action
    with stack.app.runtime.session() as session:
        detail = show_case(session, case.id)
        churn = session.scalars(select(LedgerMovement)).all()
    assert detail is not None
    retries = [a for a in detail["actions"] if a["kind"] == "retry_payment"]
    # The funds schedule: +1, +3, +5 days and the paydays in the window (Fridays 6 and 13
    # March, 10:00 Berlin).
    due = sorted(a["due_at"] for a in retries)
    assert [a["status"] for a in retries] == ["done"] * 5
    assert (due[2], due[-1]) == ("2026-03-06T09:00:00Z", "2026-03-13T09:00:00Z")
    assert peer.charge_attempts(invoice_id) == 6
    assert [(m.kind.value, m.amount, m.currency) for m in churn] == [
        ("churn_involuntary", 4900, "eur")
    ]
    keys = sorted(m["X-Dunning-Key"].split(":")[-1] for m in stack.mail.messages)
    assert keys == ["final", "first", "reminder-3d", "reminder-7d"]
    for message in stack.mail.messages:  # quiet hours in Berlin: nothing between 21:00 and 8:00
        local = parsedate_to_datetime(message["Date"]).astimezone(ZoneInfo("Europe/Berlin"))
        assert 8 <= local.hour < 21
    # Stripe's customer.subscription.deleted for our own cancellation changed nothing.
    assert detail["transitions"][-1]["event"] == "window_expired"
    # The MRR history ends there, involuntarily: once from our final action itself, once from
    # Stripe's deletion event (which calls it "cancellation_requested").
    with stack.app.runtime.session() as session:
        ends = session.scalars(select(MrrChange).where(MrrChange.ended)).all()
    assert sorted((c.source.startswith("evt_"), c.end_cause, c.mrr) for c in ends) == [
        (False, EndCause.INVOLUNTARY, 0),
        (True, EndCause.INVOLUNTARY, 0),
    ]


def test_the_older_api_shape_end_to_end(stack: Stack, manual_clock: clock.ManualClock) -> None:
    stack.peer.api_shape = "acacia"
    peer = stack.peer
    customer = peer.create_customer(
        email="old@example.com", name="Olga", card=CardSpec(outcomes=[DO_NOT_HONOR, SUCCEED])
    )
    invoice_id, _ = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=1900))
    assert peer.invoice(invoice_id)["payment_intent"]  # the pre-basil shape
    _run_month(stack, manual_clock, manual_clock.now() + timedelta(days=3))
    (case,) = stack.cases()
    assert (case.state, case.decline_code, case.recovered_method) == (
        DunningState.RECOVERED,
        "do_not_honor",
        "retry",
    )


def test_permanent_refusals_fail_visibly_and_the_case_still_ends(
    stack: Stack, manual_clock: clock.ManualClock
) -> None:
    peer = stack.peer
    customer = peer.create_customer(
        email="nobody@example.com", name="No Body", card=CardSpec(outcomes=[INSUFFICIENT_FUNDS])
    )
    peer.bill(peer.create_subscription(customer_id=customer, unit_amount=2500))
    peer.inject_fault(method="DELETE", path_prefix="/v1/subscriptions/", status=400, times=5)
    _run_month(stack, manual_clock, manual_clock.now() + timedelta(days=30))

    (case,) = stack.cases()
    assert case.state is DunningState.CHURNED
    with stack.app.runtime.session() as session:
        detail = show_case(session, case.id)
    assert detail is not None
    emails = [a for a in detail["actions"] if a["kind"] == "send_email"]
    assert emails
    assert {a["status"] for a in emails} == {"failed"}  # 550 for this address: no retrying
    assert all(a["note"].startswith("email refused: ") for a in emails)
    (final,) = [a for a in detail["actions"] if a["kind"] == "final_action"]
    assert final["status"] == "done"
    assert "refused by the provider" in final["note"]
    assert stack.mail.messages == []
