"""How often one customer hears from us across all their invoices: one email for invoices
failing together, a cap per rolling 7 days, and never a card notice the same day as a
dunning email."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import deliver, failed, paid, run_claimed
from tests.support.processes import free_port
from tests.support.smtp import Recorder, smtp_server
from worker.billing.models import Customer
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.email.messages import EmailKind
from worker.email.service import SENDING_HOLD

URL = "http://127.0.0.1:9"  # no Stripe call is made sending emails


@pytest.fixture
def mail() -> Iterator[tuple[Recorder, int]]:
    with smtp_server() as server:
        yield server


def _fail(session: Session, policy: Policy, invoice: str, at: datetime) -> None:
    deliver(session, policy, failed(invoice, at=at), now=at)
    customer = session.scalars(select(Customer)).one()
    customer.email = "pat@example.test"
    session.commit()


def _first_email(session: Session, invoice: str) -> Action:
    return session.scalars(
        select(Action).where(
            Action.idempotency_key.like("case:%:email:first"),
            Action.case_id.in_(
                select(Action.case_id).where(Action.idempotency_key.like(f"dunning:{invoice}:%"))
            ),
        )
    ).one()


def _send(session: Session, policy: Policy, action: Action, port: int) -> Action:
    return run_claimed(session, policy, URL, action, smtp_url=f"smtp://127.0.0.1:{port}")


def _two_failing_invoices(session: Session, policy: Policy) -> tuple[Action, Action]:
    """Two invoices of one customer failing five minutes apart: their first emails."""
    _fail(session, policy, "in_aaaa", START)
    _fail(session, policy, "in_bbbb", START + timedelta(minutes=5))
    return _first_email(session, "in_aaaa"), _first_email(session, "in_bbbb")


def test_invoices_failing_together_share_one_email(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    first, second = _two_failing_invoices(session, policy)
    assert _send(session, policy, first, port).note == "sent to p***@example.test"
    (message,) = recorder.messages
    text = message.get_body(("plain",)).get_content()
    assert "also about your other open invoice" in text
    assert "Invoice INV-bbbb: $49.00" in text
    second = session.get_one(Action, second.id)
    assert second.status is ActionStatus.DONE
    assert second.note == f"rides along with {first.idempotency_key}"


def test_at_most_n_dunning_emails_per_customer_in_seven_days(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    policy = policy.model_copy(
        update={"emails": policy.emails.model_copy(update={"max_per_customer_7d": 2})}
    )
    sent_at = []
    for day, invoice in enumerate(("in_aaaa", "in_bbbb", "in_cccc")):
        at = START + timedelta(days=day)
        manual_clock.set(at)
        _fail(session, policy, invoice, at)
        action = _send(session, policy, _first_email(session, invoice), port)
        sent_at.append(at)
    assert len(recorder.messages) == 2
    assert action.status is ActionStatus.PLANNED
    assert action.note == "moved: 2 dunning emails in 7 days already"
    assert action.due_at == sent_at[0] + timedelta(days=7)  # 15:00 UTC: no quiet hours
    manual_clock.set(action.due_at)
    assert _send(session, policy, action, port).status is ActionStatus.DONE  # its turn now
    assert len(recorder.messages) == 3


def test_over_the_cap_past_the_window_is_skipped(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    policy = policy.model_copy(
        update={"emails": policy.emails.model_copy(update={"max_per_customer_7d": 1})}
    )
    _fail(session, policy, "in_aaaa", START)
    _send(session, policy, _first_email(session, "in_aaaa"), port)
    final = session.scalars(select(Action).where(Action.template == EmailKind.FINAL_NOTICE)).one()
    # Another invoice's final notice, one day before its window ends, within 7 days of the
    # first email: waiting would be too late.
    _fail(session, policy, "in_bbbb", START - timedelta(days=12))
    late = session.scalars(
        select(Action).where(Action.template == EmailKind.FINAL_NOTICE, Action.id != final.id)
    ).one()
    manual_clock.set(late.due_at)
    late = _send(session, policy, late, port)
    assert late.status is ActionStatus.DONE
    assert late.note == "skipped: 1 dunning emails in 7 days already (emails.max_per_customer_7d)"
    assert len(recorder.messages) == 1


def test_a_card_notice_never_lands_the_same_day_as_a_dunning_email(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    _fail(session, policy, "in_aaaa", START)
    _send(session, policy, _first_email(session, "in_aaaa"), port)
    customer = session.scalars(select(Customer)).one()
    notice = Action(
        customer_id=customer.id,
        case_id=None,
        kind=ActionKind.SEND_EMAIL,
        due_at=START + timedelta(hours=2),
        idempotency_key=f"customer:{customer.id}:card-expiring:pm_x:2026-03:30d",
        template=EmailKind.CARD_EXPIRING,
        reason="card expires 2026-03: 30-day notice",
        created_at=START,
    )
    session.add(notice)
    session.commit()
    manual_clock.set(notice.due_at)
    notice = _send(session, policy, notice, port)
    assert notice.status is ActionStatus.PLANNED
    assert notice.note == "moved: a dunning email goes out today"
    assert notice.due_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # tomorrow, after quiet hours
    manual_clock.set(notice.due_at)
    assert _send(session, policy, notice, port).status is ActionStatus.DONE
    assert len(recorder.messages) == 2

    # And the other way round: the reminder due the day the notice went out waits a day.
    reminder = session.scalars(
        select(Action)
        .where(Action.template == EmailKind.REMINDER, Action.status == ActionStatus.PLANNED)
        .order_by(Action.due_at)
    ).first()
    assert reminder is not None
    manual_clock.set(datetime(2026, 3, 3, 20, 0, tzinfo=UTC))
    reminder = _send(session, policy, reminder, port)
    assert reminder.status is ActionStatus.PLANNED
    assert reminder.note == "moved: a card notice went out today"
    assert reminder.due_at == datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def test_a_ride_along_invoice_survives_a_failed_hand_off(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    first, _ = _two_failing_invoices(session, policy)
    put_back = _send(session, policy, first, free_port())  # SMTP down: tried again later
    assert put_back.status is ActionStatus.PLANNED
    manual_clock.set(put_back.due_at + SENDING_HOLD)
    assert _send(session, policy, put_back, port).status is ActionStatus.DONE
    (message,) = recorder.messages
    assert "Invoice INV-bbbb" in message.get_body(("plain",)).get_content()


def test_riders_go_on_their_own_when_their_email_does_not(
    session: Session, policy: Policy, mail: tuple[Recorder, int], manual_clock: ManualClock
) -> None:
    recorder, port = mail
    first, second = _two_failing_invoices(session, policy)
    put_back = _send(session, policy, first, free_port())
    # Invoice A is paid before its email could go: B's email goes on its own.
    deliver(session, policy, paid("in_aaaa", at=START + timedelta(minutes=10)))
    session.commit()
    alone = session.get_one(Action, second.id)
    assert alone.status is ActionStatus.PLANNED
    assert alone.note == f"on its own: {put_back.idempotency_key} did not go out"
    manual_clock.set(START + timedelta(minutes=11))
    assert _send(session, policy, alone, port).status is ActionStatus.DONE
    (message,) = recorder.messages
    assert "INV-aaaa" not in message.get_body(("plain",)).get_content()
