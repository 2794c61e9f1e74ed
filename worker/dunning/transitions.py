"""Moving a case through the state machine, and the side effects keyed off each move.

:func:`apply` is the only way a case changes state. It looks the move up in the table
(:mod:`worker.dunning.state`), appends the transition to the log, and then plans or cancels
actions (:mod:`worker.dunning.planning`) and writes ledger rows according to
``(old, new, event)``. Nothing here calls Stripe or SMTP: that happens in
:mod:`worker.dunning.actions` when an action comes due. Functions never commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from worker.billing.domain import Decline
from worker.billing.models import Customer
from worker.config import Policy, RetryMode
from worker.dunning import access, planning, rules
from worker.dunning.cases import policy_of
from worker.dunning.models import ActionKind, CaseTransition, DunningCase
from worker.dunning.state import TERMINAL, DunningEvent, DunningState, next_state
from worker.email.messages import EmailKind
from worker.ledger import service as ledger
from worker.ledger.models import RecoveryMethod

log = logging.getLogger(__name__)
E, S = DunningEvent, DunningState
RECOVERED_EMAIL_MAX_AGE = timedelta(days=1)
FAILURE_EVENTS = frozenset({E.PAYMENT_FAILED, E.PAYMENT_FAILED_HARD, E.ACTION_REQUIRED})


def case_failure_event(
    session: Session, case: DunningCase, decline: Decline, policy: Policy, *, requires_action: bool
) -> DunningEvent:
    """The event a failed charge is for ``case`` (:func:`rules.failure_event`), unless it was
    declined on a card other than the one the case charges: a card the customer has replaced
    since (the retry planned for the new card stands) or the backup card we tried (the case
    goes on as before). A decline applies to the card it happened on."""
    declined_on = decline.card.payment_method_id if decline.card else None
    if declined_on is not None and case.state is not S.OPEN:
        default = session.scalar(
            select(Customer.default_payment_method_id).where(Customer.id == case.customer_id)
        )
        if default not in (None, declined_on) and (
            planning.prompt_retry_pending(session, case)
            or planning.tried_as_backup(session, case, declined_on)
        ):
            return E.REPLACED_CARD_DECLINED
    return rules.failure_event(decline, policy, requires_action=requires_action)


@dataclass(frozen=True)
class Change:
    case: DunningCase
    old: DunningState
    new: DunningState
    event: DunningEvent
    opened: bool = False  # the case was created by this very event: nothing planned yet


def _opens_dunning(old: DunningState, new: DunningState, event: DunningEvent) -> bool:
    """The first failure of a case: its emails, final action and access levels are planned
    (nothing of the kind exists for a case still ``open``)."""
    return old is S.OPEN and event in FAILURE_EVENTS and new not in TERMINAL


def apply(
    session: Session,
    case: DunningCase,
    event: DunningEvent,
    *,
    policy: Policy,
    now: datetime,
    reason: str | None = None,
    source: str | None = None,
    decline: Decline | None = None,
    method: RecoveryMethod | None = None,
    occurred_at: datetime | None = None,
    by_network: bool = False,
) -> Change:
    """Move ``case`` on ``event`` and carry out what the move implies. ``occurred_at`` is
    when it happened at the provider (ledger time), ``now`` when we learn of it. The case's
    own policy version decides, not necessarily ``policy`` (the current one). ``method``:
    how a payment was made; ``by_network``: a card update came from the card network."""
    policy = policy_of(session, case, policy)
    old = case.state
    new = next_state(old, event)
    case.state, case.updated_at = new, now
    if decline is not None and event in FAILURE_EVENTS:
        case.decline_code = decline.reason
        case.decline_class = rules.classify(decline, policy)
    if _opens_dunning(old, new, event):
        access.grace(case)  # with the move: one write of the case
    opened = inspect(case).pending
    if opened:  # a case opened by this event: one INSERT, in the state it moved to
        session.flush()
    session.add(
        CaseTransition(
            case_id=case.id,
            at=now,
            event=event,
            from_state=old,
            to_state=new,
            reason=reason,
            source=source,
        )
    )
    if old != new:
        log.debug(
            "case transition",
            extra={"case_id": case.id, "from": old.value, "to": new.value, "event": event.value},
        )
    change = Change(case, old, new, event, opened=opened)
    _effects(
        session,
        change,
        policy=policy,
        now=now,
        method=method,
        source=source,
        by_network=by_network,
        at=occurred_at or now,
    )
    return change


def _effects(
    session: Session,
    change: Change,
    *,
    policy: Policy,
    now: datetime,
    method: RecoveryMethod | None,
    source: str | None,
    by_network: bool,
    at: datetime,
) -> None:
    case, old, new, event = change.case, change.old, change.new, change.event
    if new in TERMINAL:
        if old not in TERMINAL:
            _enter_terminal(session, case, new, now=now, at=at, method=method)
        elif old is S.CHURNED and event is E.PAYMENT_SUCCEEDED:
            ledger.record_reactivation(session, _ref(case), at=at, now=now)
        return
    if _ops_hold(session, change, policy=policy, now=now, source=source, by_network=by_network):
        return
    if event is E.PAYMENT_PROCESSING:
        planning.cancel(
            session, case, note="a payment is processing", kinds=(ActionKind.RETRY_PAYMENT,)
        )
    elif event in FAILURE_EVENTS:
        if not change.opened:  # a case this event opened has nothing planned to cancel
            planning.cancel(
                session,
                case,
                note="superseded by a newer failure",
                kinds=(ActionKind.RETRY_PAYMENT,),
            )
        if new is S.RETRYING:
            planning.plan_next_retry(session, case, policy=policy, now=now, fresh=change.opened)
        elif event is E.PAYMENT_FAILED_HARD:  # no blind retry; another card may still pay
            planning.plan_backup(
                session, case, policy=policy, now=now, out_of_budget=False, fresh=change.opened
            )
        if _opens_dunning(old, new, event):  # last: these rows go out in the retry's INSERT
            planning.plan_cadence(session, case, event, policy=policy, now=now)
            access.on_open(session, case, policy=policy, now=now)
    elif (
        event is E.PAYMENT_METHOD_UPDATED
        and new is S.RETRYING
        and case.retries_mode == RetryMode.OWN
    ):
        planning.plan_card_update_retry(
            session, case, policy=policy, now=now, source=source, by_network=by_network
        )


def _ops_hold(
    session: Session,
    change: Change,
    *,
    policy: Policy,
    now: datetime,
    source: str | None,
    by_network: bool,
) -> bool:
    """The effects of a pause, a resume, and of anything that happens while paused (facts
    are recorded, nothing runs; a card update's prompt retry is kept for the resume).
    False: the move has nothing to do with an ops hold."""
    case, old, new, event = change.case, change.old, change.new, change.event
    if event is E.OPS_PAUSE and old is not S.PAUSED:
        planning.pause(session, case, now=now)
    elif event in (E.OPS_RESUME, E.OPS_RESUME_AWAITING) and old is S.PAUSED:
        planning.resume(session, case, policy=policy, now=now)
    elif new is S.PAUSED:
        if event is E.PAYMENT_METHOD_UPDATED and case.retries_mode == RetryMode.OWN:
            planning.hold_card_update_retry(
                session, case, policy=policy, now=now, source=source, by_network=by_network
            )
    else:
        return False
    return True


def _ref(case: DunningCase) -> ledger.CaseRef:
    return ledger.CaseRef(case.id, case.customer_id, case.invoice_id)


def _enter_terminal(
    session: Session,
    case: DunningCase,
    new: DunningState,
    *,
    now: datetime,
    at: datetime,
    method: RecoveryMethod | None,
) -> None:
    case.closed_at = at
    planning.cancel(session, case, note=f"case {new.value}", kinds=tuple(ActionKind))
    access.on_end(session, case, new, at=at, now=now)
    if new is S.RECOVERED:
        case.recovered_method = method or RecoveryMethod.PROVIDER
        ledger.record_recovery(session, _ref(case), method=case.recovered_method, at=at, now=now)
        if now - at > RECOVERED_EMAIL_MAX_AGE:
            return  # old news (a replay, a very late webhook): no "thank you" days later
        # The confirmation goes out immediately, quiet hours or not.
        planning.plan(
            session,
            case,
            ActionKind.SEND_EMAIL,
            due_at=now,
            now=now,
            template=EmailKind.PAYMENT_RECOVERED,
            key=f"case:{case.id}:email:recovered",
            reason="payment recovered",
        )
    elif new is S.CHURNED:
        ledger.record_involuntary_churn(session, _ref(case), at=at, now=now)
