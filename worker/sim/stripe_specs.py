"""Scripted cards and coupons for the simulated Stripe peer.

`CardSpec` describes a card and the script of outcomes its charge attempts follow (`SUCCEED` or a
`Decline`, e.g. the common ones below); `CardScript` plays such a script back. `CouponSpec` is a
coupon applied when a subscription is created. `worker.sim.stripe_peer` re-exports all of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from worker.sim import stripe_objects as so

SUCCEED = "succeed"
# A bank debit (ACH, SEPA, BACS): the charge is accepted and stays pending ("processing")
# until the bank settles it, days later (`StripePeer.settle_processing`).
PROCESSING = "processing"


@dataclass
class Decline:
    """One scripted decline. `outcome_reason`/`message` override charge.outcome.reason and the
    error message Stripe would pick (e.g. reason "previously_declined_do_not_retry")."""

    code: str = "card_declined"
    decline_code: str | None = None
    advice_code: str | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None
    outcome_type: str = "issuer_declined"  # or "blocked"
    requires_action: bool = False  # PI requires_action, invoice.payment_action_required
    outcome_reason: str | None = None
    message: str | None = None

    def details(self) -> dict[str, Any]:
        blocked = self.outcome_type == "blocked"
        return {
            "code": self.code,
            "decline_code": self.decline_code,
            "advice_code": self.advice_code,
            "network_decline_code": None if blocked else self.network_decline_code,
            "network_advice_code": None if blocked else self.network_advice_code,
            "outcome_type": self.outcome_type,
            "outcome_reason": self.outcome_reason,
            "message": self.message or so.decline_message(self.code, self.decline_code),
        }


# Common scripted declines (values as Stripe reports them; see domain/retry-rules.md §1).
INSUFFICIENT_FUNDS = Decline(
    decline_code="insufficient_funds", advice_code="try_again_later", network_decline_code="51"
)
DO_NOT_HONOR = Decline(decline_code="do_not_honor", network_decline_code="05")
EXPIRED_CARD = Decline(
    code="expired_card",
    decline_code="expired_card",
    advice_code="confirm_card_data",
    network_decline_code="54",
    network_advice_code="03",
)
STOLEN_CARD = Decline(
    decline_code="stolen_card", advice_code="do_not_try_again", network_decline_code="43"
)
PROCESSING_ERROR = Decline(
    code="processing_error", decline_code="processing_error", network_decline_code="96"
)
AUTHENTICATION_REQUIRED = Decline(
    code="authentication_required", decline_code="authentication_required", requires_action=True
)
BLOCKED_EXCESSIVE_RETRIES = Decline(
    decline_code="generic_decline",
    outcome_type="blocked",
    outcome_reason="previously_declined_do_not_retry",
    advice_code="do_not_try_again",
)


@dataclass
class CardSpec:
    brand: str = "visa"
    last4: str = "4242"
    exp_month: int = 12
    exp_year: int = 2030
    fingerprint: str | None = None  # generated if None
    # consumed one per charge attempt; the last one repeats forever
    outcomes: list[Decline | str] = field(default_factory=lambda: [SUCCEED])
    funding: str = "credit"
    country: str = "US"


@dataclass
class CouponSpec:
    """A coupon applied when the subscription is created (Stripe's duration semantics)."""

    percent_off: float | None = None
    amount_off: int | None = None  # minor units per billing period, in the price's currency
    duration: Literal["forever", "repeating", "once"] = "forever"
    duration_in_months: int | None = None  # repeating only


@dataclass
class CardScript:
    outcomes: list[Decline | str]
    cursor: int = 0

    def next(self) -> Decline | str:
        if not self.outcomes:
            return SUCCEED
        outcome = self.outcomes[min(self.cursor, len(self.outcomes) - 1)]
        self.cursor += 1
        return outcome


def card_script(spec: CardSpec) -> CardScript:
    for outcome in spec.outcomes:
        if not isinstance(outcome, Decline) and outcome not in (SUCCEED, PROCESSING):
            msg = f"card outcome must be a Decline, SUCCEED or PROCESSING, not {outcome!r}"
            raise ValueError(msg)
    return CardScript(list(spec.outcomes))
