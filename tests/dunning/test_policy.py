"""Decline classification, retry timing and quiet hours under the shipped config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.billing.domain import Decline
from worker.config import DeclineClass, Policy, RetryMode
from worker.dunning import rules

C = DeclineClass


@pytest.mark.parametrize(
    ("decline", "expected"),
    [
        (Decline(decline_code="insufficient_funds"), C.FUNDS),
        (Decline(decline_code="do_not_honor"), C.SOFT),
        (Decline(code="processing_error"), C.SOON),
        (Decline(decline_code="expired_card", code="expired_card"), C.HARD),
        (Decline(decline_code="authentication_required"), C.NEEDS_CUSTOMER),
        (Decline(decline_code="stolen_card"), C.FRAUD),
        (Decline(decline_code="revocation_of_authorization"), C.STOP),
        (Decline(decline_code="some_new_code_stripe_added"), C.SOFT),
        (Decline(), C.SOFT),
        # signals in order: blocked outcome, advice code, Mastercard MAC, decline code
        (Decline(decline_code="generic_decline", outcome_type="blocked"), C.STOP),
        (Decline(decline_code="insufficient_funds", advice_code="do_not_try_again"), C.HARD),
        (Decline(decline_code="insufficient_funds", advice_code="confirm_card_data"), C.HARD),
        (Decline(decline_code="do_not_honor", network_advice_code="21"), C.STOP),
        (Decline(decline_code="fraudulent", advice_code="try_again_later"), C.FRAUD),
        (Decline(outcome_type="blocked", outcome_reason="highest_risk_level"), C.FRAUD),
    ],
)
def test_classify(decline: Decline, expected: DeclineClass, policy: Policy) -> None:
    assert rules.classify(decline, policy) is expected


def test_next_retry_walks_the_class_offsets_and_stops_at_the_window(policy: Policy) -> None:
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    end = opened + timedelta(days=14)
    seen = []
    now = opened
    for done in range(10):
        planned = rules.next_retry(
            policy, C.FUNDS, opened_at=opened, window_ends_at=end, now=now, retries_done=done
        )
        if planned is None:
            break
        seen.append((planned.at - opened) / timedelta(hours=1))
        now = planned.at
    # +1, +3, +5 days at 10:00 (UTC, the default zone), and the paydays in between and
    # after: Fridays 6 and 13 March, 10:00.
    assert seen == [22, 70, 94, 118, 262]


def test_no_blind_retry_for_hard_classes(policy: Policy) -> None:
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    for cls in (C.HARD, C.STOP, C.FRAUD, C.NEEDS_CUSTOMER):
        assert (
            rules.next_retry(
                policy,
                cls,
                opened_at=opened,
                now=opened,
                retries_done=0,
                window_ends_at=opened + timedelta(days=14),
            )
            is None
        )


def test_max_retries_is_a_ceiling(policy: Policy) -> None:
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert (
        rules.next_retry(
            policy,
            C.SOON,
            opened_at=opened,
            now=opened,
            retries_done=policy.retries.max_retries,
            window_ends_at=opened + timedelta(days=14),
        )
        is None
    )


def test_observe_mode_never_plans_our_retries(policy: Policy) -> None:
    observe = policy.model_copy(
        update={"retries": policy.retries.model_copy(update={"mode": RetryMode.OBSERVE})}
    )
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert (
        rules.next_retry(
            observe,
            C.FUNDS,
            opened_at=opened,
            now=opened,
            retries_done=0,
            window_ends_at=opened + timedelta(days=14),
        )
        is None
    )


@pytest.mark.parametrize(
    ("utc_hour", "expected_local_hour"),
    [
        (20, 8),  # 21:00 Berlin (winter, UTC+1) is quiet: moved to 08:00 next day
        (12, 13),  # 13:00 Berlin: allowed as is
        (5, 8),  # 06:00 Berlin: moved to 08:00 the same day
    ],
)
def test_quiet_hours_in_the_customer_zone(
    utc_hour: int, expected_local_hour: int, policy: Policy
) -> None:
    at = datetime(2026, 3, 2, utc_hour, tzinfo=UTC)
    zone = ZoneInfo("Europe/Berlin")
    moved = rules.outside_quiet_hours(at, zone, policy.emails.quiet_hours)
    assert moved.astimezone(zone).hour == expected_local_hour
    assert moved >= at


def test_email_plan_has_first_notice_reminders_and_final(policy: Policy) -> None:
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    plan = rules.email_plan(
        policy,
        first_template="payment_failed",
        opened_at=opened,
        window_ends_at=opened + timedelta(days=14),
    )
    assert [(p.template, p.step) for p in plan] == [
        ("payment_failed", "first"),
        ("reminder", "reminder-3d"),
        ("reminder", "reminder-7d"),
        ("final_notice", "final"),
    ]
    assert plan[-1].at == opened + timedelta(days=12)


def _retry(
    policy: Policy,
    cls: DeclineClass,
    card: rules.CardHistory,
    *,
    now: datetime,
    amount: int | None = 4900,
) -> rules.PlannedRetry | rules.DroppedRetry | None:
    return rules.next_retry(
        policy,
        cls,
        opened_at=now,
        now=now,
        retries_done=0,
        card=card,
        window_ends_at=now + timedelta(days=14),
        amount=amount,
    )


def test_mac_sets_the_earliest_next_attempt(policy: Policy) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    card = rules.CardHistory(
        brand="mastercard",
        declines=((now, 4900),),
        last_attempt_at=now,
        network_advice_code="26",
        last_declined_at=now,
    )
    planned = _retry(policy, C.SOON, card, now=now)  # the schedule says +1 h
    assert isinstance(planned, rules.PlannedRetry)
    assert planned.at == now + timedelta(days=2)
    assert "MAC 26" in planned.reason


def test_mastercard_ten_declines_a_day(policy: Policy) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    declines = tuple((now - timedelta(hours=i), None) for i in range(10))  # 10 in the last day
    card = rules.CardHistory(brand="mastercard", declines=declines, last_attempt_at=now)
    planned = _retry(policy, C.SOON, card, now=now)
    assert isinstance(planned, rules.PlannedRetry)
    assert planned.at == now - timedelta(hours=9) + timedelta(days=1)  # the oldest ages out
    assert "Mastercard 10 declines / 24 h" in planned.reason


def test_mastercard_same_amount_budget_counts_only_that_amount(policy: Policy) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    declines = tuple((now - timedelta(days=0.8 * i + 1), 4900) for i in range(35))
    card = rules.CardHistory(brand="mastercard", declines=declines)
    blocked = _retry(policy, C.SOFT, card, now=now, amount=4900)
    assert isinstance(blocked, rules.DroppedRetry | rules.PlannedRetry)
    assert isinstance(blocked, rules.DroppedRetry) or blocked.at > now + timedelta(hours=24)
    other = _retry(policy, C.SOFT, card, now=now, amount=9900)
    assert isinstance(other, rules.PlannedRetry)
    assert other.at == now + timedelta(hours=24)


def test_a_retry_that_cannot_fit_is_dropped_with_the_reason(policy: Policy) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    card = rules.CardHistory(brand="mastercard", last_declined_at=now, network_advice_code="30")
    dropped = _retry(policy, C.FUNDS, card, now=now - timedelta(days=5))
    assert isinstance(dropped, rules.DroppedRetry)
    assert "MAC 30" in dropped.reason
    assert "past the window" in dropped.reason


def test_minimum_gap_between_attempts_on_one_card(policy: Policy) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    gap = policy.model_copy(
        update={"retries": policy.retries.model_copy(update={"min_gap_hours": 6})}
    )
    card = rules.CardHistory(brand="visa", last_attempt_at=now + timedelta(minutes=30))
    planned = _retry(gap, C.SOON, card, now=now)  # the schedule says +1 h
    assert isinstance(planned, rules.PlannedRetry)
    assert planned.at == now + timedelta(minutes=30, hours=6)


def test_funds_retries_land_on_paydays_in_the_customer_zone(policy: Policy) -> None:
    opened = datetime(2026, 6, 22, 12, tzinfo=UTC)  # a Monday
    zone = ZoneInfo("America/Chicago")  # UTC-5 in summer
    seen, now = [], opened
    for done in range(10):
        planned = rules.next_retry(
            policy,
            C.FUNDS,
            opened_at=opened,
            now=now,
            zone=zone,
            window_ends_at=opened + timedelta(days=14),
            retries_done=done,
        )
        if not isinstance(planned, rules.PlannedRetry):
            break
        seen.append((planned.at.astimezone(zone).strftime("%a %d %H:%M"), planned.reason))
        now = planned.at
    paydays = [(when, why) for when, why in seen if why.startswith("payday")]
    assert paydays == [  # at most three, at 10:00 Chicago time, between and after the offsets
        ("Fri 26 10:00", "payday (friday), 10:00 local"),
        ("Tue 30 10:00", "payday (last_business_day), 10:00 local"),
        ("Wed 01 10:00", "payday (1), 10:00 local"),
    ]
    assert [when for when, why in seen if not why.startswith("payday")] == [
        "Tue 23 10:00",  # +1, +3, +5 days, on the funds retry hour too
        "Thu 25 10:00",
        "Sat 27 10:00",
    ]


def test_a_weekend_payday_is_the_friday_before(policy: Policy) -> None:
    zone = ZoneInfo("UTC")
    # 15 March 2026 is a Sunday: paid on Friday the 13th, once.
    days = rules.payday_times(
        policy,
        after=datetime(2026, 3, 10, tzinfo=UTC),
        until=datetime(2026, 3, 17, tzinfo=UTC),
        zone=zone,
    )
    assert [(at.day, why) for at, why in days] == [(13, "payday (friday), 10:00 local")]


def test_our_retry_keeps_clear_of_the_providers_own_retry(policy: Policy) -> None:
    """Smart Retries left on: Stripe's next attempt counts on the card like ours. A retry the
    schedule puts within the gap of it moves to the gap after it."""
    opened = datetime(2026, 3, 2, 12, tzinfo=UTC)
    theirs = opened + timedelta(hours=2)  # the soft schedule's first retry is +24 h
    card = rules.CardHistory(provider_next_attempt=opened + timedelta(hours=23))
    planned = rules.next_retry(
        policy,
        C.SOFT,
        opened_at=opened,
        window_ends_at=opened + timedelta(days=14),
        now=opened,
        retries_done=0,
        card=card,
    )
    assert isinstance(planned, rules.PlannedRetry)
    gap = timedelta(hours=policy.retries.provider_retry_gap_hours)
    assert planned.at == opened + timedelta(hours=23) + gap
    assert "clear of Stripe's own retry" in planned.reason
    far = rules.CardHistory(provider_next_attempt=theirs)  # far enough from +24 h: no move
    unmoved = rules.next_retry(
        policy,
        C.SOFT,
        opened_at=opened,
        window_ends_at=opened + timedelta(days=14),
        now=opened,
        retries_done=0,
        card=far,
    )
    assert isinstance(unmoved, rules.PlannedRetry)
    assert unmoved.at == opened + timedelta(hours=24)
