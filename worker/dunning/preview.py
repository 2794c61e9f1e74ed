"""``dunning policy preview``: the timeline a policy gives one failure if nothing succeeds.

Built from the very functions the pipeline plans with (``worker.dunning.rules``), so the
preview is what runs; ``tests/dunning/test_preview.py`` checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.billing.domain import Decline
from worker.config import DeclineClass, Policy, RetryMode, SegmentFacts
from worker.dunning import access, rules


@dataclass(frozen=True)
class PreviewAction:
    kind: str  # retry | email | access
    at: datetime  # UTC
    template: str | None
    reason: str


@dataclass(frozen=True)
class Preview:
    decline_class: DeclineClass
    mode: RetryMode
    timezone: str
    window_ends_at: datetime
    actions: list[PreviewAction]
    final_action: dict[str, Any]
    notes: list[str]  # retries the schedule wanted but a network rule forbids

    def as_json(self) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            return at.isoformat().replace("+00:00", "Z") if at else None

        return {
            "class": self.decline_class.value,
            "mode": self.mode,
            "timezone": self.timezone,
            "actions": [
                {"kind": a.kind, "at": iso(a.at), "template": a.template, "reason": a.reason}
                for a in self.actions
            ],
            "final_action": {**self.final_action, "at": iso(self.final_action.get("at"))},
            "notes": self.notes,
        }


def preview(
    policy: Policy,
    decline: Decline,
    *,
    failed_at: datetime,
    timezone: str | None,
    amount: int | None = None,
    currency: str | None = None,
    prior_declines: int = 0,
) -> Preview:
    """``prior_declines`` are placed evenly over the 30 days before ``failed_at`` (the
    networks count them whoever made them); every planned retry then fails like the first."""
    policy = policy.for_segment(SegmentFacts(currency=currency, amount=amount))
    cls = rules.classify(decline, policy)
    zone = rules.customer_zone(timezone, policy)
    window_ends_at = failed_at + timedelta(days=policy.retries.window_days)
    actions = [
        PreviewAction("email", email.at, email.template, email.reason)
        for email in rules.scheduled_emails(
            policy,
            first_template=rules.first_template(
                rules.failure_event(decline, policy, requires_action=False)
            ),
            opened_at=failed_at,
            window_ends_at=window_ends_at,
            now=failed_at,
            zone=zone,
        )
    ]
    spacing = timedelta(days=30) / (prior_declines + 1)
    # Whole seconds, as provider timestamps are.
    declines = [
        ((failed_at - spacing * (i + 1)).replace(microsecond=0), amount)
        for i in range(prior_declines)
    ]
    declines.append((failed_at, amount))
    notes: list[str] = []
    now, done = failed_at, 0
    while True:
        card = rules.CardHistory(
            brand=decline.card.brand if decline.card else None,
            declines=tuple(declines),
            last_attempt_at=now,
            network_advice_code=decline.network_advice_code,
            last_declined_at=now,
        )
        decision = rules.next_retry(
            policy,
            cls,
            opened_at=failed_at,
            now=now,
            card=card,
            window_ends_at=window_ends_at,
            retries_done=done,
            amount=amount,
            zone=zone,
        )
        if not isinstance(decision, rules.PlannedRetry):
            if isinstance(decision, rules.DroppedRetry):
                notes.append(decision.reason)
            break
        actions.append(PreviewAction("retry", decision.at, None, decision.reason))
        declines.append((decision.at, amount))
        now, done = decision.at, done + 1
    actions += [
        PreviewAction("access", at, level.value, reason)
        for level, at, reason in access.schedule(policy, opened_at=failed_at, now=failed_at)
    ]
    own = policy.retries.mode == RetryMode.OWN
    final = (
        {"action": policy.final_action.action, "at": window_ends_at}
        if own
        else {"action": "none: the provider ends its own dunning (observe mode)", "at": None}
    )
    return Preview(
        cls,
        policy.retries.mode,
        zone.key,
        window_ends_at,
        sorted(actions, key=lambda a: (a.at, a.kind)),
        final,
        notes,
    )
