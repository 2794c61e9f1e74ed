"""Dunning cases: finding, locking and opening them, the policy each was opened under, and
what is running for them right now.

One case per failed invoice. Functions take a Session and plain values and never commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from weakref import WeakKeyDictionary

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from worker.billing import mrr
from worker.billing.domain import SubscriptionFacts
from worker.billing.models import Customer, Invoice, Subscription
from worker.config import DeclineClass, Policy, RetryMode, SegmentFacts
from worker.db import enqueue_after_commit
from worker.dunning.models import (
    ActionKind,
    ActionStatus,
    DunningCase,
    PolicyVersion,
    ScheduledAction,
)
from worker.dunning.state import TERMINAL, DunningState
from worker.ledger.models import MrrChange, RecoveryMethod

log = logging.getLogger(__name__)


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
    """The invoice's case, locked for this transaction (one statement), or None."""
    return session.scalar(
        select(DunningCase)
        .where(DunningCase.invoice_id == invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def new_case(
    session: Session, invoice: Invoice, *, failed_at: datetime, policy: Policy, now: datetime
) -> DunningCase:
    """A case in ``open`` for an invoice that has none. It opens when the payment failed at
    the provider, and its window runs from there, however late we learn of it (a backlog, a
    replay). Written at the next flush: its first move (:func:`worker.dunning.transitions.
    apply`) is then part of the same INSERT."""
    _remember(session, policy, now=now)
    effective = policy.for_segment(segment_facts(session, invoice))
    case = DunningCase(
        invoice_id=invoice.id,
        customer_id=invoice.customer_id,
        state=DunningState.OPEN,
        retries_mode=policy.retries.mode,
        policy_version=policy.version,
        opened_at=failed_at,
        window_ends_at=failed_at + timedelta(days=effective.retries.window_days),
        updated_at=now,
        paused_seconds=0,
    )
    session.add(case)
    return case


def open_cases_of_subscription(session: Session, subscription_id: int) -> Sequence[int]:
    """The ids of the subscription's cases that are not over yet."""
    return session.scalars(
        select(DunningCase.id)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.subscription_id == subscription_id, DunningCase.state.not_in(TERMINAL))
    ).all()


def open_cases_to_retry(session: Session, customer_id: int) -> Sequence[int]:
    """The ids of the customer's open cases a new card may pay: fraud and stop-payment
    declines never retry, whatever card comes next."""
    return session.scalars(
        select(DunningCase.id).where(
            DunningCase.customer_id == customer_id,
            DunningCase.state.not_in(TERMINAL),
            or_(
                DunningCase.decline_class.is_(None),
                DunningCase.decline_class.not_in([DeclineClass.FRAUD, DeclineClass.STOP]),
            ),
        )
    ).all()


def segment_facts(session: Session, invoice: Invoice) -> SegmentFacts:
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    return SegmentFacts(
        currency=invoice.currency,
        amount=invoice.amount_due,
        interval=sub.interval if sub else None,
        plan=sub.plan if sub else None,
    )


_POLICIES: dict[str, Policy] = {}  # by digest; a version never changes
# The versions each database is known to hold (committed): checked once per process.
_STORED: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()


def _remember(session: Session, policy: Policy, *, now: datetime) -> None:
    stored = _STORED.setdefault(session.get_bind().engine, set())
    if policy.version in stored:
        return
    if session.get(PolicyVersion, policy.version) is None:
        session.add(
            PolicyVersion(
                version=policy.version, body=policy.model_dump(mode="json"), created_at=now
            )
        )
        session.flush()
    enqueue_after_commit(session, lambda: stored.add(policy.version))


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


def in_flight(session: Session, case: DunningCase, kind: ActionKind) -> ScheduledAction | None:
    """An action of ``kind`` handed to a worker and not finished (attributes webhooks)."""
    return session.scalars(
        select(ScheduledAction).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind == kind,
            ScheduledAction.status == ActionStatus.CLAIMED,
        )
    ).first()


def paid_elsewhere(case: DunningCase) -> RecoveryMethod:
    """Who paid a case none of our retries paid: the provider's own retry in observe mode,
    otherwise the customer (hosted page, another card, out of band)."""
    if case.retries_mode == RetryMode.OBSERVE:
        return RecoveryMethod.PROVIDER
    return RecoveryMethod.CUSTOMER


def ended_by_final_action(
    session: Session, subscription_id: int, facts: SubscriptionFacts, *, at: datetime
) -> bool:
    """The subscription, as ``facts`` describe it at ``at``, has ended, and our final action
    is ending it (one is running right now) or has (its own end row is in the MRR history):
    the end is involuntary, whatever reason the provider gives (it reports our cancellation
    as ``cancellation_requested``)."""
    return mrr.is_ended(facts, at) and final_action_ended(session, subscription_id)


def final_action_ended(session: Session, subscription_id: int) -> bool:
    """Our final action (any case's) is cancelling this subscription or has."""
    final_actions = (
        select(ScheduledAction)
        .join(DunningCase, DunningCase.id == ScheduledAction.case_id)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(
            Invoice.subscription_id == subscription_id,
            ScheduledAction.kind == ActionKind.FINAL_ACTION,
        )
    )
    running = session.scalar(
        final_actions.where(ScheduledAction.status == ActionStatus.CLAIMED).limit(1)
    )
    ours = session.scalar(
        select(MrrChange.id)
        .where(
            MrrChange.subscription_id == subscription_id,
            MrrChange.ended,
            MrrChange.source.in_(final_actions.with_only_columns(ScheduledAction.idempotency_key)),
        )
        .limit(1)
    )
    return running is not None or ours is not None


def ended_subscription(session: Session, invoice: Invoice) -> Subscription | None:
    """The invoice's subscription if it has ended (as far as its latest event says)."""
    if invoice.subscription_id is None:
        return None
    sub = session.get(Subscription, invoice.subscription_id)
    ended = sub is not None and (sub.status in mrr.ENDED_STATUSES or sub.ended_at is not None)
    return sub if ended else None


def provider_retries_planned(session: Session, *, now: datetime) -> int:
    """Open cases we retry ourselves whose invoice the provider will also retry: Stripe's
    Smart Retries are on while ``retries.mode = own`` (the card is charged twice as often)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(DunningCase)
            .join(Invoice, Invoice.id == DunningCase.invoice_id)
            .where(
                DunningCase.retries_mode == RetryMode.OWN,
                DunningCase.state.not_in(TERMINAL),
                Invoice.next_payment_attempt > now,
            )
        )
        or 0
    )


SMART_RETRIES_ON = (
    "Stripe will retry this invoice itself while retries.mode = own: turn Smart Retries off "
    "in Stripe (Billing > Revenue recovery), or set retries.mode = observe"
)


def customer_timezone(session: Session, case: DunningCase) -> str | None:
    """From the customer's row (usually loaded already in this transaction)."""
    customer = session.get(Customer, case.customer_id)
    return customer.timezone if customer is not None else None
