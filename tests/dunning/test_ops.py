"""Ops pause, resume and close (issue #12, item 5), through the state machine on both
databases. A resume continues the plan where the pause stopped it: the window and every action
set aside move on by the pause, so nothing that fell due meanwhile fires in a burst."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import deliver, failed, paid, planned, task_runtime
from tests.support.worked_examples import case_of, invoice_failed
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import _still_wanted, run_action
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.operations import OpsRefusedError, customer_case_ids, ops_move
from worker.dunning.state import DunningState
from worker.ledger.models import LedgerMovement, MovementKind, RecoveryMethod
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def _actions(session: Session, case_id: int) -> dict[str, Action]:
    rows = session.scalars(select(Action).where(Action.case_id == case_id).order_by(Action.id))
    return {a.idempotency_key: a for a in rows}


def _open_case(session: Session, policy: Policy, invoice: str = "in_ops") -> int:
    deliver(session, policy, failed(invoice, "insufficient_funds", at=START), now=START)
    session.commit()
    return case_of(session, invoice).id


def test_a_resume_moves_the_window_and_the_plan_on_by_the_pause(
    session: Session, policy: Policy
) -> None:
    case_id = _open_case(session, policy)
    before = {
        key: (a.kind, a.due_at)
        for key, a in _actions(session, case_id).items()
        if a.status is ActionStatus.PLANNED
    }
    kinds = {kind for kind, _ in before.values()}
    assert {ActionKind.SEND_EMAIL, ActionKind.FINAL_ACTION, ActionKind.RETRY_PAYMENT} <= kinds
    window = case_of(session, "in_ops").window_ends_at

    paused_at = START + 2 * HOUR
    ops_move(session, case_id, "pause", reason="customer called", policy=policy, now=paused_at)
    session.commit()
    held = _actions(session, case_id)
    assert all(held[k].status is ActionStatus.CANCELLED for k in before)
    assert {held[k].note for k in before} == {"paused"}

    # Paused for thirty days: longer than the whole window.
    resumed_at = paused_at + 30 * DAY
    ops_move(session, case_id, "resume", reason="settled", policy=policy, now=resumed_at)
    session.commit()
    case = case_of(session, "in_ops")
    assert case.state is DunningState.RETRYING
    assert case.window_ends_at == window + 30 * DAY
    assert case.paused_at is None and case.paused_seconds == 30 * 24 * 3600

    after = _actions(session, case_id)
    live = [a for a in after.values() if a.status is ActionStatus.PLANNED]
    # Nothing fires in a burst: only what was already due when the pause began (the first
    # email, due at the failure and never sent here) is due at the resume; every other
    # action lies as far after the resume as it lay after the pause.
    due_at_pause = {k for k, (_, due_at) in before.items() if due_at <= paused_at}
    assert {after[k].template for k in due_at_pause} == {"payment_failed"}
    for key, (kind, due_at) in before.items():
        if kind is ActionKind.RETRY_PAYMENT:
            continue  # planned afresh below
        if key in due_at_pause:
            assert after[key].due_at == resumed_at
            continue
        moved = after[key].due_at - due_at
        assert 30 * DAY <= moved <= 30 * DAY + 12 * HOUR, (key, moved)  # quiet hours may add
        assert after[key].due_at > resumed_at + HOUR
    final = next(a for a in live if a.kind is ActionKind.FINAL_ACTION)
    assert final.due_at == case.window_ends_at
    (retry,) = [a for a in live if a.kind is ActionKind.RETRY_PAYMENT]
    (first_retry,) = [d for k, d in before.values() if k is ActionKind.RETRY_PAYMENT]
    assert first_retry + 30 * DAY - HOUR <= retry.due_at <= first_retry + 31 * DAY


def test_a_paused_case_outlives_its_window_and_a_payment_still_counts(
    session: Session, policy: Policy
) -> None:
    case_id = _open_case(session, policy)
    ops_move(session, case_id, "pause", reason="by ops", policy=policy, now=START + HOUR)
    session.commit()
    assert not [a for a in _actions(session, case_id).values() if a.status is ActionStatus.PLANNED]
    deliver(session, policy, paid("in_ops", at=START + 40 * DAY), now=START + 40 * DAY)
    session.commit()
    assert case_of(session, "in_ops").state is DunningState.RECOVERED


def test_close_says_why_and_ends_dunning_without_churn(session: Session, policy: Policy) -> None:
    case_id = _open_case(session, policy)
    at = START + 3 * HOUR
    ops_move(session, case_id, "close", reason="refunded by support", policy=policy, now=at)
    session.commit()
    case = case_of(session, "in_ops")
    assert case.state is DunningState.CLOSED
    last = session.scalars(
        select(CaseTransition)
        .where(CaseTransition.case_id == case_id)
        .order_by(CaseTransition.id.desc())
    ).first()
    assert last is not None
    assert (last.reason, last.source, last.at) == ("ops: refunded by support", "ops", at)
    assert not [a for a in _actions(session, case_id).values() if a.status is ActionStatus.PLANNED]
    kinds = set(session.scalars(select(LedgerMovement.kind)))
    assert MovementKind.CHURN_INVOLUNTARY not in kinds


@pytest.mark.parametrize(
    ("first", "then"),
    [("close", "pause"), ("close", "resume"), ("close", "close"), (None, "resume")],
)
def test_a_move_that_does_not_apply_is_refused_and_changes_nothing(
    session: Session, policy: Policy, first: str | None, then: str
) -> None:
    case_id = _open_case(session, policy)
    if first:
        ops_move(session, case_id, first, reason="x", policy=policy, now=START + HOUR)
        session.commit()
    state = case_of(session, "in_ops").state
    count = len(session.scalars(select(CaseTransition)).all())
    with pytest.raises(OpsRefusedError, match=f"cannot {then}"):
        ops_move(session, case_id, then, reason="y", policy=policy, now=START + 2 * HOUR)
    session.rollback()
    assert case_of(session, "in_ops").state is state
    assert len(session.scalars(select(CaseTransition)).all()) == count


def test_a_customer_s_cases_are_found_by_its_provider_id(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    first = _open_case(session, policy, "in_one")
    second = _open_case(session, policy, "in_two")
    customer = "cus_test"  # the test events' customer
    assert customer_case_ids(session, customer, "pause") == [first, second]
    ops_move(session, first, "pause", reason="x", policy=policy, now=START + HOUR)
    session.commit()
    assert customer_case_ids(session, customer, "pause") == [second]
    assert customer_case_ids(session, customer, "resume") == [first]
    with pytest.raises(LookupError, match="no customer cus_nobody"):
        customer_case_ids(session, "cus_nobody", "pause")


# Found by review: a card update's prompt retry survives a pause.


def test_a_card_update_during_a_pause_gets_its_prompt_retry_at_resume(
    session: Session, policy: Policy
) -> None:
    """state.py: (paused, payment_method_updated) -> paused, 'remembered; resume retries it'."""
    deliver(session, policy, ev.customer_updated("pm_old", at=START))
    deliver(session, policy, failed("in_1", card=ev.payment_method(pm_id="pm_old")))
    case_id = case_of(session, "in_1").id
    ops_move(session, case_id, "pause", reason="x", policy=policy, now=START + HOUR)
    at = START + 2 * HOUR
    deliver(session, policy, ev.customer_updated("pm_new", was="pm_old", at=at), now=at)
    resumed = START + 3 * HOUR
    ops_move(session, case_id, "resume", reason="x", policy=policy, now=resumed)
    (retry,) = _retries(session)
    assert retry.recovery_method in (RecoveryMethod.CARD_UPDATE, RecoveryMethod.NETWORK_UPDATE)
    assert retry.due_at <= resumed + HOUR


def test_a_prompt_retry_planned_just_before_a_pause_survives_the_resume(
    session: Session, policy: Policy
) -> None:
    """Ops pause the customer as their new card arrives, before the tick claims its retry."""
    deliver(session, policy, ev.customer_updated("pm_old", at=START))
    deliver(session, policy, failed("in_1", card=ev.payment_method(pm_id="pm_old")))
    at = START + timedelta(minutes=10)
    deliver(session, policy, ev.customer_updated("pm_new", was="pm_old", at=at), now=at)
    (prompt,) = _retries(session)
    assert ":card-update:" in prompt.idempotency_key
    case_id = case_of(session, "in_1").id
    ops_move(session, case_id, "pause", reason="x", policy=policy, now=at)
    resumed = at + 2 * HOUR
    ops_move(session, case_id, "resume", reason="x", policy=policy, now=resumed)
    (retry,) = _retries(session)
    assert retry.recovery_method is RecoveryMethod.CARD_UPDATE
    assert retry.due_at <= resumed + HOUR


# A hard-declined case resumes awaiting the customer, not retrying.


def test_a_hard_declined_case_resumes_awaiting_the_customer(
    session: Session, policy: Policy
) -> None:
    deliver(session, policy, failed("in_1", "expired_card", code="expired_card"))
    case = case_of(session, "in_1")
    assert case.state is DunningState.AWAITING_CUSTOMER
    ops_move(session, case.id, "pause", reason="x", policy=policy, now=START + HOUR)
    ops_move(session, case.id, "resume", reason="x", policy=policy, now=START + 2 * HOUR)
    assert _retries(session) == []  # rightly, no blind retry...
    assert case_of(session, "in_1").state is DunningState.AWAITING_CUSTOMER


# An email put back by an outage and then paused is not skipped as overdue.


def test_an_email_put_back_by_an_outage_is_sent_after_a_pause_not_skipped(
    session: Session,
    policy: Policy,
    peer: tuple[StripePeer, str],
    manual_clock: ManualClock,
    tmp_path: Path,
) -> None:
    account, url = peer
    customer = account.create_customer(
        email="p@example.test", name="P", card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
    )
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    invoice, _ = account.bill(sub)
    deliver(session, policy, invoice_failed(invoice, customer, sub, 4900, START))
    case_id = case_of(session, invoice).id
    (email, *_) = planned(session, ActionKind.SEND_EMAIL)
    email.status, email.claimed_at, email.claims = ActionStatus.CLAIMED, email.due_at, 1
    manual_clock.set(email.due_at)
    with task_runtime(session, policy, url, smtp_url="smtp://127.0.0.1:1") as runtime:  # down
        run_action(runtime, ActionKind.SEND_EMAIL, email.id)
    session.expire_all()
    assert email.status is ActionStatus.PLANNED and email.first_due_at is not None
    paused_at = email.first_due_at + timedelta(seconds=1)  # before its back-off runs out
    ops_move(session, case_id, "pause", reason="customer called", policy=policy, now=paused_at)
    resumed_at = paused_at + 2 * DAY
    ops_move(session, case_id, "resume", reason="settled", policy=policy, now=resumed_at)
    session.commit()
    session.expire_all()
    assert email.status is ActionStatus.PLANNED
    manual_clock.set(email.due_at)  # the scheduler hands it out after the resume
    email.status, email.claims = ActionStatus.CLAIMED, 1
    outbox = f"file://{tmp_path}/outbox"
    with task_runtime(session, policy, url, smtp_url=outbox) as runtime:
        run_action(runtime, ActionKind.SEND_EMAIL, email.id)
    session.expire_all()
    assert email.status is ActionStatus.DONE, email.note
    assert list(tmp_path.rglob("*.eml"))


# A worker setting an action aside while a resume commits: the action is not lost.


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_final_action_set_aside_while_the_resume_commits_is_not_lost(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    """The final action was claimed at the window end; ops paused the case before the worker
    got to it. The worker sets the action aside (the case is paused); a resume must wait
    for that to commit, or it would not see the action to bring back."""
    deliver(session, policy, failed("in_1"))
    case = case_of(session, "in_1")
    (final,) = planned(session, ActionKind.FINAL_ACTION)
    window_end = final.due_at
    final.status, final.claimed_at, final.claims = ActionStatus.CLAIMED, window_end, 1
    ops_move(session, case.id, "pause", reason="x", policy=policy, now=window_end + MINUTE)
    session.commit()
    bind = session.get_bind()
    manual_clock.set(window_end + 2 * HOUR)

    def resume() -> None:
        with Session(bind) as ops:
            ops_move(ops, case.id, "resume", reason="x", policy=policy, now=window_end + 2 * HOUR)
            ops.commit()

    with Session(bind) as worker:
        assert _still_wanted(worker, final.id) is None  # reads 'paused', not committed yet
        ops_thread = threading.Thread(target=resume)
        ops_thread.start()
        ops_thread.join(1.0)  # unlocked, the resume is done by now; locked, it waits
        worker.commit()
    ops_thread.join(30)
    session.expire_all()
    assert case_of(session, "in_1").state is DunningState.RETRYING
    assert planned(session, ActionKind.FINAL_ACTION) != []


def _retries(session: Session) -> list[Action]:
    return planned(session, ActionKind.RETRY_PAYMENT)
