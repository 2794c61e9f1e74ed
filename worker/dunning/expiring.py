"""Notices before a card expires, for PaymentMethods as well as legacy sources.

Stripe announces expiring legacy card sources (``customer.source.expiring``) but nothing for
PaymentMethods, so a daily scan (:func:`scan`, also ``dunning cards scan-expiring``) pages
through the customers with their default PaymentMethod expanded, rate-limited like the
backfill, mirrors each card and plans the notice for the step it has reached
(``card_expiry.notice_days_before``, days before the end of the expiry month). One notice per
card and step (the key says which), and only the nearest step: a scan that starts 5 days
before expiry sends the 7-day notice, not the 30-day one too.

Right before a notice goes out, :func:`stale_notice` looks again: a customer who changed the
card, or a card the network renewed, gets nothing. :func:`note_replaced` records when a
noticed card was replaced or renewed (provider time), so the report can count cards updated
before they expired (``card_expiry_notices``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from worker.billing import normalise
from worker.billing import service as billing
from worker.billing.domain import Card, CustomerFacts, EventParseError
from worker.billing.models import Customer, PaymentMethod, by_provider_id
from worker.billing.ratelimit import RateLimiter
from worker.config import Policy
from worker.dunning.cards import expiry_end
from worker.dunning.models import ActionKind, CardExpiryNotice, ScheduledAction
from worker.dunning.rules import customer_zone, outside_quiet_hours
from worker.email.messages import EmailKind
from worker.runtime import Runtime

log = logging.getLogger(__name__)

EXPAND: Final = ("data.invoice_settings.default_payment_method",)
PAGE_SIZE: Final = 100
REQUESTS_PER_SECOND: Final = 10.0  # as the backfill: room for the running worker


def plan_notice(
    session: Session,
    customer: Customer,
    card: Card,
    *,
    policy: Policy,
    now: datetime,
    announced: bool = False,
) -> bool:
    """Plan the notice for the nearest step ``card`` has reached; True when one was planned.
    ``announced``: the provider said it expires soon (``customer.source.expiring``), which
    counts as reaching the first step."""
    settings = policy.card_expiry
    pm_id = card.payment_method_id
    if pm_id is None or card.exp_year is None or card.exp_month is None:
        return False
    if (card.brand or "") in settings.skip_brands:
        return False
    left = expiry_end(card.exp_year, card.exp_month) - now
    if left <= timedelta(0):
        return False  # expired: a failed payment's dunning takes over
    reached = [d for d in settings.notice_days_before if left <= timedelta(days=d)]
    if not reached and announced and settings.notice_days_before:
        reached = [max(settings.notice_days_before)]
    if not reached:
        return False
    step = min(reached)
    expires = _expiry_of(card.exp_year, card.exp_month)
    key = f"customer:{customer.id}:card-expiring:{pm_id}:{expires}:{step}d"
    if session.scalar(select(ScheduledAction.id).where(ScheduledAction.idempotency_key == key)):
        return False
    if not session.scalar(
        select(CardExpiryNotice.id).where(
            CardExpiryNotice.payment_method == pm_id, CardExpiryNotice.expires == expires
        )
    ):
        session.add(
            CardExpiryNotice(
                customer_id=customer.id, payment_method=pm_id, expires=expires, first_planned_at=now
            )
        )
    zone = customer_zone(customer.timezone, policy)
    session.add(
        ScheduledAction(
            customer_id=customer.id,
            case_id=None,
            kind=ActionKind.SEND_EMAIL,
            due_at=outside_quiet_hours(now, zone, policy.emails.quiet_hours),
            idempotency_key=key,
            template=EmailKind.CARD_EXPIRING,
            payment_method=pm_id,
            reason=f"card expires {expires}: {step}-day notice",
            created_at=now,
        )
    )
    session.flush()
    return True


def stale_notice(
    session: Session, customer: Customer, action: ScheduledAction, *, policy: Policy, now: datetime
) -> str | None:
    """Why a planned card-expiring notice should not go out any more, or None."""
    if action.payment_method is None:
        return None
    if customer.default_payment_method_id != action.payment_method:
        return "skipped: the customer changed the card"
    pm = session.scalar(
        select(PaymentMethod).where(by_provider_id(PaymentMethod, action.payment_method))
    )
    if pm is None or pm.exp_year is None or pm.exp_month is None:
        return None
    horizon = timedelta(days=max(policy.card_expiry.notice_days_before, default=0))
    if expiry_end(pm.exp_year, pm.exp_month) - now > horizon:
        return "skipped: the card was renewed"
    return None


def note_replaced(session: Session, customer: Customer, *, at: datetime, by_network: bool) -> None:
    """Close the customer's open notices whose card is no longer the one we would charge, or
    whose expiry moved on (``at``: the provider's time of the change)."""
    notices = session.scalars(
        select(CardExpiryNotice).where(
            CardExpiryNotice.customer_id == customer.id, CardExpiryNotice.replaced_at.is_(None)
        )
    ).all()
    for notice in notices:
        pm = session.scalar(
            select(PaymentMethod).where(by_provider_id(PaymentMethod, notice.payment_method))
        )
        expires = (
            f"{pm.exp_year:04d}-{pm.exp_month:02d}" if pm and pm.exp_year and pm.exp_month else None
        )
        if customer.default_payment_method_id != notice.payment_method:
            notice.replaced_at, notice.replaced_by = at, "customer"
        elif expires is not None and expires != notice.expires:
            notice.replaced_at = at
            notice.replaced_by = "network" if by_network else "customer"


def _expiry_of(exp_year: int | None, exp_month: int | None) -> str | None:
    return f"{exp_year:04d}-{exp_month:02d}" if exp_year and exp_month else None


@dataclass
class ScanSummary:
    customers: int = 0
    cards: int = 0  # default cards read
    notices: int = 0  # planned by this run
    unreadable: int = 0  # objects that could not be read or stored (logged)
    pages: int = 0

    def lines(self) -> list[str]:
        return [
            f"customers read:   {self.customers} ({self.pages} pages)",
            f"default cards:    {self.cards}",
            f"notices planned:  {self.notices}",
            f"unreadable:       {self.unreadable}",
        ]


def scan(
    runtime: Runtime,
    *,
    now: datetime,
    requests_per_second: float = REQUESTS_PER_SECOND,
    page_size: int = PAGE_SIZE,
) -> ScanSummary:
    """Read every customer's default card from the provider and plan the notices due."""
    gateway = runtime.gateway
    if gateway is None:
        msg = "STRIPE_API_KEY: required to read customers' cards, not set"
        raise ValueError(msg)
    limiter = RateLimiter(requests_per_second)
    summary = ScanSummary()
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page_size, "expand": list(EXPAND)}
        if after is not None:
            params["starting_after"] = after
        page = gateway.list_page("customers", params, before_each_attempt=limiter.wait)
        summary.pages += 1
        for obj in page.objects:
            summary.customers += 1
            try:
                with runtime.session() as session:
                    found = _one_customer(session, obj, policy=runtime.policy, now=now)
            except (EventParseError, DataError) as exc:
                summary.unreadable += 1
                log.warning("card scan: customer %s unreadable: %s", obj.get("id"), exc)
                continue
            except IntegrityError:  # a concurrent scan planned the same notice: it stands
                continue
            summary.cards += found is not None
            summary.notices += bool(found)
        if not page.has_more or not page.objects:
            return summary
        after = str(page.objects[-1]["id"])


def _one_customer(
    session: Session, obj: dict[str, Any], *, policy: Policy, now: datetime
) -> bool | None:
    """None when the customer has no default card; else whether a notice was planned."""
    facts: CustomerFacts = normalise.customer_facts(obj)
    default = (obj.get("invoice_settings") or {}).get("default_payment_method")
    if not isinstance(default, dict) or default.get("type") != "card":
        return None
    card = normalise.parse_stripe_object(default)
    if not isinstance(card, Card):
        return None
    customer = billing.upsert_customer(session, facts, at=now)
    billing.upsert_payment_method(session, card, customer=customer, at=now)
    note_replaced(session, customer, at=now, by_network=False)
    return plan_notice(session, customer, card, policy=policy, now=now)
