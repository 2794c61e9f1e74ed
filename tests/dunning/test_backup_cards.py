"""Backup payment methods: when the default card needs replacing (or is out of budget, or
has failed N times), one retry on another valid saved card of the customer; a recovery on it
is its own method, and the customer is told which card paid."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.pipeline import run_claimed, task_runtime
from tests.support.smtp import smtp_server
from worker import clock
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning import planning
from worker.dunning.models import ActionKind, ActionStatus, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import DunningState
from worker.dunning.views import show_case
from worker.ledger.models import LedgerMovement, RecoveryMethod
from worker.sim.stripe_peer import (
    DO_NOT_HONOR,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    STOLEN_CARD,
    CardSpec,
    StripePeer,
)
from worker.webhooks.inbox import store_event
from worker.webhooks.service import process_stored_event

BACKUP = CardSpec(brand="mastercard", last4="4444", exp_month=8, exp_year=2030)


def _with(policy: Policy, **retries: object) -> Policy:
    return policy.model_copy(update={"retries": policy.retries.model_copy(update=retries)})


def _pending(session: Session, policy: Policy, account: StripePeer, url: str) -> None:
    """The peer's undelivered events through the inbox and the real processing (which asks
    the peer for decline details, as the worker does)."""
    with task_runtime(session, policy, url) as runtime:
        for event in account.take_pending():
            with runtime.session() as db:
                stored = store_event(
                    db, provider="stripe", body=json.dumps(event).encode(), now=clock.now()
                )
            if stored.inbox_id is not None:
                process_stored_event(runtime, stored.inbox_id)
    session.expire_all()


def _bill(
    session: Session,
    policy: Policy,
    peer: tuple[StripePeer, str],
    default: CardSpec,
    *others: CardSpec,
) -> tuple[str, str, list[str]]:
    account, url = peer
    customer = account.create_customer(email="pat@example.test", name="Pat", card=default)
    saved = [account.attach_card(customer, card) for card in others]
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    invoice, paid = account.bill(sub)
    assert not paid
    _pending(session, policy, account, url)
    return customer, invoice, saved


def _case(session: Session) -> DunningCase:
    session.expire_all()
    return session.scalars(select(DunningCase)).one()


def _backups(session: Session) -> list[Action]:
    session.expire_all()
    return list(
        session.scalars(
            select(Action).where(Action.recovery_method == RecoveryMethod.BACKUP_METHOD)
        )
    )


def test_a_hard_decline_is_retried_once_on_the_other_saved_card(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    _, invoice, (backup_pm,) = _bill(
        session, policy, peer, CardSpec(outcomes=[EXPIRED_CARD]), BACKUP
    )
    case = _case(session)
    assert case.state is DunningState.AWAITING_CUSTOMER
    (backup,) = _backups(session)
    assert backup.payment_method == backup_pm
    assert backup.due_at == manual_clock.now()
    assert "backup card mastercard ending 4444: the default card needs replacing" in backup.reason
    detail = show_case(session, case.id)
    assert detail is not None
    (planned,) = [a for a in detail["actions"] if a["kind"] == "retry_payment"]
    assert planned["payment_method"] == backup_pm  # every retry names its card

    run_claimed(session, policy, url, backup)
    assert account.invoice(invoice)["status"] == "paid"
    charged = [r for r in account.requests if r.path.endswith("/pay")]
    assert [r.params.get("payment_method") for r in charged] == [backup_pm]
    _pending(session, policy, account, url)  # invoice.paid and friends, late
    case = _case(session)
    assert case.state is DunningState.RECOVERED
    assert case.recovered_method is RecoveryMethod.BACKUP_METHOD
    (recovery,) = session.scalars(select(LedgerMovement)).all()
    assert recovery.method is RecoveryMethod.BACKUP_METHOD

    (thanks,) = session.scalars(select(Action).where(Action.template == "payment_recovered")).all()
    with smtp_server() as (mail, port):
        run_claimed(session, policy, url, thanks, smtp_url=f"smtp://127.0.0.1:{port}")
        (message,) = mail.messages
    text = message.get_body(("plain",)).get_content()
    assert "the other card you have on file: your Mastercard ending 4444" in text


def test_never_a_detached_or_expired_card_and_never_with_backups_off(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    expired = CardSpec(last4="0001", exp_month=1, exp_year=2026)  # START is March 2026
    removed = CardSpec(last4="0002")
    customer = account.create_customer(
        email="pat@example.test", name="Pat", card=CardSpec(outcomes=[EXPIRED_CARD])
    )
    account.attach_card(customer, expired)
    account.detach_card(account.attach_card(customer, removed))
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    account.bill(sub)
    _pending(session, policy, account, url)
    assert _case(session).state is DunningState.AWAITING_CUSTOMER
    assert _backups(session) == []


@pytest.mark.parametrize("mode", ["never", "after_hard", "after_n"])
def test_the_policy_decides_when(
    mode: str,
    session: Session,
    policy: Policy,
    peer: tuple[StripePeer, str],
    manual_clock: ManualClock,
) -> None:
    account, url = peer
    policy = _with(policy, backup_methods=mode, backup_after_failures=2)
    _bill(
        session, policy, peer, CardSpec(outcomes=[DO_NOT_HONOR]), BACKUP
    )  # a soft decline: the default card keeps its schedule
    assert _backups(session) == []
    retry = session.scalars(
        select(Action).where(
            Action.kind == ActionKind.RETRY_PAYMENT, Action.status == ActionStatus.PLANNED
        )
    ).one()
    manual_clock.set(retry.due_at)
    run_claimed(session, policy, url, retry)  # the default card's second failure
    _pending(session, policy, account, url)
    backups = _backups(session)
    if mode == "after_n":
        (backup,) = backups
        assert "the default card failed 2 times" in backup.reason
    else:
        assert backups == []


def test_a_declined_backup_leaves_the_case_as_it_was_and_is_not_tried_again(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    declining = CardSpec(brand="mastercard", last4="4444", outcomes=[INSUFFICIENT_FUNDS])
    _bill(session, policy, peer, CardSpec(outcomes=[EXPIRED_CARD]), declining)
    (backup,) = _backups(session)
    run_claimed(session, policy, url, backup)
    _pending(session, policy, account, url)  # Stripe's own webhooks for that decline
    case = _case(session)
    assert case.state is DunningState.AWAITING_CUSTOMER  # still waiting for a new card
    assert case.decline_code == "expired_card"  # the default card's decline, not the backup's
    (backup,) = _backups(session)
    assert backup.note == "declined: insufficient_funds"
    retries = session.scalars(
        select(Action).where(
            Action.kind == ActionKind.RETRY_PAYMENT, Action.status == ActionStatus.PLANNED
        )
    ).all()
    assert retries == []  # no blind retry on the expired card, no second backup


def test_stripe_is_asked_again_right_before_the_backup_charge(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    _, invoice, (backup_pm,) = _bill(
        session, policy, peer, CardSpec(outcomes=[EXPIRED_CARD]), BACKUP
    )
    (backup,) = _backups(session)
    account.detach_card(backup_pm, notify=False)  # our mirror never hears of it
    attempts = account.charge_attempts(invoice)
    manual_clock.advance(timedelta(seconds=1))
    run_claimed(session, policy, url, backup)
    (backup,) = _backups(session)
    assert backup.status is ActionStatus.FAILED
    assert backup.note == "backup card no longer on file: not charged"
    assert account.charge_attempts(invoice) == attempts


def test_no_backup_after_a_fraud_decline_even_after_n_failures(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    policy = _with(policy, backup_methods="after_n", backup_after_failures=2)
    _bill(session, policy, peer, CardSpec(outcomes=[DO_NOT_HONOR, STOLEN_CARD]), BACKUP)
    retry = session.scalars(
        select(Action).where(
            Action.kind == ActionKind.RETRY_PAYMENT, Action.status == ActionStatus.PLANNED
        )
    ).one()
    manual_clock.set(retry.due_at)
    run_claimed(session, policy, url, retry)  # declined: stolen_card (fraud)
    _pending(session, policy, account, url)
    assert _backups(session) == []


def test_no_backup_for_a_customer_whose_card_had_a_fraud_decline(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer  # the shipped policy: after_hard
    customer = account.create_customer(
        email="pat@example.test", name="Pat", card=CardSpec(outcomes=[STOLEN_CARD, DO_NOT_HONOR])
    )
    account.attach_card(customer, BACKUP)
    account.bill(account.create_subscription(customer_id=customer, unit_amount=4900))
    _pending(session, policy, account, url)
    manual_clock.advance(timedelta(days=1))
    # Another invoice on the same card, whose retries the card's fraud block drops.
    account.bill(account.create_subscription(customer_id=customer, unit_amount=1900))
    _pending(session, policy, account, url)
    assert _backups(session) == []


def test_two_invoices_backups_never_charge_the_same_card_at_once(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    customer = account.create_customer(
        email="pat@example.test", name="Pat", card=CardSpec(outcomes=[EXPIRED_CARD])
    )
    backup_pm = account.attach_card(customer, BACKUP)
    for amount in (4900, 1900):
        account.bill(account.create_subscription(customer_id=customer, unit_amount=amount))
    _pending(session, policy, account, url)
    first, second = sorted(_backups(session), key=lambda a: a.case_id)
    assert first.payment_method == second.payment_method == backup_pm
    # The older invoice's backup passes the check right before its charge (card lock held
    # until commit) and is talking to Stripe; the newer one's check a second later waits.
    now = manual_clock.now()
    first.status, first.claims = ActionStatus.CLAIMED, 1
    assert planning.clear_to_charge(
        session, session.get_one(DunningCase, first.case_id), first, policy=policy, now=now
    )
    session.commit()
    second.status, second.claims = ActionStatus.CLAIMED, 1
    assert not planning.clear_to_charge(
        session,
        session.get_one(DunningCase, second.case_id),
        second,
        policy=policy,
        now=now + timedelta(seconds=1),
    )
    assert second.status is ActionStatus.PLANNED
    assert second.due_at >= now + timedelta(hours=policy.retries.min_gap_hours)
