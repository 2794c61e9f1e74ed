"""Recording each subscription's MRR over time (``mrr_changes``), from provider events, a
backfill, or our own final action. Append-only and idempotent per (subscription, source);
each new row brings the customer's monthly ledger up to date (:mod:`worker.ledger.monthly`)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing import mrr
from worker.billing.domain import SubscriptionFacts
from worker.billing.models import Subscription
from worker.ledger import monthly
from worker.ledger.models import EndCause, MrrChange

log = logging.getLogger(__name__)

# metrics.md: involuntary = ended for non-payment. Stripe's reason, or its status.
INVOLUNTARY_REASONS = frozenset({"payment_failed"})
INVOLUNTARY_STATUSES = frozenset({"incomplete_expired"})


def effective_time(facts: SubscriptionFacts, *, event_type: str, occurred_at: datetime) -> datetime:
    """When the state in ``facts`` took effect, from the provider's object where it says so
    (the end, the start) and the event's own time otherwise: never when we processed it."""
    if mrr.is_ended(facts, occurred_at):
        return min(facts.ended_at or occurred_at, occurred_at)
    if event_type.endswith(".created") and facts.start_date is not None:
        return min(facts.start_date, occurred_at)
    return occurred_at


def record_state(
    session: Session,
    sub: Subscription,
    facts: SubscriptionFacts,
    *,
    effective_at: datetime,
    source: str,
    now: datetime,
    ended_by_us: bool,
) -> MrrChange | None:
    """The subscription's MRR from ``effective_at`` on, as ``facts`` describe it. None when
    this source was already recorded, or the subscription has no currency to count in.
    ``ended_by_us``: our final action is ending it, or has (the dunning side knows)."""
    currency = facts.currency or sub.currency
    if currency is None:
        log.warning("subscription %s: no currency, not in MRR", facts.id)
        return None
    state = mrr.state_at(facts, effective_at)
    if facts.discounts_unexpanded and state.mrr:
        log.info("subscription %s: discounts not expanded, MRR at list price", facts.id)
    first = facts.items[0] if facts.items else None
    return append(
        session,
        MrrChange(
            subscription_id=sub.id,
            customer_id=sub.customer_id,
            currency=currency,
            effective_at=effective_at,
            mrr=state.mrr,
            discount_ends_at=state.discount_ends_at,
            mrr_after_discount=state.mrr_after_discount,
            ended=state.ended,
            end_cause=end_cause(facts, ended_by_us=ended_by_us) if state.ended else None,
            plan=first.price_id if first else sub.plan,
            interval=first.interval if first else sub.interval,
            source=source,
            recorded_at=now,
        ),
    )


def record_final_action_end(
    session: Session, sub: Subscription, *, at: datetime, source: str, now: datetime
) -> MrrChange | None:
    """Our final action cancelled the subscription: its MRR ends here, involuntarily, whether
    or not the provider's ``customer.subscription.deleted`` ever reaches us."""
    last = session.scalars(
        select(MrrChange)
        .where(MrrChange.subscription_id == sub.id)
        .order_by(MrrChange.effective_at.desc(), MrrChange.id.desc())
    ).first()
    currency = sub.currency or (last.currency if last else None)
    if currency is None:
        return None
    return append(
        session,
        MrrChange(
            subscription_id=sub.id,
            customer_id=sub.customer_id,
            currency=currency,
            effective_at=at,
            mrr=0,
            ended=True,
            end_cause=EndCause.INVOLUNTARY,
            plan=last.plan if last else sub.plan,
            interval=last.interval if last else sub.interval,
            source=source,
            recorded_at=now,
        ),
    )


def end_cause(facts: SubscriptionFacts, *, ended_by_us: bool) -> EndCause:
    """metrics.md: involuntary when the provider says non-payment (``payment_failed``,
    ``incomplete_expired``) or our final action ended it after the dunning window. The
    provider reports our cancellation as ``cancellation_requested``, so only the caller can
    tell (``ended_by_us``); a final action that only marked an invoice uncollectible, or was
    refused, ended nothing."""
    if ended_for_non_payment(facts.cancellation_reason, facts.status) or ended_by_us:
        return EndCause.INVOLUNTARY
    return EndCause.VOLUNTARY


def ended_for_non_payment(cancellation_reason: str | None, status: str | None) -> bool:
    """The provider says the subscription ended because it was not paid."""
    return cancellation_reason in INVOLUNTARY_REASONS or status in INVOLUNTARY_STATUSES


def append(session: Session, row: MrrChange) -> MrrChange | None:
    """Add ``row`` unless its (subscription, source) is known; then bring the customer's
    monthly ledger up to date. Holds the customer's lock from before the insert, and stamps
    the row no earlier than anything already recorded for the customer, so that for every
    instant the ledger and the history it derives from agree (``--as-of``)."""
    monthly.lock_customer(session, row.customer_id)
    known = session.scalar(
        select(MrrChange.id).where(
            MrrChange.subscription_id == row.subscription_id, MrrChange.source == row.source
        )
    )
    if known is not None:
        return None
    row.recorded_at = max(row.recorded_at, monthly.last_recorded(session, row.customer_id))
    session.add(row)
    session.flush()
    monthly.refresh_customer(session, row.customer_id, now=row.recorded_at)
    return row
