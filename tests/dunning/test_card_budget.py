"""The network budget belongs to the card: it follows a number the network updated, and the
one prompt retry a card update earns stays inside it (issue #3, items 4 and 5)."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import deliver, failed
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action


def _card(pm_id: str, fingerprint: str, *, brand: str = "visa") -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "customer": "cus_test",
        "type": "card",
        "card": {
            "brand": brand,
            "last4": "4444",
            "exp_month": 1,
            "exp_year": 2030,
            "fingerprint": fingerprint,
        },
    }


def _retries(session: Session, invoice_ref: str) -> list[Action]:
    return list(
        session.scalars(
            select(Action)
            .where(
                Action.kind == ActionKind.RETRY_PAYMENT,
                Action.idempotency_key.startswith(f"dunning:{invoice_ref}:"),
            )
            .order_by(Action.id)
        )
    )


def _declines_before(session: Session, policy: Policy, count: int, card: dict[str, Any]) -> None:
    """``count`` declines on ``card`` (other invoices), from 25 days before START, 12 h apart."""
    for i in range(count):
        at = START - timedelta(days=25) + timedelta(hours=12 * i)
        deliver(session, policy, failed(f"in_prior_{i}", "do_not_honor", at=at, card=card), now=at)


def test_the_budget_follows_a_card_the_network_renumbered(session: Session, policy: Policy) -> None:
    _declines_before(session, policy, 15, _card("pm_1", "fp_old"))  # Visa: 15 in 30 days
    renumbered = ev.envelope(
        "payment_method.automatically_updated", _card("pm_1", "fp_new"), at=START
    )
    deliver(session, policy, renumbered)
    # The same payment method, its new number: the old number's declines still count.
    deliver(session, policy, failed("in_now", "do_not_honor", card=_card("pm_1", "fp_new")))
    (retry,) = _retries(session, "in_now")
    assert retry.status is ActionStatus.PLANNED
    assert "moved: Visa" in retry.reason
    assert "15 declines / 30 days" in retry.reason
    # Sixteen declines: the retry waits until the two oldest are 30 days old.
    assert retry.due_at == START + timedelta(days=5, hours=12)
    # A different card with no history retries on the plain schedule.
    deliver(session, policy, failed("in_other", "do_not_honor", card=_card("pm_2", "fp_2")))
    (plain,) = _retries(session, "in_other")
    assert plain.due_at == START + timedelta(hours=24)
    assert "moved" not in plain.reason


def test_a_card_update_retry_waits_for_room_in_the_new_cards_budget(
    session: Session, policy: Policy
) -> None:
    mastercard = _card("pm_mc", "fp_mc", brand="mastercard")
    for i in range(10):  # Mastercard: 10 declines in 24 h on this card already
        at = START - timedelta(hours=10) + timedelta(minutes=30 * i)
        # Hard declines: those invoices plan no retries of their own on the card (planned
        # retries of other invoices count too: test_invoices_on_one_card_share_its_gap...).
        busy = failed(f"in_busy_{i}", "expired_card", at=at, card=mastercard, code="expired_card")
        deliver(session, policy, busy)
    deliver(session, policy, failed("in_1", "expired_card", code="expired_card"))
    new_default = ev.customer_updated("pm_mc", was="pm_expired", at=START)
    deliver(session, policy, new_default)
    (retry,) = [a for a in _retries(session, "in_1") if a.status is ActionStatus.PLANNED]
    assert ":card-update:" in retry.idempotency_key
    assert retry.reason.startswith("card updated: one prompt retry; moved:")
    assert "Mastercard 10 declines / 24 h" in retry.reason
    # The oldest of the ten ages out of the 24 hours 14 h after START, not at once; the ten
    # older invoices got a prompt retry on the card too, and go first, an hour apart.
    assert retry.due_at >= START + timedelta(hours=14)
    everyone = sorted(
        a.due_at
        for a in session.scalars(select(Action).where(Action.kind == ActionKind.RETRY_PAYMENT))
        if a.status is ActionStatus.PLANNED
    )
    assert len(everyone) == 11
    assert everyone[0] == START + timedelta(hours=14)
    assert all(b - a >= timedelta(hours=1) for a, b in pairwise(everyone))
    assert retry.due_at == everyone[-1]


def test_a_card_update_retry_on_a_fresh_card_goes_at_once(session: Session, policy: Policy) -> None:
    deliver(session, policy, failed("in_1", "expired_card", code="expired_card"))
    update = ev.envelope("payment_method.automatically_updated", _card("pm_x", "fp_x"), at=START)
    customer = ev.customer_updated("pm_x", at=START)
    deliver(session, policy, customer)
    deliver(session, policy, update, now=START + timedelta(hours=3))
    (retry,) = _retries(session, "in_1")
    assert retry.due_at == START + timedelta(hours=3)
    assert retry.reason == "card updated: one prompt retry"


def test_never_retry_advice_belongs_to_the_card(session: Session, policy: Policy) -> None:
    """Mastercard MAC 03 on invoice A: no retry on that card for 30 days, for every invoice
    and whatever decline comes next; the timeline says why (issue #9, item 4)."""
    card = _card("pm_mc", "fp_mc", brand="mastercard")
    deliver(session, policy, failed("in_a", "do_not_honor", card=card, network_advice_code="03"))
    assert _retries(session, "in_a") == []  # stop: never retried
    later = START + timedelta(hours=2)
    # A soft decline on the same card (the customer tried) must not bring retries back ...
    deliver(session, policy, failed("in_a", "do_not_honor", at=later, card=card, charge="ch_2"))
    # ... and another invoice on the card is not retried either.
    deliver(session, policy, failed("in_b", "do_not_honor", at=later, card=card), now=later)
    for invoice in ("in_a", "in_b"):
        retries = _retries(session, invoice)
        assert [r.status for r in retries] == [ActionStatus.CANCELLED]
        assert "MAC 03" in retries[0].reason
        assert "dropped" in retries[0].reason


def test_a_fraud_decline_stops_every_invoice_on_that_card(session: Session, policy: Policy) -> None:
    card = _card("pm_f", "fp_f")
    deliver(session, policy, failed("in_a", "stolen_card", card=card))
    deliver(session, policy, failed("in_b", "insufficient_funds", card=card))
    (retry,) = _retries(session, "in_b")
    assert retry.status is ActionStatus.CANCELLED
    assert "fraud" in retry.reason
    deliver(session, policy, failed("in_c", "insufficient_funds", card=_card("pm_g", "fp_g")))
    assert _retries(session, "in_c")[0].status is ActionStatus.PLANNED  # another card: fine


def test_invoices_on_one_card_share_its_gap_oldest_first(session: Session, policy: Policy) -> None:
    """Two invoices fail on one card at the same moment: their retries are never at the same
    instant; the older invoice keeps the schedule's time (issue #9, item 3)."""
    card = _card("pm_shared", "fp_shared", brand="mastercard")
    deliver(session, policy, failed("in_old", "do_not_honor", card=card))
    deliver(session, policy, failed("in_new", "do_not_honor", card=card, charge="ch_new"))
    (older,) = _retries(session, "in_old")
    (newer,) = _retries(session, "in_new")
    assert older.due_at == START + timedelta(hours=24)
    gap = timedelta(hours=policy.retries.min_gap_hours)
    assert newer.due_at >= older.due_at + gap
    assert "minimum gap" in newer.reason
