"""Property: over two invoices of one customer and one or two cards, with voluntary and
involuntary cancellations, card updates, the provider's and the customer's own attempts,
bank debits that process before they settle, and events delivered late, twice or out of
order, the real pipeline (inbox, handlers, the retry and final-action task bodies) keeps:

1. no charge of ours after a voluntary cancellation of its subscription was processed;
2. per card, no charge of ours closer than the minimum gap to an attempt we knew of, and
   none that takes a 24 h (Mastercard) or 30-day (Visa) window over the card's budget;
3. no case both recovered and churned;
4. a case is recovered only when the provider says its invoice is paid;
5. every open case has an action planned, and one awaiting the customer its final action.

``test_each_invariant_catches_its_bug`` injects one bug per invariant and shows the property
fails on it. The account's side is a small model of Stripe (:class:`Account`): it charges the
customer's default card and reports every attempt as Stripe does, as events we deliver when a
step says so.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import REPO, START
from worker import clock
from worker.billing.domain import Card, Decline
from worker.billing.models import AttemptOutcome, Customer, Invoice
from worker.billing.stripe_client import PaymentResult
from worker.config import Policy, load_policy
from worker.db import make_engine, make_sessionmaker
from worker.dunning import actions, operations, planning
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import TERMINAL, DunningEvent, DunningState
from worker.ledger.models import LedgerMovement, MovementKind
from worker.migrate import upgrade
from worker.runtime import Runtime
from worker.settings import Settings
from worker.webhooks.handlers import Context
from worker.webhooks.inbox import store_event
from worker.webhooks.service import process_event

_example = itertools.count()
MC_PER_DAY, VISA_PER_MONTH = 3, 4  # tighter than the networks', so histories reach them
CARDS = (("mastercard", 0), ("visa", 1))
CODES = ("insufficient_funds", "do_not_honor", "expired_card", "fraudulent")
HOURS = (0.25, 1, 6, 24, 72, 24 * 7, 24 * 15)  # the last one past the window


@dataclass
class Account:
    """What Stripe knows: invoices, subscriptions, cards, every attempt, the events it sent."""

    n: int
    cards: int
    clock: clock.ManualClock
    default: int = 0
    invoice_status: dict[str, str] = field(default_factory=dict)  # open | processing | paid
    sub_status: dict[str, str] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    next_outcome: str = "declined"
    charges: list[tuple[datetime, int, str, bool]] = field(default_factory=list)  # ours
    processing: dict[str, str] = field(default_factory=dict)  # invoice -> pending charge
    seq: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        for x in "ab":
            self.invoice_status[self.inv(x)] = "open"
            self.sub_status[self.sub(x)] = "active"

    def inv(self, x: str) -> str:
        return f"in_q{self.n}{x}"

    def sub(self, x: str) -> str:
        return f"sub_q{self.n}{x}"

    @property
    def customer(self) -> str:
        return f"cus_q{self.n}"

    def pm(self, i: int) -> str:
        return f"pm_q{self.n}_{i}"

    def pm_object(self, i: int) -> dict[str, Any]:
        brand, _ = CARDS[i]
        card = {"brand": brand, "last4": f"000{i}", "fingerprint": f"fp_q{self.n}_{i}"}
        return {"id": self.pm(i), "object": "payment_method", "customer": self.customer} | {
            "type": "card",
            "card": card | {"exp_month": 1, "exp_year": 2031},
        }

    def sub_of(self, invoice: str) -> str:
        return self.sub(invoice[-1])

    # ---- what happens at the provider, and the events it sends

    def attempt(self, invoice: str, *, code: str | None, charge: str | None = None) -> str:
        """One charge on the default card (or the settling of ``charge``, a processing debit):
        paid (code None) or declined with ``code``."""
        charge = charge or f"ch_q{self.n}_{next(self.seq)}"
        at = self.clock.now()
        if code is None:
            self.invoice_status[invoice] = "paid"
            self._send("invoice.paid", self._invoice(invoice, "paid", at), at)
        else:
            pi = ev.payment_intent(
                pi_id=f"pi_{charge}",
                charge_id=charge,
                decline_code=code,
                code="expired_card" if code == "expired_card" else "card_declined",
                card=self.pm_object(self.default),
            )
            obj = self._invoice(invoice, "open", at, payment_intent=pi)
            self._send("invoice.payment_failed", obj, at, shape="acacia")
        return charge

    def cancel(self, x: str, *, voluntary: bool) -> None:
        self.sub_status[self.sub(x)] = "canceled"
        reason = "cancellation_requested" if voluntary else "payment_failed"
        obj = ev.subscription(
            sub_id=self.sub(x),
            customer_id=self.customer,
            status="canceled",
            cancellation_reason=reason,
            at=self.clock.now(),
        )
        self._send("customer.subscription.deleted", obj, self.clock.now())

    def switch_card(self) -> dict[str, Any]:
        was, self.default = self.pm(self.default), 1 - self.default
        return ev.customer_updated(
            self.pm(self.default), was=was, customer_id=self.customer, at=self.clock.now()
        )

    def _invoice(self, invoice: str, status: str, at: datetime, **kw: Any) -> dict[str, Any]:
        obj = ev.invoice(
            invoice_id=invoice,
            customer_id=self.customer,
            subscription_id=self.sub_of(invoice),
            amount_due=2900 if invoice.endswith("a") else 4900,
            status=status,
            shape="acacia" if "payment_intent" in kw else "basil",
            at=at,
            **kw,
        )
        obj["subscription"] = self.sub_of(invoice)
        return obj

    def _send(self, kind: str, obj: dict[str, Any], at: datetime, **kw: Any) -> None:
        self.outbox.append(ev.envelope(kind, obj, at=at, **kw))

    # ---- the gateway our tasks call (StripeGateway's methods)

    def pay_invoice(
        self, invoice_id: str, *, idempotency_key: str, payment_method: str | None = None
    ) -> PaymentResult:
        assert payment_method is None, "the default card only (backups are off here)"
        status = self.invoice_status[invoice_id]
        if status == "paid":
            return PaymentResult(succeeded=True, already_paid=True)
        assert status != "processing", "we charged an invoice whose debit is processing"
        at, card = self.clock.now(), self.default
        if self.next_outcome == "processing":
            charge = f"ch_q{self.n}_{next(self.seq)}"
            self.invoice_status[invoice_id], self.processing[invoice_id] = "processing", charge
            self.charges.append((at, card, charge, False))
            return PaymentResult(succeeded=False, processing=True)
        if self.next_outcome == "paid":
            self.charges.append((at, card, self.attempt(invoice_id, code=None), False))
            return PaymentResult(succeeded=True)
        charge = self.attempt(invoice_id, code="do_not_honor")
        self.charges.append((at, card, charge, True))
        brand, _ = CARDS[card]
        decline = Decline(
            code="card_declined",
            decline_code="do_not_honor",
            charge_id=charge,
            card=Card(self.pm(card), brand, fingerprint=f"fp_q{self.n}_{card}"),
        )
        return PaymentResult(succeeded=False, decline=decline)

    def invoice_status_of(self, invoice_id: str) -> str:
        status = self.invoice_status[invoice_id]
        return "open" if status == "processing" else status

    def cancel_subscription(self, subscription_id: str, *, idempotency_key: str) -> None:
        if self.sub_status[subscription_id] != "canceled":  # Stripe reports ours as requested
            self.sub_status[subscription_id] = "canceled"
            obj = ev.subscription(
                sub_id=subscription_id,
                customer_id=self.customer,
                status="canceled",
                cancellation_reason="cancellation_requested",
                at=self.clock.now(),
            )
            self._send("customer.subscription.deleted", obj, self.clock.now())

    def mark_uncollectible(self, invoice_id: str, *, idempotency_key: str) -> None:
        return None


class Gateway:
    """The account as our tasks see it (``invoice_status`` named as StripeGateway names it)."""

    def __init__(self) -> None:
        self.account: Account | None = None

    def __getattr__(self, name: str) -> Any:
        assert self.account is not None
        return getattr(self.account, "invoice_status_of" if name == "invoice_status" else name)


@dataclass
class Seen:
    """What we were told, for the invariants: attempts on each card, voluntary ends."""

    # card -> charge -> (when, declined)
    attempts: dict[int, dict[str, tuple[datetime, bool]]] = field(default_factory=dict)
    voluntary_end: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('cards')) / 'c.db'}"
    upgrade(url)
    policy = load_policy(REPO / "config" / "dunning.toml")
    networks = policy.networks.model_copy(
        update={
            "mastercard": policy.networks.mastercard.model_copy(
                update={"max_declines_24h": MC_PER_DAY}
            ),
            "visa": policy.networks.visa.model_copy(update={"max_declines_30d": VISA_PER_MONTH}),
        }
    )
    # Backup cards are off: this model charges the default card only (their card rules are
    # tested in tests/dunning/test_backup_cards.py).
    retries = policy.retries.model_copy(update={"backup_methods": "never"})
    tight = policy.model_copy(update={"networks": networks, "retries": retries})
    gateway = Gateway()
    runtime = Runtime(Settings(database_url=url), policy=tight, gateway=gateway)  # type: ignore[arg-type]
    engine = make_engine(url)
    yield make_sessionmaker(engine), runtime, gateway
    engine.dispose()
    runtime.close()


now = st.booleans()  # a provider step's events delivered at once (else by a later "deliver")
step = st.one_of(
    st.tuples(st.just("fail"), now, st.sampled_from("ab"), st.sampled_from(CODES)),
    st.tuples(st.just("customer_pays"), now, st.sampled_from("ab"), st.booleans()),
    st.tuples(st.just("cancel"), now, st.sampled_from("ab"), st.booleans()),
    st.tuples(st.just("settle"), now, st.sampled_from("ab"), st.booleans()),
    st.tuples(st.just("card_update")),
    st.tuples(st.just("deliver"), st.integers(0, 40)),  # late, twice, out of order
    st.tuples(
        st.just("tick"), st.sampled_from(HOURS), st.sampled_from(["declined", "processing", "paid"])
    ),
)
histories = st.tuples(st.integers(1, 2), st.lists(step, min_size=1, max_size=30))


def run_history(harness: Any, cards: int, steps: list[tuple[Any, ...]]) -> None:
    factory, runtime, gateway = harness
    policy: Policy = runtime.policy
    manual = clock.ManualClock(START)
    account = Account(next(_example), cards, manual)
    gateway.account = account
    seen = Seen()
    _checked_charges(account, seen, policy)
    with clock.use_clock(manual), factory() as session:
        # Both invoices' first attempts failed on the card they were billed to.
        account.attempt(account.inv("a"), code="insufficient_funds")
        account.attempt(account.inv("b"), code="do_not_honor")
        for payload in list(account.outbox):
            _deliver(session, policy, payload, seen)
        for what, *args in steps:
            _step(session, runtime, account, seen, what, args)
            session.commit()
            _check(session, account, seen, policy)


def _step(
    session: Session, runtime: Runtime, account: Account, seen: Seen, what: str, args: list[Any]
) -> None:
    policy: Policy = runtime.policy
    sent = len(account.outbox)
    if what in ("fail", "customer_pays", "cancel", "settle"):
        at_once, x, arg = args
        invoice = account.inv(x)
        status = account.invoice_status[invoice]
        if what == "fail" and status == "open":
            account.attempt(invoice, code=arg)
        elif what == "customer_pays" and status == "open":
            account.attempt(invoice, code=None if arg else "do_not_honor")
        elif what == "cancel" and account.sub_status[account.sub(x)] == "active":
            account.cancel(x, voluntary=arg)
        elif what == "settle" and status == "processing":
            account.invoice_status[invoice] = "open"
            code = None if arg else "insufficient_funds"
            account.attempt(invoice, code=code, charge=account.processing.pop(invoice))
        for payload in account.outbox[sent:] if at_once else ():
            _deliver(session, policy, payload, seen)
    elif what == "card_update" and account.cards == 2:
        _deliver(session, policy, account.switch_card(), seen)  # the new default, told at once
    elif what == "deliver" and account.outbox:
        _deliver(session, policy, account.outbox[args[0] % len(account.outbox)], seen)
    elif what == "tick":
        account.clock.set(account.clock.now() + timedelta(hours=args[0]))
        account.next_outcome = args[1]
        session.commit()
        _run_due(session, runtime, account, seen)


def _deliver(session: Session, policy: Policy, payload: dict[str, Any], seen: Seen) -> None:
    obj = payload["data"]["object"]
    if payload["type"] == "invoice.payment_failed":
        error = obj["payment_intent"]["last_payment_error"]
        card = int(error["payment_method"]["id"].rsplit("_", 1)[1])
        at = datetime.fromtimestamp(payload["created"], tz=START.tzinfo)
        seen.attempts.setdefault(card, {})[error["charge"]] = (at, True)
    if payload["type"] == "customer.subscription.deleted" and (
        obj["cancellation_details"]["reason"] == "cancellation_requested"
    ):
        seen.voluntary_end.add(obj["id"])
    now = clock.now()
    stored = store_event(session, provider="stripe", body=json.dumps(payload).encode(), now=now)
    if stored.inbox_id is not None:
        process_event(session, stored.inbox_id, Context(policy, now))
    session.commit()


def _run_due(session: Session, runtime: Runtime, account: Account, seen: Seen) -> None:
    """What the scheduler and workers do at this moment, due actions in due order."""
    customer = session.scalar(select(Customer.id).where(Customer.provider_id == account.customer))
    while True:
        due = session.scalars(
            select(Action)
            .where(
                Action.customer_id == customer,  # earlier examples share the database
                Action.status == ActionStatus.PLANNED,
                Action.due_at <= clock.now(),
            )
            .order_by(Action.due_at, Action.id)
        ).first()
        if due is None:
            return
        if due.kind is ActionKind.SEND_EMAIL:  # emails are another test's business
            due.status = ActionStatus.DONE
            session.commit()
            continue
        due.status, due.claimed_at = ActionStatus.CLAIMED, clock.now()
        action_id, kind = due.id, due.kind
        session.commit()
        charges = len(account.charges)
        actions.RUNNERS[kind](runtime, action_id)  # retries, final actions, the app's access
        session.expire_all()
        for at, card, charge, declined in account.charges[charges:]:  # ours count from now on
            seen.attempts.setdefault(card, {}).setdefault(charge, (at, declined))


def _checked_charges(account: Account, seen: Seen, policy: Policy) -> None:
    """Invariants 1 and 2, checked at each of our charges, against what we knew then."""
    pay = account.pay_invoice

    def checked(
        invoice_id: str, *, idempotency_key: str, payment_method: str | None = None
    ) -> PaymentResult:
        now, card = account.clock.now(), account.default
        assert account.sub_of(invoice_id) not in seen.voluntary_end, "charged after a cancellation"
        known = [(at, declined) for at, declined in seen.attempts.get(card, {}).values()]
        gap = timedelta(hours=policy.retries.min_gap_hours)
        assert not [at for at, _ in known if now - gap < at <= now], (
            "charged inside the minimum gap"
        )
        declines = [at for at, declined in known if declined and at <= now]
        if CARDS[card][0] == "mastercard":
            in_day = [at for at in declines if now - at < timedelta(hours=24)]
            assert len(in_day) < MC_PER_DAY, "Mastercard budget broken"
        else:
            in_month = [at for at in declines if now - at < timedelta(days=30)]
            assert len(in_month) < VISA_PER_MONTH, "Visa budget broken"
        return pay(invoice_id, idempotency_key=idempotency_key, payment_method=payment_method)

    account.pay_invoice = checked  # type: ignore[method-assign]


def _check(session: Session, account: Account, seen: Seen, policy: Policy) -> None:
    for x in "ab":
        case = session.scalars(
            select(DunningCase)
            .join(Invoice, Invoice.id == DunningCase.invoice_id)
            .where(Invoice.provider_id == account.inv(x))
        ).first()
        if case is None:
            continue
        kinds = {
            m.kind
            for m in session.scalars(
                select(LedgerMovement).where(LedgerMovement.case_id == case.id)
            )
        }
        reached = set(
            session.scalars(
                select(CaseTransition.to_state).where(CaseTransition.case_id == case.id)
            )
        )
        endings = {MovementKind.RECOVERY, MovementKind.CHURN_INVOLUNTARY}
        both = {DunningState.RECOVERED, DunningState.CHURNED}
        assert not endings <= kinds and not both <= reached, "recovered and churned"
        if case.state is DunningState.RECOVERED:
            assert account.invoice_status[account.inv(x)] == "paid", "recovered, not paid"
        if case.state in TERMINAL or case.state is DunningState.PAUSED:
            continue
        planned = session.scalars(
            select(Action.kind).where(
                Action.case_id == case.id, Action.status == ActionStatus.PLANNED
            )
        ).all()
        assert planned, f"open case {case.state.value} with nothing planned"
        if case.state is DunningState.AWAITING_CUSTOMER:
            assert ActionKind.FINAL_ACTION in planned, "awaiting the customer, no final action"


SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(history=histories)
def test_card_histories_keep_the_invariants(harness: Any, history: tuple[int, Any]) -> None:
    run_history(harness, *history)


def _no_cancellation(*_: Any, **__: Any) -> None:
    """Bug 1: a subscription's end is not passed on to its cases."""


def _no_charge_check(
    session: Session, case: DunningCase, action: Action, *, policy: Policy, now: datetime
) -> bool:
    """Bug 2: nothing is checked right before the charge, and planning ignores the card."""
    action.charging_at = now
    return True


def _processing_is_paid(
    session: Session,
    case: DunningCase,
    action: Action,
    *,
    policy: Policy,
    now: datetime,
) -> None:
    """Bug 4: the 200 of a processing debit is taken as paid."""
    action.status = ActionStatus.DONE
    actions.our_charge(session, case, action, AttemptOutcome.SUCCEEDED, now=now)
    actions.apply(session, case, DunningEvent.PAYMENT_SUCCEEDED, policy=policy, now=now)


def _no_final_action(session: Session, case: DunningCase, *args: Any, **kw: Any) -> None:
    """Bug 5: the cadence forgets the final action."""
    plan = planning.plan
    planning.plan = lambda s, c, kind, **k: (
        None if kind is ActionKind.FINAL_ACTION else plan(s, c, kind, **k)
    )  # type: ignore[assignment]
    try:
        ORIGINAL_CADENCE(session, case, *args, **kw)
    finally:
        planning.plan = plan  # type: ignore[assignment]


ORIGINAL_CADENCE = planning.plan_cadence
# Bug 3: a payment after the final action turns a churned case into a recovered one.
RECOVERED_AFTER_CHURN = {
    (DunningState.CHURNED, DunningEvent.PAYMENT_SUCCEEDED): DunningState.RECOVERED
}


@pytest.mark.parametrize(
    ("bug", "catches"),
    [
        ("no_cancellation", "charged after a cancellation"),
        ("no_charge_check", "minimum gap|budget"),
        ("churn_after_recovery", "recovered and churned"),
        ("processing_is_paid", "recovered, not paid"),
        ("no_final_action", "no final action|nothing planned"),
    ],
)
def test_each_invariant_catches_its_bug(
    harness: Any, monkeypatch: pytest.MonkeyPatch, bug: str, catches: str
) -> None:
    if bug == "no_cancellation":
        monkeypatch.setattr(operations, "subscription_ended", _no_cancellation)
    elif bug == "no_charge_check":
        monkeypatch.setattr(planning, "clear_to_charge", _no_charge_check)
        monkeypatch.setattr(planning.rules, "network_compliant", _ignore_the_card)
    elif bug == "churn_after_recovery":
        from worker.dunning import state

        monkeypatch.setattr(state, "TRANSITIONS", {**state.TRANSITIONS, **RECOVERED_AFTER_CHURN})
    elif bug == "processing_is_paid":
        monkeypatch.setattr(actions, "_processing", _processing_is_paid)
    else:
        monkeypatch.setattr(planning, "plan_cadence", _no_final_action)

    @settings(SETTINGS, max_examples=300, derandomize=True, database=None, phases=[Phase.generate])
    @given(history=histories)
    def mutant(history: tuple[int, Any]) -> None:
        run_history(harness, *history)

    with pytest.raises(AssertionError, match=catches):
        mutant()


def _ignore_the_card(policy: Policy, at: datetime, reason: str, *_: Any, **__: Any) -> Any:
    from worker.dunning.rules import PlannedRetry

    return PlannedRetry(at, reason)
