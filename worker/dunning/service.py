"""Driving dunning cases: transitions and the side effects keyed off them.

:func:`apply` is the only way a case changes state. It looks the move up in the table
(``worker.dunning.state``), appends the transition to the log, and then plans or cancels
``scheduled_actions`` and writes ledger rows according to ``(old, new, event)``. Nothing here
calls Stripe or SMTP: that happens in ``worker.dunning.actions`` when an action comes due.
Functions take a Session and plain values and never commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from worker.billing.domain import Decline
from worker.billing.models import (
    AttemptOutcome,
    Customer,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
    Subscription,
)
from worker.config import DeclineClass, Policy, SegmentFacts
from worker.dunning import policy as rules
from worker.dunning.models import (
    ActionKind,
    ActionStatus,
    CaseTransition,
    DunningCase,
    PolicyVersion,
    ScheduledAction,
)
from worker.dunning.state import TERMINAL, DunningEvent, DunningState, next_state
from worker.ledger import service as ledger

log = logging.getLogger(__name__)
E, S = DunningEvent, DunningState
RECOVERED_EMAIL_MAX_AGE = timedelta(days=1)
FAILURE_EVENTS = frozenset({E.PAYMENT_FAILED, E.PAYMENT_FAILED_HARD, E.ACTION_REQUIRED})


@dataclass(frozen=True)
class Change:
    case: DunningCase
    old: DunningState
    new: DunningState
    event: DunningEvent


def lock_case(session: Session, case_id: int) -> DunningCase:
    """The case row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite: the
    transaction already holds the database write lock)."""
    case = session.scalar(
        select(DunningCase)
        .where(DunningCase.id == case_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if case is None:
        msg = f"no dunning case {case_id}"
        raise LookupError(msg)
    return case


def case_for_invoice(session: Session, invoice: Invoice) -> DunningCase | None:
    case_id = session.scalar(select(DunningCase.id).where(DunningCase.invoice_id == invoice.id))
    return lock_case(session, case_id) if case_id is not None else None


def open_case(session: Session, invoice: Invoice, *, policy: Policy, now: datetime) -> DunningCase:
    """The invoice's case, created in ``open`` if it has none (one case per invoice)."""
    case = case_for_invoice(session, invoice)
    if case is None:
        _remember(session, policy, now=now)
        effective = policy.for_segment(segment_facts(session, invoice))
        case = DunningCase(
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            state=S.OPEN,
            retries_mode=policy.retries.mode,
            policy_version=policy.version,
            opened_at=now,
            window_ends_at=now + timedelta(days=effective.retries.window_days),
            updated_at=now,
        )
        session.add(case)
        session.flush()  # the id keys the actions planned below
    return case


def segment_facts(session: Session, invoice: Invoice) -> SegmentFacts:
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    return SegmentFacts(
        currency=invoice.currency,
        amount=invoice.amount_due,
        interval=sub.interval if sub else None,
        plan=sub.plan if sub else None,
    )


_POLICIES: dict[str, Policy] = {}  # by digest; a version never changes


def _remember(session: Session, policy: Policy, *, now: datetime) -> None:
    if session.get(PolicyVersion, policy.version) is None:
        session.add(
            PolicyVersion(
                version=policy.version, body=policy.model_dump(mode="json"), created_at=now
            )
        )
        session.flush()


def policy_of(session: Session, case: DunningCase, current: Policy) -> Policy:
    """The policy ``case`` was opened under (``current`` if it is that one), with the
    segment that matches its invoice applied."""
    invoice = session.get_one(Invoice, case.invoice_id)
    return _version_of(session, case, current).for_segment(segment_facts(session, invoice))


def _version_of(session: Session, case: DunningCase, current: Policy) -> Policy:
    if case.policy_version == current.version:
        return current
    if case.policy_version not in _POLICIES:
        stored = session.get(PolicyVersion, case.policy_version)
        if stored is None:  # opened before versions were kept: the current one is all we have
            log.warning("policy %s of case %s is unknown", case.policy_version, case.id)
            return current
        _POLICIES[case.policy_version] = Policy.model_validate(stored.body)
    return _POLICIES[case.policy_version]


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
    method: str | None = None,
    occurred_at: datetime | None = None,
) -> Change:
    """Move ``case`` on ``event`` and carry out what the move implies. ``occurred_at`` is
    when it happened at the provider (ledger time), ``now`` when we learn of it. The case's
    own policy version decides, not necessarily ``policy`` (the current one)."""
    policy = policy_of(session, case, policy)
    old = case.state
    new = next_state(old, event)
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
    case.state, case.updated_at = new, now
    if decline is not None and event in FAILURE_EVENTS:
        case.decline_code = decline.reason
        case.decline_class = rules.classify(decline, policy).value
    if old != new:
        log.info(
            "case transition",
            extra={"case_id": case.id, "from": old.value, "to": new.value, "event": event.value},
        )
    change = Change(case, old, new, event)
    _effects(
        session,
        change,
        policy=policy,
        now=now,
        method=method,
        source=source,
        reason=reason,
        at=occurred_at or now,
    )
    return change


def _effects(
    session: Session,
    change: Change,
    *,
    policy: Policy,
    now: datetime,
    method: str | None,
    source: str | None,
    reason: str | None,
    at: datetime,
) -> None:
    case, old, new, event = change.case, change.old, change.new, change.event
    if new in TERMINAL:
        if old not in TERMINAL:
            _enter_terminal(session, case, new, now=now, at=at, method=method)
        elif old is S.CHURNED and event is E.PAYMENT_SUCCEEDED:
            ledger.record_reactivation(session, case, at=at, now=now)
        return
    if event is E.OPS_PAUSE and old is not S.PAUSED:
        _cancel(session, case, note="paused", kinds=tuple(ActionKind))
    elif event is E.OPS_RESUME and old is S.PAUSED:
        _resume(session, case, policy=policy, now=now)
    elif new is S.PAUSED:
        return  # facts are recorded; nothing is planned while ops hold the case
    elif event in FAILURE_EVENTS:
        if old is S.OPEN:
            _plan_cadence(session, case, event, policy=policy, now=now)
        _cancel(
            session, case, note="superseded by a newer failure", kinds=(ActionKind.RETRY_PAYMENT,)
        )
        if new is S.RETRYING:
            _plan_next_retry(session, case, policy=policy, now=now)
    elif event is E.PAYMENT_METHOD_UPDATED and new is S.RETRYING and case.retries_mode == "own":
        _plan_card_update_retry(session, case, policy=policy, now=now, source=source, via=reason)


# A prompt retry's key says who updated the card, so a recovery can say so too (metrics.md:
# "customer updated card through our link" vs "card updated by the network then retried").
_CARD_UPDATES = {"network-update": "network_update", "card-update": "card_update"}


def card_update_method(idempotency_key: str) -> str | None:
    """``network_update`` or ``card_update`` for a prompt retry's key, else None."""
    return next((m for tag, m in _CARD_UPDATES.items() if f":{tag}:" in idempotency_key), None)


def _plan_card_update_retry(
    session: Session,
    case: DunningCase,
    *,
    policy: Policy,
    now: datetime,
    source: str | None,
    via: str | None,
) -> None:
    """Exactly one prompt retry per card update, within the new card's network budget. A
    retry already planned or running for an earlier update covers this one too: the charge
    uses the default card when it runs. ``via`` is the provider event that told us."""
    pending = session.scalars(
        select(ScheduledAction).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            or_(*(ScheduledAction.idempotency_key.contains(f":{tag}:") for tag in _CARD_UPDATES)),
        )
    ).first()
    if pending is not None:
        return
    _cancel(session, case, note="a card update replaces it", kinds=(ActionKind.RETRY_PAYMENT,))
    invoice = session.get_one(Invoice, case.invoice_id)
    default_card = session.scalar(
        select(Customer.default_payment_method_id).where(Customer.id == case.customer_id)
    )
    decision = rules.prompt_retry(
        policy,
        now=now,
        window_ends_at=case.window_ends_at,
        card=card_history(session, invoice, now=now, payment_method_id=default_card),
        amount=invoice.amount_due,
    )
    tag = "network-update" if via == "payment_method.automatically_updated" else "card-update"
    key = f"dunning:{invoice.provider_id}:{tag}:{source or now.isoformat()}"
    _plan_decision(session, case, decision, now=now, key=key, dropped_key=key)


def _enter_terminal(
    session: Session,
    case: DunningCase,
    new: DunningState,
    *,
    now: datetime,
    at: datetime,
    method: str | None,
) -> None:
    case.closed_at = at
    _cancel(session, case, note=f"case {new.value}", kinds=tuple(ActionKind))
    if new is S.RECOVERED:
        case.recovered_method = method or "provider"
        ledger.record_recovery(session, case, method=case.recovered_method, at=at, now=now)
        if now - at > RECOVERED_EMAIL_MAX_AGE:
            return  # old news (a replay, a very late webhook): no "thank you" days later
        # The confirmation goes out immediately, quiet hours or not.
        plan(
            session,
            case,
            ActionKind.SEND_EMAIL,
            due_at=now,
            now=now,
            template="payment_recovered",
            key=f"case:{case.id}:email:recovered",
            reason="payment recovered",
        )
    elif new is S.CHURNED:
        ledger.record_involuntary_churn(session, case, at=at, now=now)


def _plan_cadence(
    session: Session, case: DunningCase, event: DunningEvent, *, policy: Policy, now: datetime
) -> None:
    """Emails and the final action for a newly opened case (``dunning policy preview`` shows
    the same plan from the same functions)."""
    first = "action_required" if event is E.ACTION_REQUIRED else "payment_failed"
    zone = rules.customer_zone(_customer_timezone(session, case), policy)
    for email in rules.scheduled_emails(
        policy,
        first_template=first,
        opened_at=case.opened_at,
        window_ends_at=case.window_ends_at,
        now=now,
        zone=zone,
    ):
        plan(
            session,
            case,
            ActionKind.SEND_EMAIL,
            due_at=email.at,
            now=now,
            template=email.template,
            key=f"case:{case.id}:email:{email.step}",
            reason=email.reason,
        )
    if case.retries_mode == "own":  # in observe mode the provider ends its own dunning
        plan(
            session,
            case,
            ActionKind.FINAL_ACTION,
            due_at=case.window_ends_at,
            now=now,
            key=f"case:{case.id}:final",
            reason=f"window end: {policy.final_action.action}",
        )


def _plan_next_retry(session: Session, case: DunningCase, *, policy: Policy, now: datetime) -> None:
    invoice = session.get_one(Invoice, case.invoice_id)
    decision = rules.next_retry(
        policy,
        DeclineClass(case.decline_class or DeclineClass.SOFT),
        opened_at=case.opened_at,
        window_ends_at=case.window_ends_at,
        now=now,
        retries_done=retries_done(session, case),
        mode=case.retries_mode,
        card=card_history(session, invoice, now=now),
        amount=invoice.amount_due,
        zone=rules.customer_zone(_customer_timezone(session, case), policy),
    )
    dropped_key = f"dunning:{invoice.provider_id}:retry-dropped:{_retry_count(session, case) + 1}"
    _plan_decision(session, case, decision, now=now, dropped_key=dropped_key)


def _plan_decision(
    session: Session,
    case: DunningCase,
    decision: rules.PlannedRetry | rules.DroppedRetry | None,
    *,
    now: datetime,
    dropped_key: str,
    key: str | None = None,
) -> None:
    """Plan the retry the policy placed, under ``key`` or, without one, the next numbered key
    (:func:`plan_retry`); keep a dropped one in the timeline, cancelled, never run."""
    if isinstance(decision, rules.PlannedRetry):
        if key is not None:
            plan(
                session,
                case,
                ActionKind.RETRY_PAYMENT,
                due_at=decision.at,
                now=now,
                key=key,
                reason=decision.reason,
            )
        else:
            plan_retry(session, case, due_at=decision.at, reason=decision.reason, now=now)
    elif isinstance(decision, rules.DroppedRetry):
        action = plan(
            session,
            case,
            ActionKind.RETRY_PAYMENT,
            due_at=now,
            now=now,
            key=dropped_key,
            reason=decision.reason,
        )
        action.status, action.note = ActionStatus.CANCELLED, "network rule"


def card_history(
    session: Session, invoice: Invoice, *, now: datetime, payment_method_id: str | None = None
) -> rules.CardHistory:
    """Every attempt the networks count against the card the next charge will use (the given
    payment method, else the one this invoice was last tried on): ours, the provider's and
    the customer's, on any invoice, over the last 30 days. The card's history includes its
    old numbers: a payment method keeps its id when the network updates the card."""
    newest = (PaymentAttempt.occurred_at.desc(), PaymentAttempt.id.desc())
    fingerprints: set[str | None] = set()
    if payment_method_id is None:
        last_tried = session.scalars(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.invoice_id == invoice.id,
                or_(
                    PaymentAttempt.card_fingerprint.is_not(None),
                    PaymentAttempt.payment_method_id.is_not(None),
                ),
            )
            .order_by(*newest)
        ).first()
        if last_tried is not None:
            fingerprints.add(last_tried.card_fingerprint)
            payment_method_id = last_tried.payment_method_id
    if payment_method_id is not None:
        fingerprints.update(
            session.scalars(
                select(PaymentAttempt.card_fingerprint)
                .where(PaymentAttempt.payment_method_id == payment_method_id)
                .distinct()
            )
        )
        fingerprints.add(
            session.scalar(
                select(PaymentMethod.fingerprint).where(
                    PaymentMethod.provider_id == payment_method_id
                )
            )
        )
    fingerprints.discard(None)
    same_card: list[ColumnElement[bool]] = [PaymentAttempt.card_fingerprint.in_(fingerprints)]
    if payment_method_id is not None:
        same_card.append(PaymentAttempt.payment_method_id == payment_method_id)
    attempts = session.scalars(
        select(PaymentAttempt)
        .where(or_(*same_card), PaymentAttempt.occurred_at > now - timedelta(days=30))
        .order_by(*newest)
    ).all()
    declines = [a for a in attempts if a.outcome is not AttemptOutcome.SUCCEEDED]
    if fingerprints or payment_method_id is not None:
        last_decline = next(iter(declines), None)
    else:  # no card facts at all: the invoice's own latest decline still carries its advice
        last_decline = session.scalars(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.invoice_id == invoice.id,
                PaymentAttempt.outcome != AttemptOutcome.SUCCEEDED,
            )
            .order_by(*newest)
        ).first()
    return rules.CardHistory(
        brand=next((a.card_brand for a in attempts if a.card_brand), None),
        declines=tuple((a.occurred_at, a.amount) for a in declines),
        last_attempt_at=max((a.occurred_at for a in attempts), default=None),
        network_advice_code=last_decline.network_advice_code if last_decline else None,
        last_declined_at=last_decline.occurred_at if last_decline else None,
    )


def _retry_count(session: Session, case: DunningCase) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ScheduledAction)
            .where(
                ScheduledAction.case_id == case.id, ScheduledAction.kind == ActionKind.RETRY_PAYMENT
            )
        )
        or 0
    )


def plan_retry(
    session: Session, case: DunningCase, *, due_at: datetime, reason: str, now: datetime
) -> ScheduledAction:
    """A retry with a fresh idempotency key (one per planned attempt, never reused)."""
    seq = _retry_count(session, case)
    invoice_ref = session.scalar(select(Invoice.provider_id).where(Invoice.id == case.invoice_id))
    return plan(
        session,
        case,
        ActionKind.RETRY_PAYMENT,
        due_at=due_at,
        reason=reason,
        now=now,
        key=f"dunning:{invoice_ref}:retry:{seq + 1}",
    )


def plan(
    session: Session,
    case: DunningCase,
    kind: ActionKind,
    *,
    due_at: datetime,
    key: str,
    reason: str,
    now: datetime,
    template: str | None = None,
) -> ScheduledAction:
    """Plan an action once: a second call with the same key returns the existing row."""
    existing = session.scalar(select(ScheduledAction).where(ScheduledAction.idempotency_key == key))
    if existing is not None:
        return existing
    action = ScheduledAction(
        case_id=case.id,
        customer_id=case.customer_id,
        kind=kind,
        due_at=due_at,
        idempotency_key=key,
        template=template,
        reason=reason,
        created_at=now,
    )
    session.add(action)
    session.flush()
    return action


def _cancel(
    session: Session, case: DunningCase, *, note: str, kinds: tuple[ActionKind, ...]
) -> None:
    session.execute(
        update(ScheduledAction)
        .where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind.in_(kinds),
            ScheduledAction.status == ActionStatus.PLANNED,
        )
        .values(status=ActionStatus.CANCELLED, note=note)
    )


def _resume(session: Session, case: DunningCase, *, policy: Policy, now: datetime) -> None:
    session.execute(
        update(ScheduledAction)
        .where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.status == ActionStatus.CANCELLED,
            ScheduledAction.note == "paused",
            ScheduledAction.kind != ActionKind.RETRY_PAYMENT,
        )
        .values(status=ActionStatus.PLANNED, note=None)
    )
    _plan_next_retry(session, case, policy=policy, now=now)


def retries_done(session: Session, case: DunningCase) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ScheduledAction)
            .where(
                ScheduledAction.case_id == case.id,
                ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
                # a running retry counts: its result may be recorded after a webhook about it
                ScheduledAction.status.in_([ActionStatus.DONE, ActionStatus.CLAIMED]),
            )
        )
        or 0
    )


def in_flight(session: Session, case: DunningCase, kind: ActionKind) -> ScheduledAction | None:
    """An action of ``kind`` handed to a worker and not finished (attributes webhooks)."""
    return session.scalars(
        select(ScheduledAction).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind == kind,
            ScheduledAction.status == ActionStatus.CLAIMED,
        )
    ).first()


def _customer_timezone(session: Session, case: DunningCase) -> str | None:
    return session.scalar(select(Customer.timezone).where(Customer.id == case.customer_id))


class CaseNotRetryableError(ValueError):
    pass


def retry_now(session: Session, case_id: int, *, now: datetime) -> ScheduledAction:
    """Ops: plan an immediate retry through the normal path (own key, own records)."""
    case = lock_case(session, case_id)
    if case.state in TERMINAL or case.state is S.PAUSED:
        msg = f"case {case_id} is {case.state.value}: nothing to retry"
        raise CaseNotRetryableError(msg)
    if case.retries_mode != "own":
        msg = f"case {case_id} is in observe mode: the provider retries it, we never do"
        raise CaseNotRetryableError(msg)
    _cancel(session, case, note="replaced by ops retry-now", kinds=(ActionKind.RETRY_PAYMENT,))
    return plan_retry(session, case, due_at=now, reason="ops: retry now", now=now)
