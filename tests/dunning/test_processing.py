"""A 200 from ``POST /v1/invoices/{id}/pay`` is not a payment: with a bank debit (ACH, SEPA,
BACS) Stripe accepts the call while the PaymentIntent is ``processing`` and the invoice stays
open. Only an invoice Stripe reports paid is a recovery; the processing payment is a pending
attempt that blocks further retries, emails and the final action, and ends with
``invoice.paid`` or a failure that counts (issue #9, item 5). Against the Stripe-compatible
peer, through the official library and the real task bodies."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import deliver, dunning_record, failed, paid, planned, task_runtime
from tests.support.worked_examples import case_of
from worker.billing.models import AttemptOutcome, Invoice, PaymentAttempt
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import run_final_action, run_retry
from worker.dunning.cards import card_history
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.operations import CaseNotRetryableError, retry_now
from worker.dunning.state import DunningEvent, DunningState
from worker.dunning.views import show_case
from worker.ledger.models import RecoveryMethod
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, PROCESSING, CardSpec, StripePeer


def _actions(session: Session, case_id: int, kind: ActionKind) -> list[Action]:
    return list(
        session.scalars(
            select(Action).where(Action.case_id == case_id, Action.kind == kind).order_by(Action.id)
        )
    )


def _run(session: Session, policy: Policy, url: str, action: Action, at: Any, task: Any) -> int:
    """Claim ``action`` at ``at`` as the scheduler does and run its task body."""
    action.status, action.claimed_at, action.claims = ActionStatus.CLAIMED, at, 1
    action_id = action.id
    with task_runtime(session, policy, url) as runtime:
        task(runtime, action_id)
    session.expire_all()
    return action_id


def _processing_retry(
    session: Session, policy: Policy, account: StripePeer, url: str, clock: ManualClock
) -> tuple[str, str, dict[str, Any], str]:
    """An invoice that failed, then our first retry, which the bank accepts as processing.
    Returns (invoice, subscription, payment method, the pending charge)."""
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS, PROCESSING])
    customer = account.create_customer(email="ach@example.test", name="Ach", card=card)
    pm = account.get(account.get(customer)["invoice_settings"]["default_payment_method"])
    sub = account.create_subscription(customer_id=customer, unit_amount=4900)
    invoice, was_paid = account.bill(sub)
    assert not was_paid
    deliver(session, policy, failed(invoice, card=pm))
    case = case_of(session, invoice)
    (retry,) = _actions(session, case.id, ActionKind.RETRY_PAYMENT)
    clock.set(retry.due_at)
    _run(session, policy, url, retry, retry.due_at, run_retry)
    pending = [e for e in account.events if e["type"] == "charge.pending"]
    assert account.invoice(invoice)["status"] == "open"  # Stripe answered 200 all the same
    return invoice, sub, pm, pending[-1]["data"]["object"]["id"]


def _assert_pending(session: Session, invoice: str) -> None:
    case = case_of(session, invoice)
    assert case.state is DunningState.RETRYING  # not recovered: nothing was paid yet
    assert case.recovered_method is None
    (attempt,) = session.scalars(
        select(PaymentAttempt).where(PaymentAttempt.outcome == AttemptOutcome.PROCESSING)
    )
    retries = _actions(session, case.id, ActionKind.RETRY_PAYMENT)
    assert retries[0].note == "processing: accepted, not settled yet"
    assert attempt.action_id == retries[0].id
    assert not [r for r in retries if r.status is ActionStatus.PLANNED]  # nothing else tried
    templates = {a.template for a in _actions(session, case.id, ActionKind.SEND_EMAIL)}
    assert "payment_recovered" not in templates  # no thank-you for money not received
    shown = show_case(session, case.id)  # what `dunning cases show` prints
    assert shown is not None
    assert [a["outcome"] for a in shown["attempts_detail"]] == ["failed", "processing"]


def test_a_debit_the_bank_refuses_counts_as_the_failure_it_is(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, _, pm, charge = _processing_retry(session, policy, account, url, manual_clock)
    _assert_pending(session, invoice)
    # Three days later the bank refuses the debit: the same charge fails.
    refused_at = manual_clock.now() + timedelta(days=3)
    manual_clock.set(refused_at)
    account.settle_processing(invoice, INSUFFICIENT_FUNDS)
    refusal = failed(invoice, at=refused_at, card=pm, charge=charge)
    deliver(session, policy, refusal, now=refused_at)
    session.expire_all()
    case = case_of(session, invoice)
    (attempt,) = session.scalars(select(PaymentAttempt).where(PaymentAttempt.charge_id == charge))
    assert (attempt.outcome, attempt.decline_code, attempt.counted) == (
        AttemptOutcome.FAILED,
        "insufficient_funds",
        True,
    )
    events = [t.event for t in session.scalars(select(CaseTransition).order_by(CaseTransition.id))]
    assert events[-2:] == [DunningEvent.PAYMENT_PROCESSING, DunningEvent.PAYMENT_FAILED]
    assert case.state is DunningState.RETRYING
    planned = [
        r
        for r in _actions(session, case.id, ActionKind.RETRY_PAYMENT)
        if r.status is ActionStatus.PLANNED
    ]
    assert len(planned) == 1  # the schedule goes on
    assert planned[0].due_at > refused_at


def test_a_debit_that_settles_is_our_retrys_recovery_and_nothing_acts_before(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    invoice, sub, _, _ = _processing_retry(session, policy, account, url, manual_clock)
    case = case_of(session, invoice)
    with pytest.raises(CaseNotRetryableError, match="processing"):
        retry_now(session, case.id, policy=policy, now=manual_clock.now())
    # The window ends while the debit is still processing: the final action waits.
    end = case.window_ends_at
    manual_clock.set(end)
    (final,) = _actions(session, case.id, ActionKind.FINAL_ACTION)
    final_id = _run(session, policy, url, final, end, run_final_action)
    waiting = session.get_one(Action, final_id)
    assert (waiting.status, waiting.note) == (
        ActionStatus.PLANNED,
        "waiting: a payment is processing",
    )
    assert waiting.due_at > end
    assert account.get(sub)["status"] != "canceled"
    # The bank settles it: Stripe reports the invoice paid, and it was our retry's doing.
    manual_clock.set(end + timedelta(hours=2))
    account.settle_processing(invoice)
    assert account.invoice(invoice)["status"] == "paid"
    deliver(session, policy, paid(invoice, at=manual_clock.now()), now=manual_clock.now())
    session.expire_all()
    case = case_of(session, invoice)
    assert (case.state, case.recovered_method) == (DunningState.RECOVERED, RecoveryMethod.RETRY)
    (attempt,) = session.scalars(
        select(PaymentAttempt).where(PaymentAttempt.action_id.is_not(None))
    )
    assert attempt.outcome is AttemptOutcome.SUCCEEDED
    assert session.get_one(Action, final_id).status is ActionStatus.CANCELLED


def test_processing_is_not_a_card_decline(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """While pending, the attempt is not a decline in the card's history, and a second
    delivery of the processing result records nothing twice."""
    account, url = peer
    invoice, _, _, _ = _processing_retry(session, policy, account, url, manual_clock)
    case = case_of(session, invoice)
    retry = _actions(session, case.id, ActionKind.RETRY_PAYMENT)[0]
    assert retry.status is ActionStatus.DONE
    with task_runtime(session, policy, url) as runtime:  # a redelivered task: nothing to do
        run_retry(runtime, retry.id)
    session.expire_all()
    assert account.charge_attempts(invoice) == 2
    assert len(session.scalars(select(PaymentAttempt)).all()) == 2
    invoice_row = session.get_one(Invoice, case.invoice_id)
    history = card_history(session, invoice_row, now=manual_clock.now(), policy=policy)
    assert [at for at, _ in history.declines] == [START]  # the first failure only


def test_a_refusal_reported_first_by_a_charge_naming_no_invoice_settles_the_debit(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    """On newer API versions ``charge.failed`` names no invoice, and it is often processed
    before ``invoice.payment_failed``: the two reports are still one attempt, and the debit
    is settled, not left pending forever."""
    account, url = peer
    invoice, _, pm, charge = _processing_retry(session, policy, account, url, manual_clock)
    refused_at = manual_clock.now() + timedelta(days=3)
    manual_clock.set(refused_at)
    account.settle_processing(invoice, INSUFFICIENT_FUNDS)
    charge_failed = copy.deepcopy(
        next(e for e in reversed(account.events) if e["type"] == "charge.failed")
    )
    charge_failed["data"]["object"]["invoice"] = None
    charge_failed["api_version"] = "2025-03-31.basil"
    deliver(session, policy, charge_failed, now=refused_at)
    deliver(session, policy, failed(invoice, at=refused_at, card=pm, charge=charge), now=refused_at)
    session.expire_all()
    case = case_of(session, invoice)
    attempts = session.scalars(select(PaymentAttempt).order_by(PaymentAttempt.id)).all()
    assert [a.outcome for a in attempts] == [AttemptOutcome.FAILED, AttemptOutcome.FAILED]
    assert attempts[1].charge_id == charge and attempts[1].action_id is not None
    retries = _actions(session, case.id, ActionKind.RETRY_PAYMENT)
    assert len([r for r in retries if r.status is ActionStatus.PLANNED]) == 1  # it goes on


def test_invoice_paid_processed_before_our_result_leaves_nothing_pending(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    deliver(session, policy, failed("in_pf"))
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    manual_clock.set(retry.due_at)
    retry.status, retry.claimed_at, retry.charging_at = (
        ActionStatus.CLAIMED,
        retry.due_at,
        retry.due_at,
    )
    deliver(session, policy, paid("in_pf", at=retry.due_at), now=retry.due_at)
    dunning_record(session, policy, retry.id, PaymentResult(succeeded=False, processing=True))
    case = case_of(session, "in_pf")
    assert (case.state, case.recovered_method) == (DunningState.RECOVERED, RecoveryMethod.RETRY)
    outcomes = [
        a.outcome for a in session.scalars(select(PaymentAttempt).order_by(PaymentAttempt.id))
    ]
    assert outcomes == [AttemptOutcome.FAILED, AttemptOutcome.SUCCEEDED]
