"""What the policy file means for one case: decline class, next retry, email plan.

Pure functions over :class:`worker.config.Policy` and plain values; no I/O. The pipeline and
any preview call the same functions, so what ops preview is what runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.billing.domain import Decline
from worker.config import RETRYABLE_CLASSES, DeclineClass, Policy, QuietHours

log = logging.getLogger(__name__)

# Mastercard Merchant Advice Codes that forbid any retry for 30 days (retry-rules §2).
STOP_MACS = frozenset({"03", "21"})


def classify(decline: Decline | None, policy: Policy) -> DeclineClass:
    """Stripe's signals in the documented order; fraud is never softened by later signals."""
    if decline is None:
        return DeclineClass.SOFT
    table = policy.classes.table()
    reason = decline.reason
    by_reason = table.get(reason) if reason else None
    if by_reason is DeclineClass.FRAUD or table.get(decline.outcome_reason or "") is (
        DeclineClass.FRAUD
    ):
        return DeclineClass.FRAUD
    if decline.outcome_type == "blocked" or decline.network_status == "not_sent_to_network":
        return DeclineClass.STOP
    if decline.advice_code == "do_not_try_again":
        return DeclineClass.STOP if by_reason is DeclineClass.STOP else DeclineClass.HARD
    if decline.advice_code == "confirm_card_data":
        return DeclineClass.HARD
    if decline.network_advice_code in STOP_MACS:
        return DeclineClass.STOP
    if by_reason is None and reason is not None:
        log.warning("unclassified decline code %r: treated as soft", reason)
    return by_reason or DeclineClass.SOFT


def is_retryable(cls: DeclineClass) -> bool:
    return cls in RETRYABLE_CLASSES


@dataclass(frozen=True)
class PlannedRetry:
    at: datetime
    reason: str


def next_retry(
    policy: Policy,
    cls: DeclineClass,
    *,
    opened_at: datetime,
    window_ends_at: datetime,
    now: datetime,
    retries_done: int,
    mode: str | None = None,
) -> PlannedRetry | None:
    """The next automatic retry after a failure at ``now``, or None when none is allowed.
    ``mode`` is the case's retries mode (fixed when it opened), else the policy's."""
    if not is_retryable(cls) or (mode or policy.retries.mode) != "own":
        return None
    if retries_done >= policy.retries.max_retries:
        return None
    offsets = getattr(policy.retries.offsets_hours, cls.value)
    for hours in offsets:
        at = opened_at + timedelta(hours=hours)
        if at > now and at < window_ends_at:
            return PlannedRetry(at, f"{cls.value} schedule: +{hours:g} h after first failure")
    return None


@dataclass(frozen=True)
class PlannedEmail:
    template: str
    step: str  # unique per case: the dedupe key's last part
    at: datetime
    reason: str


def email_plan(
    policy: Policy, *, first_template: str, opened_at: datetime, window_ends_at: datetime
) -> list[PlannedEmail]:
    """The cadence for a new case: first notice now, reminders, final notice before the end."""
    emails = policy.emails
    final_at = window_ends_at - timedelta(days=emails.final_notice_days_before_end)
    plan = [PlannedEmail(first_template, "first", opened_at, "first failure")]
    plan += [
        PlannedEmail(
            "reminder", f"reminder-{days}d", opened_at + timedelta(days=days), f"reminder +{days} d"
        )
        for days in emails.reminder_days
        if opened_at + timedelta(days=days) < final_at
    ]
    plan.append(
        PlannedEmail(
            "final_notice",
            "final",
            final_at,
            f"{emails.final_notice_days_before_end} d before the window ends",
        )
    )
    return plan


def scheduled_emails(
    policy: Policy,
    *,
    first_template: str,
    opened_at: datetime,
    window_ends_at: datetime,
    now: datetime,
    zone: ZoneInfo,
) -> list[PlannedEmail]:
    """The email plan with each send moved out of the customer's quiet hours."""
    return [
        PlannedEmail(
            email.template,
            email.step,
            outside_quiet_hours(max(email.at, now), zone, policy.emails.quiet_hours),
            email.reason,
        )
        for email in email_plan(
            policy,
            first_template=first_template,
            opened_at=opened_at,
            window_ends_at=window_ends_at,
        )
    ]


def first_template(cls: DeclineClass) -> str:
    """The first email: authentication needs its own words and link."""
    return "action_required" if cls is DeclineClass.NEEDS_CUSTOMER else "payment_failed"


def customer_zone(timezone: str | None, policy: Policy) -> ZoneInfo:
    try:
        return ZoneInfo(timezone or policy.emails.default_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(policy.emails.default_timezone)


def outside_quiet_hours(at: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime:
    """``at``, or the end of the customer's quiet hours if ``at`` falls inside them."""
    local = at.astimezone(zone)
    hour = local.hour
    start, end = quiet.start, quiet.end
    inside = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not inside:
        return at
    day = local.date() if hour < end else local.date() + timedelta(days=1)
    moved = datetime.combine(day, time(end), tzinfo=zone)
    return moved.astimezone(at.tzinfo)
