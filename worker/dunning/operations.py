"""What the rest of the product tells or asks dunning, in dunning's own terms: a payment on an
invoice failed or succeeded, an invoice was closed, a subscription ended, a customer's card
changed, a card is about to expire; ops want a case retried now.

The event handlers (:mod:`worker.webhooks.handlers`) update the billing mirror first and then
call these with our rows and plain values; dunning knows nothing of provider events. Each
operation is safe to run twice and safe to run late. Functions never commit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing import service as billing
from worker.billing.domain import Card, Decline
from worker.billing.models import (
    AttemptOutcome,
    AttemptSource,
    Customer,
    Invoice,
    Subscription,
    by_provider_id,
)
from worker.config import Policy, RetryMode
from worker.dunning import expiring, planning, rules
from worker.dunning.cases import (
    SMART_RETRIES_ON,
    case_for_invoice,
    ended_subscription,
    final_action_ended,
    in_flight,
    lock_case,
    new_case,
    open_cases_of_subscription,
    open_cases_to_retry,
    paid_elsewhere,
    policy_of,
)
from worker.dunning.models import ActionKind, DunningCase, ScheduledAction
from worker.dunning.state import TERMINAL, DunningEvent, DunningState
from worker.dunning.transitions import apply, case_failure_event
from worker.ledger import history
from worker.ledger.models import RecoveryMethod

log = logging.getLogger(__name__)
S = DunningState

# A claim older than this is a lost one (the worker died), not the payer of a recovery.
RECENT_CLAIM = timedelta(minutes=5)


def payment_failed(
    session: Session,
    invoice: Invoice,
    *,
    decline: Decline,
    requires_action: bool,
    occurred_at: datetime,
    source: str,
    reason: str,
    policy: Policy,
    now: datetime,
    new_invoice: bool = False,
) -> None:
    """A charge on ``invoice`` failed (``requires_action``: the customer must authenticate).
    Opens the invoice's case if needed, records the attempt on the card once, and moves the
    case, unless this very charge already did (our 402, or a duplicate event).
    ``new_invoice``: this event created the invoice's row, so it has no case and no payment
    yet (nothing to look up)."""
    if invoice.status in billing.FINAL_INVOICE_STATUSES:
        return  # a late failure for an invoice already paid or closed changes nothing
    outcome = AttemptOutcome.ACTION_REQUIRED if requires_action else AttemptOutcome.FAILED
    if invoice.subscription_id is None and not policy.retries.one_off_invoices:
        # Left to the provider (retries.one_off_invoices), but the card still counts it.
        billing.record_attempt(
            session,
            invoice=invoice,
            source=AttemptSource.PROVIDER,
            outcome=outcome,
            at=occurred_at,
            decline=decline,
        )
        return
    case = None if new_invoice else case_for_invoice(session, invoice)
    if case is not None and case.state in TERMINAL:
        return  # the case is over: a late failure report changes nothing
    ours = in_flight(session, case, ActionKind.RETRY_PAYMENT) if case is not None else None
    if new_invoice:
        attempt, first_time = billing.record_new_invoice_failure(
            session,
            invoice=invoice,
            source=AttemptSource.PROVIDER,
            outcome=outcome,
            at=occurred_at,
            decline=decline,
        )
    else:
        attempt = billing.record_attempt(
            session,
            invoice=invoice,
            source=AttemptSource.OURS if ours else AttemptSource.PROVIDER,
            outcome=outcome,
            at=occurred_at,
            decline=decline,
            action_id=ours.id if ours else None,
        )
        first_time = billing.count_once(attempt)
    if case is None:  # written with its first move (transitions.apply)
        case = new_case(session, invoice, failed_at=occurred_at, policy=policy, now=now)
    theirs = invoice.next_payment_attempt
    if case.retries_mode == RetryMode.OWN and theirs is not None and theirs > now:
        log.warning(
            "invoice %s: %s (next attempt %s); ours keep clear of it",
            invoice.provider_id,
            SMART_RETRIES_ON,
            theirs.isoformat(),
        )
    if not first_time:
        return
    ended = ended_subscription(session, invoice)
    if ended is not None:  # processed after its subscription's end (events are not ordered)
        apply(
            session,
            case,
            _cancelled(session, ended),
            policy=policy,
            now=now,
            source=source,
            reason=f"{reason}, after its subscription ended "
            f"({ended.cancellation_reason or ended.status})",
        )
        return
    apply(
        session,
        case,
        case_failure_event(
            session,
            case,
            decline,
            policy_of(session, case, policy),
            requires_action=requires_action,
        ),
        policy=policy,
        now=now,
        decline=decline,
        source=source,
        reason=reason,
    )


def invoice_paid(
    session: Session,
    invoice: Invoice,
    *,
    occurred_at: datetime,
    source: str,
    reason: str,
    policy: Policy,
    now: datetime,
) -> None:
    case = case_for_invoice(session, invoice)
    method = recovery_method(session, case, now=now) if case is not None else None
    settled = billing.pending_attempt(session, invoice.id)
    if settled is not None:  # the debit that was processing went through
        settled.outcome, settled.counted = AttemptOutcome.SUCCEEDED, True
    if case is None:
        return
    apply(
        session,
        case,
        DunningEvent.PAYMENT_SUCCEEDED,
        policy=policy,
        now=now,
        source=source,
        method=method,
        reason=reason,
        occurred_at=occurred_at,
    )


def recovery_method(session: Session, case: DunningCase, *, now: datetime) -> RecoveryMethod:
    """How a case got paid: our retry (one running right now, scheduled or prompted by a card
    update, or one whose bank debit was processing), the provider's retry, or the customer."""
    ours = in_flight(session, case, ActionKind.RETRY_PAYMENT)
    if ours is not None and ours.claimed_at and now - ours.claimed_at < RECENT_CLAIM:
        return ours.recovery_method or RecoveryMethod.RETRY
    settling = billing.pending_attempt(session, case.invoice_id)
    if settling is not None and settling.action_id is not None:
        ours = session.get_one(ScheduledAction, settling.action_id)
        return ours.recovery_method or RecoveryMethod.RETRY
    return paid_elsewhere(case)


def invoice_closed(
    session: Session,
    invoice: Invoice,
    *,
    uncollectible: bool,
    source: str,
    reason: str,
    policy: Policy,
    now: datetime,
) -> None:
    """The provider voided the invoice or marked it uncollectible."""
    case = case_for_invoice(session, invoice)
    if case is None or in_flight(session, case, ActionKind.FINAL_ACTION):
        return  # our own final action closed it; that task records the outcome
    # In observe mode an uncollectible invoice means the provider's retries ran out: its
    # dunning ended unpaid.
    provider_gave_up = uncollectible and case.retries_mode == RetryMode.OBSERVE
    apply(
        session,
        case,
        DunningEvent.CANCELLED_INVOLUNTARILY if provider_gave_up else DunningEvent.INVOICE_CLOSED,
        policy=policy,
        now=now,
        source=source,
        reason=reason,
    )


def subscription_ended(
    session: Session,
    subscription: Subscription,
    *,
    source: str,
    reason: str,
    policy: Policy,
    now: datetime,
) -> None:
    """The subscription ended: its open cases close (:func:`_cancelled` says how)."""
    event = _cancelled(session, subscription)
    for case_id in open_cases_of_subscription(session, subscription.id):
        case = lock_case(session, case_id)
        apply(
            session,
            case,
            event,
            policy=policy,
            now=now,
            source=source,
            reason=reason,
        )


def _cancelled(session: Session, subscription: Subscription) -> DunningEvent:
    """How an ended subscription ends its cases: as involuntary churn when it ended for
    non-payment (the provider says so, or a final action of any of its cases is ending it or
    did), else voluntarily."""
    involuntary = history.ended_for_non_payment(
        subscription.cancellation_reason, subscription.status
    ) or final_action_ended(session, subscription.id)
    if involuntary:
        return DunningEvent.CANCELLED_INVOLUNTARILY
    return DunningEvent.CANCELLED_VOLUNTARILY


def card_updated(
    session: Session,
    customer: Customer,
    *,
    by_network: bool,
    source: str,
    reason: str,
    policy: Policy,
    now: datetime,
) -> None:
    """The card we charge changed (a new default, or the default renewed or edited): each
    open case that a card can pay gets one prompt retry."""
    for case_id in open_cases_to_retry(session, customer.id):
        case = lock_case(session, case_id)
        apply(
            session,
            case,
            DunningEvent.PAYMENT_METHOD_UPDATED,
            policy=policy,
            now=now,
            source=source,
            reason=reason,
            by_network=by_network,
        )


def cards_on_file_changed(
    session: Session, customer: Customer, *, by_network: bool, at: datetime
) -> None:
    """A card event for the customer: notices about a card that is no longer the one we
    charge, or that was renewed, are settled (for the report: updated before expiry)."""
    expiring.note_replaced(session, customer, at=at, by_network=by_network)


def card_expiring(
    session: Session, customer: Customer, card: Card, *, policy: Policy, now: datetime
) -> None:
    """The provider says a card on file expires soon: tell the customer once, outside their
    quiet hours."""
    expiring.plan_notice(session, customer, card, policy=policy, now=now, announced=True)


class CaseNotRetryableError(ValueError):
    pass


def retry_now(session: Session, case_id: int, *, policy: Policy, now: datetime) -> ScheduledAction:
    """Ops: plan an immediate retry through the normal path (own key, own records). It skips
    the schedule and our own spacing, never a network rule: a card out of budget or under a
    MAC wait gets it at the first compliant time if that is within a day, else (and for a
    card that must never be retried) not at all (:class:`CaseNotRetryableError`). The
    window is ours to waive too: ops may retry a case whose window has passed."""
    case = lock_case(session, case_id)
    if case.state in TERMINAL or case.state is DunningState.PAUSED:
        msg = f"case {case_id} is {case.state.value}: nothing to retry"
        raise CaseNotRetryableError(msg)
    if case.retries_mode != RetryMode.OWN:
        msg = f"case {case_id} is in observe mode: the provider retries it, we never do"
        raise CaseNotRetryableError(msg)
    if billing.pending_attempt(session, case.invoice_id):
        msg = f"case {case_id}: a payment is processing (bank debit); wait for its outcome"
        raise CaseNotRetryableError(msg)
    planning.cancel(
        session, case, note="replaced by ops retry-now", kinds=(ActionKind.RETRY_PAYMENT,)
    )
    planned = planning.plan_ops_retry(
        session, case, policy=policy_of(session, case, policy), now=now
    )
    if isinstance(planned, rules.DroppedRetry):
        raise CaseNotRetryableError(f"case {case_id}: {planned.reason}")
    return planned


class OpsRefusedError(ValueError):
    """What ops asked cannot be done to this case (its state says why)."""


_OPS_EVENTS = {
    "pause": (DunningEvent.OPS_PAUSE, frozenset({S.OPEN, S.RETRYING, S.AWAITING_CUSTOMER})),
    "resume": (DunningEvent.OPS_RESUME, frozenset({S.PAUSED})),
    "close": (
        DunningEvent.OPS_CLOSE,
        frozenset({S.OPEN, S.RETRYING, S.AWAITING_CUSTOMER, S.PAUSED}),
    ),
}


def ops_move(
    session: Session, case_id: int, verb: str, *, reason: str, policy: Policy, now: datetime
) -> DunningCase:
    """Ops pause, resume or close one case, through the state machine like any other event:
    the timeline records ``ops: <reason>``. A pause sets every planned action aside and
    stops the case's clock; a resume moves the window and those actions on by the pause
    (:func:`planning.resume`), back to retrying or, when its latest decline needs the
    customer and no card update came, to awaiting the customer; a close ends dunning
    without a final action (the invoice stays open at the provider; access is restored).
    Raises :class:`OpsRefusedError` when the case is not in a state the verb applies to
    (nothing changes)."""
    event, allowed = _OPS_EVENTS[verb]
    case = lock_case(session, case_id)
    if case.state not in allowed:
        msg = f"case {case_id} is {case.state.value}: cannot {verb} it"
        raise OpsRefusedError(msg)
    if event is DunningEvent.OPS_RESUME and not planning.resumes_retrying(session, case):
        event = DunningEvent.OPS_RESUME_AWAITING
    apply(session, case, event, policy=policy, now=now, source="ops", reason=f"ops: {reason}")
    return case


def customer_case_ids(session: Session, provider_customer_id: str, verb: str) -> list[int]:
    """The cases of a customer (by provider id) that ``verb`` applies to, oldest first.
    Raises LookupError for a customer we do not know."""
    customer = session.scalar(
        select(Customer.id).where(by_provider_id(Customer, provider_customer_id))
    )
    if customer is None:
        msg = f"no customer {provider_customer_id}"
        raise LookupError(msg)
    _, allowed = _OPS_EVENTS[verb]
    return list(
        session.scalars(
            select(DunningCase.id)
            .where(DunningCase.customer_id == customer, DunningCase.state.in_(allowed))
            .order_by(DunningCase.id)
        )
    )
