"""The dunning rules: what the policy file (:class:`worker.config.Policy`) means for one case.

Decline class and the state-machine event a failure is, the next retry (schedule, paydays,
network budgets), the email plan and its first email, quiet hours. Pure functions over the
policy and plain values; no I/O. The pipeline and ``dunning policy preview`` call the same
functions, so what ops preview is what runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.billing.domain import Decline
from worker.config import RETRYABLE_CLASSES, DeclineClass, Policy, QuietHours, RetryMode
from worker.dunning.state import DunningEvent
from worker.email.messages import EmailKind

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


# Declines no blind retry can fix: the case waits for the customer (a new card, a
# confirmation), and fraud and stop-payment never retry at all.
_NEEDS_CUSTOMER = frozenset(
    {DeclineClass.NEEDS_CUSTOMER, DeclineClass.HARD, DeclineClass.STOP, DeclineClass.FRAUD}
)


def failure_event(decline: Decline, policy: Policy, *, requires_action: bool) -> DunningEvent:
    """The state-machine event a failed payment is: the customer must act (authenticate),
    a hard decline (wait for a new card), or one a later retry may fix."""
    if requires_action:
        return DunningEvent.ACTION_REQUIRED
    cls = classify(decline, policy)
    if cls is DeclineClass.NEEDS_CUSTOMER:
        return DunningEvent.ACTION_REQUIRED
    return (
        DunningEvent.PAYMENT_FAILED_HARD if cls in _NEEDS_CUSTOMER else DunningEvent.PAYMENT_FAILED
    )


@dataclass(frozen=True)
class PlannedRetry:
    at: datetime
    reason: str


@dataclass(frozen=True)
class DroppedRetry:
    """The schedule wanted a retry but a network rule forbids one inside the window."""

    reason: str


@dataclass(frozen=True)
class CardHistory:
    """What the networks count for one card (its fingerprints, old and new when the network
    updated the number), whoever made the attempts."""

    brand: str | None = None
    declines: tuple[tuple[datetime, int | None], ...] = ()  # (when, amount), any invoice
    last_attempt_at: datetime | None = None  # any outcome
    network_advice_code: str | None = None  # the latest decline's Mastercard MAC
    last_declined_at: datetime | None = None
    # The provider's own next automatic attempt on this invoice (Stripe's Smart Retries left
    # on while we retry too): ours keeps clear of it.
    provider_next_attempt: datetime | None = None
    # "Never retry" advice this card carries, whichever invoice it came with: (until, why).
    # Mastercard MAC 03/21 lasts 30 days; a fraud or stop-payment decline, as long as the
    # card is the same (NEVER).
    blocked: tuple[datetime, str] | None = None
    # Retries of older invoices on this card, planned or running (oldest invoice first): this
    # one keeps the minimum gap from each, and the budget counts them as attempts.
    reserved: tuple[datetime, ...] = ()


NEVER = datetime.max.replace(tzinfo=UTC)


def card_block(decline: Decline, at: datetime, policy: Policy) -> tuple[datetime, str] | None:
    """The "never retry" a decline at ``at`` puts on its card, if any (see CardHistory)."""
    mac = decline.network_advice_code
    if mac in STOP_MACS:
        until = at + timedelta(days=30)
        return until, f"Mastercard MAC {mac} on this card: no retry before {until:%Y-%m-%d}"
    cls = classify(decline, policy)
    if cls in (DeclineClass.FRAUD, DeclineClass.STOP):
        return NEVER, f"{cls.value} decline on this card ({decline.reason}): never retried"
    return None


# Mastercard Merchant Advice Codes that set the earliest next attempt (retry-rules §2.2; MAC 02
# "try again later" per processors: 72 h).
MAC_WAITS = {
    "02": timedelta(hours=72),
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
_DAY, _MONTH = timedelta(days=1), timedelta(days=30)


def next_retry(
    policy: Policy,
    cls: DeclineClass,
    *,
    opened_at: datetime,
    window_ends_at: datetime,
    now: datetime,
    retries_done: int,
    mode: RetryMode | None = None,
    card: CardHistory | None = None,
    amount: int | None = None,
    zone: ZoneInfo | None = None,
) -> PlannedRetry | DroppedRetry | None:
    """The next automatic retry after a failure at ``now``: the class schedule's next offset,
    then moved later as the card networks require. None when the schedule has nothing left;
    :class:`DroppedRetry` when it had, but no network-compliant time fits in the window.
    ``mode`` is the case's retries mode (fixed when it opened), else the policy's."""
    if not is_retryable(cls) or (mode or policy.retries.mode) != RetryMode.OWN:
        return None
    if retries_done >= policy.retries.max_retries:
        return None
    for at, reason in _schedule(policy, cls, opened_at, window_ends_at, zone):
        if at > now and at < window_ends_at:
            return network_compliant(
                policy,
                at,
                reason,
                card or CardHistory(),
                amount=amount,
                window_ends_at=window_ends_at,
            )
    return None


def prompt_retry(
    policy: Policy,
    *,
    now: datetime,
    window_ends_at: datetime,
    card: CardHistory,
    amount: int | None = None,
) -> PlannedRetry | DroppedRetry:
    """The one prompt retry a card update earns: now, unless the card's network budget, a
    MAC wait or the minimum gap says later (or, past the window, not at all)."""
    return network_compliant(
        policy,
        now,
        "card updated: one prompt retry",
        card,
        amount=amount,
        window_ends_at=window_ends_at,
    )


def _schedule(
    policy: Policy,
    cls: DeclineClass,
    opened_at: datetime,
    window_ends_at: datetime,
    zone: ZoneInfo | None,
) -> list[tuple[datetime, str]]:
    """Every retry time the class's schedule names, in order, with the rule behind it."""
    offsets = getattr(policy.retries.offsets_hours, cls.value)
    if cls is not DeclineClass.FUNDS:
        return [
            (opened_at + timedelta(hours=h), f"{cls.value} schedule: +{h:g} h after first failure")
            for h in offsets
        ]
    # Funds come back in the morning of a payday: every funds retry runs at the local hour,
    # on the local day each offset falls on, and likely paydays anywhere in the
    # window (the best moment of all) on days no offset already takes.
    zone = zone or ZoneInfo(policy.emails.default_timezone)
    hour = policy.paydays.local_hour
    times: dict[datetime, str] = {}
    for h in offsets:
        at = _on_local_day_at(opened_at + timedelta(hours=h), hour, zone, after=opened_at)
        times.setdefault(at, f"funds schedule: +{h:g} h after first failure, at {hour}:00 local")
    paydays = [
        (at, why)
        for at, why in payday_times(policy, after=opened_at, until=window_ends_at, zone=zone)
        if at not in times
    ]
    times.update(paydays[: policy.paydays.max_retries])
    return sorted(times.items())


def _on_local_day_at(at: datetime, hour: int, zone: ZoneInfo, *, after: datetime) -> datetime:
    """``hour``:00 in ``zone`` on the local day of ``at``, or of the next day if that is not
    later than ``after``."""
    day = at.astimezone(zone).date()
    moved = datetime.combine(day, time(hour), tzinfo=zone)
    if moved <= after:
        moved = datetime.combine(day + timedelta(days=1), time(hour), tzinfo=zone)
    return moved.astimezone(at.tzinfo)


def payday_times(
    policy: Policy, *, after: datetime, until: datetime, zone: ZoneInfo
) -> list[tuple[datetime, str]]:
    """Likely paydays strictly after ``after`` and before ``until``, at the configured local
    hour. A payday falling on a weekend is taken as the Friday before."""
    found: dict[datetime, str] = {}
    day = after.astimezone(zone).date() - timedelta(days=3)  # a weekend payday moves back
    last = until.astimezone(zone).date() + timedelta(days=3)
    while day <= last:
        for rule in policy.paydays.calendar:
            if _is_payday(day, rule):
                paid = day - timedelta(days=max(day.weekday() - 4, 0))  # Sat/Sun -> Friday
                at = datetime.combine(paid, time(policy.paydays.local_hour), tzinfo=zone)
                at = at.astimezone(after.tzinfo)
                if after < at < until:
                    found.setdefault(at, f"payday ({rule}), {policy.paydays.local_hour}:00 local")
        day += timedelta(days=1)
    return sorted(found.items())


def _is_payday(day: date, rule: str) -> bool:
    if rule.isdigit():
        return day.day == int(rule)
    if rule == "last_business_day":
        month_end = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        while month_end.weekday() >= 5:
            month_end -= timedelta(days=1)
        return day == month_end
    return day.strftime("%A").lower() == rule


def network_compliant(
    policy: Policy,
    at: datetime,
    reason: str,
    card: CardHistory,
    *,
    amount: int | None,
    window_ends_at: datetime,
    own_spacing: bool = True,
) -> PlannedRetry | DroppedRetry:
    """``at``, or the first later time at which a charge on the card keeps every network rule
    ("never retry", MAC waits, budgets) and our own spacing (the minimum gap to any attempt on
    the card, the gap to the provider's next retry); dropped when that is past the window.
    ``own_spacing=False`` (ops asked for this retry) waives our spacing, never a network rule.
    Planning and the check right before the charge both call this."""
    notes = []
    if card.blocked is not None and at < card.blocked[0]:
        until, why = card.blocked
        if until >= window_ends_at:
            return DroppedRetry(f"{reason}: dropped, {why}")
        at = until
        notes.append(why)
    wait = MAC_WAITS.get(card.network_advice_code or "")
    if wait and card.last_declined_at and at < card.last_declined_at + wait:
        at = card.last_declined_at + wait
        notes.append(f"MAC {card.network_advice_code}: not before +{_human(wait)}")
    gap = timedelta(hours=policy.retries.min_gap_hours)
    if own_spacing and card.last_attempt_at and at < card.last_attempt_at + gap:
        at = card.last_attempt_at + gap
        notes.append(f"minimum gap {policy.retries.min_gap_hours:g} h on this card")
    for _ in range(64):  # each move only goes later; a handful settles it
        moved = (
            own_spacing
            and (_clear_of_provider(policy, at, card) or _clear_of_reserved(policy, at, card))
        ) or _budget_move(policy, at, card, amount)
        if moved is None:
            break
        at, note = moved
        if note not in notes:
            notes.append(note)
    if at >= window_ends_at:
        return DroppedRetry(f"{reason}: dropped, {'; '.join([*notes, 'past the window'])}")
    return PlannedRetry(at, reason + (f"; moved: {'; '.join(notes)}" if notes else ""))


def _clear_of_provider(
    policy: Policy, at: datetime, card: CardHistory
) -> tuple[datetime, str] | None:
    """Later than the provider's own next attempt by the configured gap, when ``at`` is
    closer to it than that (the provider counts against the card as much as we do)."""
    theirs = card.provider_next_attempt
    gap = timedelta(hours=policy.retries.provider_retry_gap_hours)
    if theirs is None or abs(at - theirs) >= gap:
        return None
    return theirs + gap, f"clear of Stripe's own retry at {theirs:%Y-%m-%d %H:%M} UTC"


def _clear_of_reserved(
    policy: Policy, at: datetime, card: CardHistory
) -> tuple[datetime, str] | None:
    """After an older invoice's retry on this card by the minimum gap, when closer to it."""
    gap = timedelta(hours=policy.retries.min_gap_hours)
    near = [r for r in card.reserved if abs(at - r) < gap]
    if not near:
        return None
    hours = policy.retries.min_gap_hours
    return max(near) + gap, f"minimum gap {hours:g} h after another invoice's retry on this card"


def _budget_move(
    policy: Policy, at: datetime, card: CardHistory, amount: int | None
) -> tuple[datetime, str] | None:
    """The earliest later time at which a retry at ``at`` keeps the card within its network's
    ceilings, or None if ``at`` already does."""
    if card.brand == "mastercard":
        mc = policy.networks.mastercard
        rules_ = [
            (_DAY, mc.max_declines_24h, None, f"Mastercard {mc.max_declines_24h} declines / 24 h"),
            (
                _MONTH,
                mc.max_same_amount_declines_30d,
                amount,
                f"Mastercard {mc.max_same_amount_declines_30d} same-amount declines / 30 days",
            ),
        ]
    else:
        visa = policy.networks.visa.max_declines_30d
        applies_to = "" if card.brand == "visa" else f" (for {card.brand or 'an unknown brand'})"
        rules_ = [(_MONTH, visa, None, f"Visa{applies_to} {visa} declines / 30 days")]
    # Retries other invoices have planned on the card may each be declined: they count too.
    attempts = (*card.declines, *((r, None) for r in card.reserved))
    for span, limit, same_amount, label in rules_:
        counted = sorted(
            t
            for t, a in attempts
            if at - span < t <= at and (same_amount is None or a == same_amount)
        )
        if len(counted) >= limit:
            return counted[len(counted) - limit] + span, f"{label} budget"
    return None


def _human(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} d"


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
    """The email plan with each send moved out of the customer's quiet hours. A case learned
    of late (``now`` after ``opened_at``: a backlog, a replay) gets one email now for all
    whose time has passed: the first notice (it explains), or the final notice once that one
    is due; and none once its window is over."""
    if window_ends_at <= now:
        return []
    plan = email_plan(
        policy, first_template=first_template, opened_at=opened_at, window_ends_at=window_ends_at
    )
    passed = [email for email in plan if email.at <= now]
    catch_up = passed[-1:] if passed and passed[-1].step == "final" else passed[:1]
    kept = catch_up + [email for email in plan if email.at > now]
    return [
        PlannedEmail(
            email.template,
            email.step,
            outside_quiet_hours(max(email.at, now), zone, policy.emails.quiet_hours),
            email.reason,
        )
        for email in kept
    ]


def first_template(event: DunningEvent) -> EmailKind:
    """The first email of a case, from the failure that opened it (:func:`failure_event`):
    authentication needs its own words and link."""
    if event is DunningEvent.ACTION_REQUIRED:
        return EmailKind.ACTION_REQUIRED
    return EmailKind.PAYMENT_FAILED


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
