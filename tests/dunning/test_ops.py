"""Ops pause, resume and close (issue #12, item 5), through the state machine on both
databases. A resume continues the plan where the pause stopped it: the window and every action
set aside move on by the pause, so nothing that fell due meanwhile fires in a burst."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import deliver, failed, paid
from tests.support.worked_examples import case_of
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.operations import OpsRefusedError, customer_case_ids, ops_move
from worker.dunning.state import DunningState
from worker.ledger.models import LedgerMovement, MovementKind

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


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
