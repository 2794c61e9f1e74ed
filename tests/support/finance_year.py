"""A year of revenue in three currencies, as provider events through the real inbox and
handlers: the presentation tests (terminal tables, the summary page) need many periods,
several currencies and amounts in the millions, with every kind of movement and recovery.

Twelve months, July 2025 to June 2026, in EUR, USD and JPY (zero-decimal; amounts scaled
per currency): a customer paying €1,234,567.89 a month from before the range, who upgrades,
has an invoice fail that our retry recovers, then downgrades; a steady customer whose invoice
fails every month and who pays it three days later; a customer with two subscriptions, one of
which ends for non-payment; a new customer every month, one of whom cancels and comes back,
another has an invoice fail and ends for non-payment, a third has one still open at the end.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.pipeline import deliver, dunning_record
from tests.support.worked_examples import case_of
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action

FIRST, LAST = "2025-07", "2026-06"
AS_OF = datetime(2026, 7, 1, tzinfo=UTC)
CURRENCIES = ("eur", "usd", "jpy")
BIG = 123_456_789  # €1,234,567.89 a month
SCALE = {"eur": 1, "usd": 3, "jpy": 7}  # every amount, so that no two currencies look alike


def month(index: int, day: int = 1, hour: int = 10) -> datetime:
    """Day ``day`` of the ``index``-th month of the range (0 is July 2025)."""
    year, month0 = divmod(6 + index, 12)
    return datetime(2025 + year, month0 + 1, day, hour, tzinfo=UTC)


def finance_year(session: Session, policy: Policy, clock: ManualClock) -> None:
    for currency in CURRENCIES:
        _one_currency(session, policy, clock, currency)
    session.commit()


def _one_currency(session: Session, policy: Policy, clock: ManualClock, c: str) -> None:
    def send(payload: dict[str, Any], at: datetime) -> None:
        deliver(session, policy, payload, now=at)

    def subscription(kind: str, who: str, sub: str, amount: int, at: datetime, **kw: Any) -> None:
        obj = ev.subscription(
            sub_id=f"{sub}_{c}", customer_id=f"{who}_{c}", unit_amount=amount * SCALE[c],
            currency=c,
            at=at, **kw,
        )  # fmt: skip
        send(ev.envelope(f"customer.subscription.{kind}", obj, at=at), at)

    def invoice(status: str, ref: str, who: str, sub: str, amount: int, at: datetime) -> None:
        kind = "invoice.paid" if status == "paid" else "invoice.payment_failed"
        pi = ev.payment_intent(pi_id=f"pi_{ref}_{c}", charge_id=f"ch_{ref}_{c}")
        obj = ev.invoice(
            invoice_id=f"in_{ref}_{c}", customer_id=f"{who}_{c}", subscription_id=f"{sub}_{c}",
            amount_due=amount * SCALE[c], currency=c,
            status="paid" if status == "paid" else "open",
            shape="acacia", payment_intent=None if status == "paid" else pi, at=at,
        )  # fmt: skip
        obj["subscription"] = f"{sub}_{c}"
        send(ev.envelope(kind, obj, at=at, shape="acacia"), at)

    before = month(-1, 10)
    n = CURRENCIES.index(c) + 1  # and the ratios differ per currency too
    subscription("created", "cus_big", "sub_big", BIG, before, start=before)
    subscription("created", "cus_steady", "sub_steady", 2_500_000, before, start=before)
    for i in range(12):
        amount = 100_000 + 12_345 * i
        subscription("created", f"cus_new{i}", f"sub_new{i}", amount, month(i, 5))
        ref = f"steady{i}"
        invoice("failed", ref, "cus_steady", "sub_steady", 2_500_000, month(i, 3))
        invoice("paid", ref, "cus_steady", "sub_steady", 2_500_000, month(i, 6))
    subscription("updated", "cus_big", "sub_big", BIG + 6_543_211, month(2, 14))
    invoice("failed", "big", "cus_big", "sub_big", BIG + 6_543_211, month(3, 2))
    retry = session.scalars(
        select(Action).where(
            Action.case_id == case_of(session, f"in_big_{c}").id,
            Action.kind == ActionKind.RETRY_PAYMENT,
            Action.status == ActionStatus.PLANNED,
        )
    ).first()
    assert retry is not None
    retry.status, retry.claimed_at = ActionStatus.CLAIMED, retry.due_at  # the scheduler's claim
    clock.set(retry.due_at)  # the retry task records its result at the clock's time
    dunning_record(session, policy, retry.id, PaymentResult(succeeded=True, decline=None))
    invoice("paid", "big", "cus_big", "sub_big", BIG + 6_543_211, retry.due_at)
    # Two subscriptions; the smaller one ends for non-payment in May: involuntary contraction.
    subscription("created", "cus_two", "sub_twoA", (150_000 + 50_000 * n), before, start=before)
    subscription("created", "cus_two", "sub_twoB", 300_000, before, start=before)
    subscription(
        "deleted", "cus_two", "sub_twoA", (150_000 + 50_000 * n), month(10, 15),
        status="canceled", cancellation_reason="payment_failed",
    )  # fmt: skip
    subscription("updated", "cus_big", "sub_big", BIG - 3_000_000 * n, month(8, 20))
    # new1 cancels in November and comes back in April; new2 stops paying in January.
    subscription(
        "deleted", "cus_new1", "sub_new1", 112_345, month(4, 12),
        status="canceled", cancellation_reason="cancellation_requested",
    )  # fmt: skip
    subscription("created", "cus_new1", "sub_new1b", 150_000, month(9, 2))
    invoice("failed", "new2", "cus_new2", "sub_new2", 124_690, month(6, 7))
    subscription(
        "deleted", "cus_new2", "sub_new2", 124_690, month(7, 1),
        status="canceled", cancellation_reason="payment_failed",
    )  # fmt: skip
    # new3 has an invoice fail in June that is still open at the end of the range.
    invoice("failed", "new3", "cus_new3", "sub_new3", 137_035, month(11, 20))
