"""Events through the inbox and handlers into cases, actions and ledger rows (both databases).

No provider peer here: decline signals travel in the payload (expanded PaymentIntent, the old
API shape), and retries are recorded with :func:`record_retry_result` as the retry task does
after its Stripe call. End-to-end runs with the peer and a worker live in tests/e2e.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import deliver, dunning_record, failed, paid, planned, the_case
from worker.billing.domain import Card, Decline
from worker.billing.models import PaymentAttempt
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy, RetryMode
from worker.dunning import transitions as dunning
from worker.dunning.cases import provider_retries_planned
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import DunningState
from worker.dunning.views import show_case
from worker.ledger.models import LedgerMovement, MovementKind
from worker.webhooks.models import InboxEvent, InboxStatus


def test_soft_decline_opens_a_retrying_case_with_a_plan(session: Session, policy: Policy) -> None:
    assert deliver(session, policy, failed("in_1")) is InboxStatus.PROCESSED
    case = the_case(session)
    assert case.state is DunningState.RETRYING
    assert case.decline_code == "insufficient_funds"
    assert case.decline_class == "funds"
    assert case.policy_version == policy.version
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    # +1 day, at the funds retry hour (10:00 in the default timezone, UTC)
    assert retry.due_at == datetime(2026, 3, 3, 10, tzinfo=UTC)
    assert retry.idempotency_key == "dunning:in_1:retry:1"
    emails = [a.template for a in planned(session, ActionKind.SEND_EMAIL)]
    assert emails == ["payment_failed", "reminder", "reminder", "final_notice"]
    (final,) = planned(session, ActionKind.FINAL_ACTION)
    assert final.due_at == START + timedelta(days=14)


def test_duplicate_delivery_has_no_second_effect(session: Session, policy: Policy) -> None:
    payload = failed("in_1")
    deliver(session, policy, payload)
    assert deliver(session, policy, payload) is None
    # Stripe can also emit a second Event object for the same attempt (same charge).
    second = failed("in_1", event_id="evt_twin")
    assert deliver(session, policy, second) is InboxStatus.PROCESSED
    assert session.scalar(select(func.count()).select_from(CaseTransition)) == 1
    assert len(planned(session, ActionKind.RETRY_PAYMENT)) == 1


def test_hard_decline_waits_for_the_customer(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    deliver(session, policy, failed("in_1", "expired_card", code="expired_card"))
    assert the_case(session).state is DunningState.AWAITING_CUSTOMER
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    # The network updater replaces the card: exactly one prompt retry.
    pm = ev.envelope("payment_method.automatically_updated", ev.payment_method(), at=START)
    deliver(session, policy, pm, now=START + timedelta(hours=2))
    assert deliver(session, policy, pm, now=START + timedelta(hours=2)) is None
    case = the_case(session)
    assert case.state is DunningState.RETRYING
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert retry.due_at == START + timedelta(hours=2)
    assert ":network-update:" in retry.idempotency_key
    # It goes through: the recovery is booked as the network's card update.
    retry.status = ActionStatus.CLAIMED
    manual_clock.set(retry.due_at)
    dunning_record(session, policy, retry.id, PaymentResult(succeeded=True))
    assert the_case(session).state is DunningState.RECOVERED
    (recovery,) = session.scalars(select(LedgerMovement))
    assert (recovery.kind, recovery.method) == (MovementKind.RECOVERY, "network_update")


def test_authentication_required_gets_the_action_email(session: Session, policy: Policy) -> None:
    payload = ev.envelope(
        "invoice.payment_action_required", ev.invoice(invoice_id="in_1", at=START), at=START
    )
    deliver(session, policy, payload)
    assert the_case(session).state is DunningState.AWAITING_CUSTOMER
    assert planned(session, ActionKind.SEND_EMAIL)[0].template == "action_required"
    assert planned(session, ActionKind.RETRY_PAYMENT) == []


def test_payment_recovers_books_and_cancels(session: Session, policy: Policy) -> None:
    deliver(session, policy, failed("in_1"))
    deliver(
        session, policy, paid("in_1", at=START + timedelta(days=2)), now=START + timedelta(days=2)
    )
    case = the_case(session)
    assert case.state is DunningState.RECOVERED
    assert case.recovered_method == "customer"
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    assert planned(session, ActionKind.FINAL_ACTION) == []
    assert [a.template for a in planned(session, ActionKind.SEND_EMAIL)] == ["payment_recovered"]
    (movement,) = session.scalars(select(LedgerMovement))
    assert (movement.kind, movement.amount, movement.currency, movement.method) == (
        MovementKind.RECOVERY,
        4900,
        "usd",
        "customer",
    )


def test_late_failure_after_payment_changes_nothing(session: Session, policy: Policy) -> None:
    deliver(session, policy, paid("in_1", at=START + timedelta(minutes=5)))
    deliver(session, policy, failed("in_1", at=START))  # delivered late, happened earlier
    assert session.scalar(select(func.count()).select_from(DunningCase)) == 0


def test_our_retry_then_the_same_charge_by_webhook_counts_once(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    deliver(session, policy, failed("in_1"))
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    retry.status = ActionStatus.CLAIMED
    manual_clock.set(retry.due_at)
    decline = Decline(code="card_declined", decline_code="insufficient_funds", charge_id="ch_2")
    dunning_record(session, policy, retry.id, PaymentResult(succeeded=False, decline=decline))
    deliver(
        session, policy, failed("in_1", charge="ch_2", event_id="evt_for_ch_2"), now=retry.due_at
    )
    case = the_case(session)
    failures = session.scalars(
        select(CaseTransition.event).where(
            CaseTransition.case_id == case.id, CaseTransition.event == "payment_failed"
        )
    ).all()
    assert len(failures) == 2  # the first failure and our retry's decline, not three
    (next_retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert next_retry.idempotency_key == "dunning:in_1:retry:2"
    assert next_retry.due_at == datetime(2026, 3, 5, 10, tzinfo=UTC)  # +3 days, 10:00


def test_final_action_churns_and_books_involuntary_churn(session: Session, policy: Policy) -> None:
    deliver(
        session,
        policy,
        ev.envelope(
            "customer.subscription.created",
            ev.subscription(unit_amount=12000, interval="year", at=START),
            at=START,
        ),
    )
    deliver(session, policy, failed("in_1"))
    case = the_case(session)
    end = case.window_ends_at
    dunning.apply(session, case, dunning.E.WINDOW_EXPIRED, policy=policy, now=end)
    assert case.state is DunningState.CHURNED
    (movement,) = session.scalars(select(LedgerMovement))
    assert (movement.kind, movement.amount) == (MovementKind.CHURN_INVOLUNTARY, 1000)
    # A payment after churning stays churned and is a reactivation in the ledger.
    deliver(session, policy, paid("in_1", at=end + timedelta(days=1)), now=end + timedelta(days=1))
    assert the_case(session).state is DunningState.CHURNED
    kinds = sorted(m.kind.value for m in session.scalars(select(LedgerMovement)))
    assert kinds == ["churn_involuntary", "reactivation"]


def test_voluntary_cancellation_closes(session: Session, policy: Policy) -> None:
    deliver(session, policy, failed("in_1"))
    sub = ev.subscription(
        status="canceled",
        cancellation_reason="cancellation_requested",
        at=START + timedelta(days=1),
    )
    deliver(
        session,
        policy,
        ev.envelope("customer.subscription.deleted", sub, at=START + timedelta(days=1)),
    )
    assert the_case(session).state is DunningState.CLOSED
    assert session.scalar(select(func.count()).select_from(LedgerMovement)) == 0


def test_unparseable_and_unknown_events_are_kept(session: Session, policy: Policy) -> None:
    broken = {
        "id": "evt_broken",
        "type": "invoice.payment_failed",
        "created": 1,
        "data": {"object": {"object": "invoice", "id": "in_x"}},
    }
    assert deliver(session, policy, broken) is InboxStatus.FAILED
    unknown = ev.envelope("radar.early_fraud_warning.created", {"id": "issfr_1"}, at=START)
    assert deliver(session, policy, unknown) is InboxStatus.IGNORED
    row = session.scalars(select(InboxEvent).where(InboxEvent.event_id == "evt_broken")).one()
    assert row.error is not None
    assert row.error.startswith("unparseable: ")


def test_observe_mode_communicates_and_accounts_only(session: Session, policy: Policy) -> None:
    observe = policy.model_copy(
        update={"retries": policy.retries.model_copy(update={"mode": RetryMode.OBSERVE})}
    )
    deliver(session, observe, failed("in_1"))
    case = the_case(session)
    assert case.retries_mode == "observe"
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    assert planned(session, ActionKind.FINAL_ACTION) == []  # the provider ends its dunning
    assert planned(session, ActionKind.SEND_EMAIL)[0].template == "payment_failed"
    # The provider's own retry fails again (a new charge): counted, still nothing to retry.
    deliver(session, observe, failed("in_1", charge="ch_provider_2"))
    deliver(
        session,
        observe,
        ev.envelope("payment_method.automatically_updated", ev.payment_method(), at=START),
    )
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    # Its retries ran out: it marks the invoice uncollectible, which is involuntary churn.
    gave_up = ev.envelope(
        "invoice.marked_uncollectible",
        ev.invoice(invoice_id="in_1", status="uncollectible", at=START),
        at=START,
    )
    deliver(session, observe, gave_up)
    assert the_case(session).state is DunningState.CHURNED
    (movement,) = session.scalars(select(LedgerMovement))
    assert movement.kind is MovementKind.CHURN_INVOLUNTARY


def test_an_expiring_card_gets_one_email(session: Session, policy: Policy) -> None:
    card = {
        "id": "card_1",
        "object": "card",
        "customer": "cus_test",
        "brand": "Visa",
        "last4": "4242",
        "exp_month": 3,
        "exp_year": 2026,
    }
    payload = ev.envelope("customer.source.expiring", card, at=START)
    deliver(session, policy, payload)
    deliver(session, policy, ev.envelope("customer.source.expiring", card, at=START))
    emails = planned(session, ActionKind.SEND_EMAIL)
    assert [(a.template, a.case_id) for a in emails] == [("card_expiring", None)]


def test_stripes_webhook_before_our_own_result_counts_once(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    deliver(session, policy, failed("in_1"))
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    retry.status = ActionStatus.CLAIMED  # our call is out; Stripe's webhook overtakes it
    manual_clock.set(retry.due_at)
    deliver(session, policy, failed("in_1", charge="ch_2", event_id="evt_first"), now=retry.due_at)
    decline = Decline(code="card_declined", decline_code="insufficient_funds", charge_id="ch_2")
    dunning_record(session, policy, retry.id, PaymentResult(succeeded=False, decline=decline))
    case = the_case(session)
    failures = session.scalars(
        select(CaseTransition.event).where(
            CaseTransition.case_id == case.id, CaseTransition.event == "payment_failed"
        )
    ).all()
    assert len(failures) == 2
    retries = session.scalars(
        select(Action).where(Action.kind == ActionKind.RETRY_PAYMENT).order_by(Action.id)
    ).all()
    # One next retry, planned once, counting the running one as done.
    assert [(a.idempotency_key, a.status) for a in retries] == [
        ("dunning:in_1:retry:1", ActionStatus.DONE),
        ("dunning:in_1:retry:2", ActionStatus.PLANNED),
    ]


def test_only_a_new_card_we_will_charge_prompts_a_retry(session: Session, policy: Policy) -> None:
    deliver(session, policy, failed("in_1", "expired_card", code="expired_card"))
    customer = ev.customer_updated("pm_default", at=START)
    deliver(session, policy, customer)  # not a change of default: no previous_attributes
    attached = ev.envelope("payment_method.attached", ev.payment_method(pm_id="pm_spare"), at=START)
    deliver(session, policy, attached)
    edited_spare = ev.envelope(
        "payment_method.updated", ev.payment_method(pm_id="pm_spare", last4="1111"), at=START
    )
    deliver(session, policy, edited_spare)
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    assert the_case(session).state is DunningState.AWAITING_CUSTOMER
    new_default = ev.customer_updated("pm_spare", was="pm_default", at=START)
    deliver(session, policy, new_default)
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert ":card-update:" in retry.idempotency_key


def test_a_fraud_decline_never_retries_even_on_a_new_card(session: Session, policy: Policy) -> None:
    deliver(session, policy, failed("in_1", "stolen_card"))
    assert the_case(session).decline_class == "fraud"
    deliver(
        session,
        policy,
        ev.envelope("payment_method.automatically_updated", ev.payment_method(), at=START),
    )
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    assert the_case(session).state is DunningState.AWAITING_CUSTOMER


def test_open_cases_keep_the_policy_they_started_with(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    deliver(session, policy, failed("in_old"))
    offsets = policy.retries.offsets_hours.model_copy(update={"funds": [2.0, 4.0]})
    changed = policy.model_copy(
        update={"retries": policy.retries.model_copy(update={"offsets_hours": offsets})}
    )
    assert changed.version != policy.version
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    retry.status = ActionStatus.CLAIMED
    manual_clock.set(retry.due_at)
    decline = Decline(code="card_declined", decline_code="insufficient_funds", charge_id="ch_x")
    dunning_record(session, changed, retry.id, PaymentResult(succeeded=False, decline=decline))
    (old_next,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert old_next.due_at == datetime(2026, 3, 5, 10, tzinfo=UTC)  # the old +3 days
    # A case opened now gets the new policy.
    deliver(session, changed, failed("in_new"), now=retry.due_at)
    new_case = session.scalars(select(DunningCase).order_by(DunningCase.id.desc())).first()
    assert new_case is not None
    assert new_case.policy_version == changed.version


def test_a_segment_changes_the_plan_for_matching_cases(session: Session, policy: Policy) -> None:
    annual = ev.subscription(sub_id="sub_year", interval="year", unit_amount=49000, at=START)
    deliver(session, policy, ev.envelope("customer.subscription.created", annual, at=START))
    yearly = failed("in_year")
    yearly["data"]["object"]["subscription"] = "sub_year"
    deliver(session, policy, yearly)
    deliver(session, policy, failed("in_month"))  # on sub_test: monthly, no subscription row
    cases = {c.invoice_id: c for c in session.scalars(select(DunningCase))}
    windows = sorted((c.window_ends_at - c.opened_at).days for c in cases.values())
    assert windows == [14, 21]  # the annual-plans segment in config/dunning.toml
    retries = session.scalars(
        select(Action).where(Action.kind == ActionKind.RETRY_PAYMENT).order_by(Action.due_at)
    ).all()
    assert all(a.due_at == datetime(2026, 3, 3, 10, tzinfo=UTC) for a in retries)


def one_off(payload: dict[str, Any]) -> dict[str, Any]:
    """The same failure on an invoice that belongs to no subscription (a one-off charge)."""
    payload["data"]["object"]["subscription"] = None
    return payload


def test_a_one_off_invoice_is_dunned_like_any_other(session: Session, policy: Policy) -> None:
    assert deliver(session, policy, one_off(failed("in_one_off"))) is InboxStatus.PROCESSED
    case = the_case(session)
    assert (case.state, case.decline_class) == (DunningState.RETRYING, "funds")
    assert planned(session, ActionKind.RETRY_PAYMENT)


def test_one_off_invoices_can_be_left_alone(session: Session, policy: Policy) -> None:
    no_one_off = policy.model_copy(
        update={"retries": policy.retries.model_copy(update={"one_off_invoices": False})}
    )
    assert deliver(session, no_one_off, one_off(failed("in_one_off"))) is InboxStatus.PROCESSED
    assert session.scalar(select(func.count()).select_from(DunningCase)) == 0
    assert session.scalar(select(func.count()).select_from(PaymentAttempt)) == 1  # the card's
    deliver(session, no_one_off, failed("in_subscribed"))
    assert the_case(session).state is DunningState.RETRYING


def deleted(reason: str, at: datetime) -> dict[str, Any]:
    sub = ev.subscription(status="canceled", cancellation_reason=reason, at=at)
    return ev.envelope("customer.subscription.deleted", sub, at=at)


@pytest.mark.parametrize(
    ("reason", "state", "churn_booked"),
    [
        ("cancellation_requested", DunningState.CLOSED, 0),
        ("payment_failed", DunningState.CHURNED, 1),
    ],
)
def test_a_failure_processed_after_its_subscription_ended_never_dunns(
    session: Session, policy: Policy, reason: str, state: DunningState, churn_booked: int
) -> None:
    """Stripe does not order events: the deletion is processed first, then the older
    failure of the same subscription. No retry, no email, no final action: the case closes
    with the reason, and the ledger follows the end's cause."""
    deliver(session, policy, deleted(reason, START + timedelta(hours=1)))
    deliver(session, policy, failed("in_1", at=START), now=START + timedelta(hours=2))
    case = the_case(session)
    assert case.state is state
    assert session.scalar(select(func.count()).select_from(Action)) == 0  # nothing planned
    last = session.scalars(select(CaseTransition).order_by(CaseTransition.id.desc())).first()
    assert last is not None and f"subscription ended ({reason})" in (last.reason or "")
    churn = select(func.count()).where(LedgerMovement.kind == MovementKind.CHURN_INVOLUNTARY)
    assert session.scalar(churn.select_from(LedgerMovement)) == churn_booked
    assert session.scalar(select(func.count()).select_from(PaymentAttempt)) == 1  # it happened


def test_a_late_decline_on_the_old_card_keeps_the_retry_for_the_new_one(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    """R1 on the old card is in flight; the customer sets a new default card and the prompt
    retry R2 is planned; R1 then comes back expired_card. The decline is the old card's: R2
    survives and the case keeps retrying."""
    deliver(session, policy, ev.customer_updated("pm_old", at=START))
    deliver(session, policy, failed("in_1", card=ev.payment_method(pm_id="pm_old")))
    (r1,) = planned(session, ActionKind.RETRY_PAYMENT)
    r1.status, r1.claimed_at = ActionStatus.CLAIMED, r1.due_at  # the scheduler hands it out
    session.flush()
    deliver(session, policy, ev.customer_updated("pm_new", was="pm_old", at=START))
    (r2,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert ":card-update:" in r2.idempotency_key
    manual_clock.set(r1.due_at)
    old_card = Card(payment_method_id="pm_old", brand="visa", last4="4242")
    expired = Decline(code="expired_card", decline_code="expired_card", card=old_card)
    dunning_record(session, policy, r1.id, PaymentResult(succeeded=False, decline=expired))
    assert planned(session, ActionKind.RETRY_PAYMENT) == [r2]
    assert the_case(session).state is DunningState.RETRYING


def test_a_case_opens_at_the_failures_time_not_when_we_process_it(
    session: Session, policy: Policy
) -> None:
    """A backlog of four days: the window runs from the failure; of the emails whose time
    has passed only the first notice goes out, now; retries keep the schedule's times."""
    late = START + timedelta(days=4)
    deliver(session, policy, failed("in_1", at=START), now=late)
    case = the_case(session)
    assert (case.opened_at, case.window_ends_at) == (START, START + timedelta(days=14))
    emails = [(a.template, a.due_at) for a in planned(session, ActionKind.SEND_EMAIL)]
    assert [t for t, due in emails if due <= late + timedelta(hours=12)] == ["payment_failed"]
    assert all(due >= late for _, due in emails)
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert late < retry.due_at < case.window_ends_at


def test_a_failure_older_than_its_window_plans_no_email_and_no_retry(
    session: Session, policy: Policy
) -> None:
    replayed = START + timedelta(days=30)
    deliver(session, policy, failed("in_1", at=START), now=replayed)
    case = the_case(session)
    assert case.opened_at == START
    assert planned(session, ActionKind.SEND_EMAIL) == []
    assert planned(session, ActionKind.RETRY_PAYMENT) == []
    (final,) = planned(session, ActionKind.FINAL_ACTION)  # asks the provider before acting
    assert final.due_at == case.window_ends_at


def test_days_to_recover_are_counted_from_the_failure(session: Session, policy: Policy) -> None:
    replayed = START + timedelta(days=60)
    deliver(session, policy, failed("in_1", at=START), now=replayed)
    deliver(session, policy, paid("in_1", at=START + timedelta(days=1)), now=replayed)
    case = the_case(session)
    assert case.state is DunningState.RECOVERED
    assert case.closed_at is not None and case.closed_at - case.opened_at == timedelta(days=1)


def test_stripes_own_retries_are_noticed_and_kept_clear_of(
    session: Session, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    """retries.mode = own while Stripe's Smart Retries are on: the invoice names Stripe's
    next attempt. Said loudly, shown on the case, and our retry keeps the gap from it."""
    payload = failed("in_1", "do_not_honor")
    theirs = START + timedelta(hours=23)
    payload["data"]["object"]["next_payment_attempt"] = int(theirs.timestamp())
    with caplog.at_level(logging.WARNING, logger="worker.dunning.operations"):
        deliver(session, policy, payload)
    assert "Smart Retries" in caplog.text
    (retry,) = planned(session, ActionKind.RETRY_PAYMENT)
    assert abs(retry.due_at - theirs) >= timedelta(hours=policy.retries.provider_retry_gap_hours)
    shown = show_case(session, the_case(session).id)
    assert shown is not None
    assert shown["provider_next_attempt"] == "2026-03-03T14:00:00Z"
    assert provider_retries_planned(session, now=START) == 1
