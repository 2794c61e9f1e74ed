"""A card's history as the networks count it: every attempt on it, whoever made it.

Network budgets, the minimum gap and "never retry" advice belong to the card, across every
invoice and every attempt source (ours, the provider's, the customer's). The history follows
the card across a network renumbering: a payment method keeps its id when the network updates
the card, so its history includes every fingerprint it has had.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    and_,
    bindparam,
    false,
    literal_column,
    or_,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.orm import Session

from worker.billing.domain import Card
from worker.billing.models import (
    PROVIDER,
    AttemptOutcome,
    Customer,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
    by_provider_id,
)
from worker.billing.service import decline_of
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.dunning.rules import CardHistory, card_block
from worker.dunning.state import TERMINAL
from worker.ledger.models import RecoveryMethod

# pg_advisory_xact_lock's first key: the namespace of per-customer card locks ("card").
_CARD_LOCKS = 0x63617264


def lock_cards(session: Session, customer_id: int) -> None:
    """The per-card lock the check right before a charge holds until its transaction ends: a
    card belongs to one customer at the provider, so one lock per customer covers all of its
    cards. On PostgreSQL a transaction-level advisory lock, not the customer's row: webhook
    handlers update that row and then lock cases, and a row lock taken here after the case
    would deadlock with them. On SQLite the transaction already holds the write lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": _CARD_LOCKS, "key": customer_id % 2**31},
        )


def charged_card(
    session: Session, case: DunningCase, *, last_tried: PaymentAttempt | None = None
) -> Card | None:
    """The card a retry of ``case`` charges, as far as we know: the customer's default (what
    the provider charges), else the card the invoice was last tried on; None if neither.
    ``last_tried``: that attempt, when the caller has read it (:func:`card_facts`)."""
    customer = session.get_one(Customer, case.customer_id)
    if customer.default_payment_method_id is not None:
        return Card(payment_method_id=customer.default_payment_method_id)
    last = last_tried or _last_tried(session, case.invoice_id)
    if last is None:
        return None
    return Card(last.payment_method_id, last.card_brand, fingerprint=last.card_fingerprint)


def action_card(session: Session, case: DunningCase, action: ScheduledAction) -> Card | None:
    """The card ``action`` (a retry) charges: the backup card it names, else
    :func:`charged_card`."""
    if action.recovery_method is RecoveryMethod.BACKUP_METHOD and action.payment_method:
        return saved_card(session, action.payment_method) or Card(action.payment_method)
    return charged_card(session, case)


def saved_card(session: Session, payment_method_id: str) -> Card | None:
    """What the mirror knows of a card on file."""
    pm = session.scalar(
        select(PaymentMethod).where(by_provider_id(PaymentMethod, payment_method_id))
    )
    if pm is None:
        return None
    return Card(pm.provider_id, pm.brand, pm.last4, pm.exp_month, pm.exp_year, pm.fingerprint)


def saved_cards(session: Session, customer_id: int) -> list[PaymentMethod]:
    """The customer's cards on file (still attached), newest first."""
    return list(
        session.scalars(
            select(PaymentMethod)
            .where(
                PaymentMethod.customer_id == customer_id,
                PaymentMethod.detached_at.is_(None),
            )
            .order_by(PaymentMethod.updated_at.desc(), PaymentMethod.id.desc())
        )
    )


def backup_cards(
    session: Session,
    case: DunningCase,
    *,
    failing: Card | None,
    now: datetime,
    saved: list[PaymentMethod] | None = None,
) -> list[Card]:
    """The customer's other saved cards a backup retry may charge, newest first: still
    attached, not expired, and not the failing card under another id (same fingerprint).
    ``saved``: :func:`saved_cards`, when the caller has read them."""
    rows = saved_cards(session, case.customer_id) if saved is None else saved
    if not rows:
        return []
    failing_pm = failing.payment_method_id if failing else None
    failing_fp = saved_fingerprint(session, failing)
    cards = []
    for pm in rows:
        if pm.provider_id == failing_pm or (failing_fp and pm.fingerprint == failing_fp):
            continue
        if (
            pm.exp_year is None
            or pm.exp_month is None
            or expiry_end(pm.exp_year, pm.exp_month) <= now
        ):
            continue  # expired, or an expiry we cannot tell
        cards.append(
            Card(pm.provider_id, pm.brand, pm.last4, pm.exp_month, pm.exp_year, pm.fingerprint)
        )
    return cards


def saved_fingerprint(session: Session, card: Card | None) -> str | None:
    if card is None:
        return None
    if card.fingerprint:
        return card.fingerprint
    saved = saved_card(session, card.payment_method_id) if card.payment_method_id else None
    return saved.fingerprint if saved else None


def expiry_end(exp_year: int, exp_month: int) -> datetime:
    """The first instant after the card's expiry month (cards work through its last day)."""
    year, month = (exp_year + 1, 1) if exp_month == 12 else (exp_year, exp_month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def _last_tried(session: Session, invoice_id: int) -> PaymentAttempt | None:
    """The invoice's latest attempt that names its card."""
    return session.scalars(
        select(PaymentAttempt)
        .where(
            PaymentAttempt.invoice_id == invoice_id,
            or_(
                PaymentAttempt.card_fingerprint.is_not(None),
                PaymentAttempt.payment_method_id.is_not(None),
            ),
        )
        .order_by(PaymentAttempt.occurred_at.desc(), PaymentAttempt.id.desc())
    ).first()


@dataclass(frozen=True)
class CardFacts:
    """A card's history as the networks count it (:func:`card_history`), and what the same
    statement says of the invoice's own payments."""

    history: CardHistory
    last_tried: PaymentAttempt | None  # the invoice's latest attempt that names its card
    pending: PaymentAttempt | None  # the invoice's payment the provider has not settled


def card_history(
    session: Session,
    invoice: Invoice,
    *,
    now: datetime,
    policy: Policy,
    payment_method_id: str | None = None,
    case: DunningCase | None = None,
) -> CardHistory:
    """Every attempt the networks count against the card the next charge will use (the given
    payment method, else the one this invoice was last tried on): ours, the provider's and
    the customer's, on any invoice, over the last 30 days."""
    return card_facts(
        session, invoice, now=now, policy=policy, payment_method_id=payment_method_id, case=case
    ).history


def card_facts(
    session: Session,
    invoice: Invoice,
    *,
    now: datetime,
    policy: Policy,
    payment_method_id: str | None = None,
    case: DunningCase | None = None,
) -> CardFacts:
    """:func:`card_history` in two statements (the card's and the invoice's attempts, then
    the other invoices' retries on the card), each by indexed look-ups. ``case``: the
    invoice's case, when the caller holds it."""
    rows = session.execute(
        _card_and_invoice_attempts(payment_method_id is not None),
        {"invoice_id": invoice.id, "pm": payment_method_id},
    ).all()
    found: dict[int, PaymentAttempt] = {}
    on_card: set[int] = set()
    for attempt, why in rows:
        found[attempt.id] = attempt
        if why == "card":
            on_card.add(attempt.id)
    own = sorted(
        (a for a in found.values() if a.invoice_id == invoice.id), key=_newest, reverse=True
    )
    last_tried = next((a for a in own if a.card_fingerprint or a.payment_method_id), None)
    fingerprint = None
    if payment_method_id is None and last_tried is not None:
        fingerprint, payment_method_id = last_tried.card_fingerprint, last_tried.payment_method_id
    card = sorted((found[i] for i in on_card), key=_newest, reverse=True)
    known_card = fingerprint is not None or payment_method_id is not None
    recent = [a for a in card if a.occurred_at > now - timedelta(days=30)]
    unsettled = (AttemptOutcome.SUCCEEDED, AttemptOutcome.PROCESSING)
    declines = [a for a in recent if a.outcome not in unsettled]
    if known_card:
        last_decline = next(iter(declines), None)
    else:  # no card facts at all: the invoice's own latest decline still carries its advice
        last_decline = next((a for a in own if a.outcome is not AttemptOutcome.SUCCEEDED), None)
    history = CardHistory(
        brand=next((a.card_brand for a in recent if a.card_brand), None),
        declines=tuple((a.occurred_at, a.amount) for a in declines),
        last_attempt_at=max((a.occurred_at for a in recent), default=None),
        network_advice_code=last_decline.network_advice_code if last_decline else None,
        last_declined_at=last_decline.occurred_at if last_decline else None,
        provider_next_attempt=invoice.next_payment_attempt,
        blocked=_block(card, policy) if known_card else None,
        reserved=(
            _reserved(
                session,
                invoice,
                case,
                invoices={a.invoice_id for a in card if a.invoice_id is not None},
                fingerprints={a.card_fingerprint for a in card} - {None} | {fingerprint} - {None},
                payment_method_id=payment_method_id,
            )
            if known_card
            else ()
        ),
    )
    pending = next((a for a in own if a.outcome is AttemptOutcome.PROCESSING), None)
    return CardFacts(history, last_tried, pending)


def _newest(attempt: PaymentAttempt) -> tuple[datetime, int]:
    return attempt.occurred_at, attempt.id


@functools.cache
def _card_and_invoice_attempts(method_given: bool) -> Any:
    """One statement (built once; parameters ``invoice_id`` and ``pm``): the invoice's own
    attempts (tagged ``invoice``) and every attempt on its card (tagged ``card``), whatever
    the invoice, over the card's whole history. The card is the payment method ``pm``, else
    the one the invoice was last tried on, with every fingerprint it has had (a network
    update renumbers it, the id stays), each part looked up by an index."""
    pa = PaymentAttempt
    invoice_id = bindparam("invoice_id", type_=BigInteger())
    fingerprints: list[Any] = []
    if not method_given:
        last = (
            select(pa.payment_method_id.label("pm"), pa.card_fingerprint.label("fp"))
            .where(
                pa.invoice_id == invoice_id,
                or_(pa.card_fingerprint.is_not(None), pa.payment_method_id.is_not(None)),
            )
            .order_by(pa.occurred_at.desc(), pa.id.desc())
            .limit(1)
            .cte("last_tried")
        )
        method: Any = select(last.c.pm).scalar_subquery()
        fingerprints.append(select(last.c.fp.label("fp")))
    else:
        method = bindparam("pm", type_=Text())
    fingerprints += [
        select(pa.card_fingerprint.label("fp")).where(pa.payment_method_id == method),
        select(PaymentMethod.fingerprint.label("fp")).where(
            PaymentMethod.provider == PROVIDER, PaymentMethod.provider_id == method
        ),
    ]
    fps = union(*fingerprints).cte("card_fingerprints")
    tagged = union_all(
        select(pa.id, literal_column("'invoice'").label("why")).where(pa.invoice_id == invoice_id),
        select(pa.id, literal_column("'card'").label("why")).where(pa.payment_method_id == method),
        select(pa.id, literal_column("'card'").label("why")).join(
            fps, pa.card_fingerprint == fps.c.fp
        ),
    ).subquery("tagged")
    return select(pa, tagged.c.why).join(tagged, tagged.c.id == pa.id)


def _reserved(
    session: Session,
    invoice: Invoice,
    case: DunningCase | None,
    *,
    invoices: set[int],
    fingerprints: set[str | None],
    payment_method_id: str | None,
) -> tuple[datetime, ...]:
    """Other invoices' retries on this card that count as attempts already: charges going
    through right now (whatever their invoice), and the retries of older open invoices,
    planned or running, so the newer invoice yields, two never meet, and the oldest goes
    first. ``invoices``: those tried on this card; ``fingerprints``: the card's (the saved
    payment method's own is read here)."""
    mine = case or session.scalar(select(DunningCase).where(DunningCase.invoice_id == invoice.id))
    known = sorted(f for f in fingerprints if f)
    others = sorted(invoices - {invoice.id})
    statement = _reserved_statement(
        mine=mine is not None,
        fingerprints=bool(known),
        method=payment_method_id is not None,
        others=bool(others),
    )
    rows = session.execute(
        statement,
        {
            "invoice_id": invoice.id,
            "mine_opened": mine.opened_at if mine else None,
            "mine_id": mine.id if mine else None,
            "fps": known,
            "pm": payment_method_id,
            "others": others,
        },
    )
    return tuple(
        charging_at or ((claimed_at or due_at) if status is ActionStatus.CLAIMED else due_at)
        for _id, status, due_at, claimed_at, charging_at in rows
    )


@functools.cache
def _reserved_statement(*, mine: bool, fingerprints: bool, method: bool, others: bool) -> Any:
    """:func:`_reserved`'s statement for what is known (built once per shape): a union of
    index look-ups, retries naming the card and retries of the invoices tried on it."""
    case, action = DunningCase, ScheduledAction
    charging = and_(action.status == ActionStatus.CLAIMED, action.charging_at.is_not(None))
    mine_opened = bindparam("mine_opened", type_=case.opened_at.type)
    waiting = (
        and_(
            action.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            case.state.not_in(TERMINAL),
            or_(
                case.opened_at < mine_opened,
                and_(
                    case.opened_at == mine_opened,
                    case.id < bindparam("mine_id", type_=BigInteger()),
                ),
            ),
        )
        if mine
        else false()
    )
    retries = (
        select(action.id, action.status, action.due_at, action.claimed_at, action.charging_at)
        .join(case, case.id == action.case_id)
        .where(
            action.kind == ActionKind.RETRY_PAYMENT,
            case.invoice_id != bindparam("invoice_id", type_=BigInteger()),
            or_(charging, waiting),
        )
    )
    # retries that name the card (a backup card may have no attempt on any of our invoices
    # yet): by its id, or by any payment method with one of its fingerprints
    pm = bindparam("pm", type_=Text())
    same_card: list[ColumnElement[bool]] = []
    if fingerprints:
        same_card.append(PaymentMethod.fingerprint.in_(bindparam("fps", expanding=True)))
    if method:
        saved = select(PaymentMethod.fingerprint).where(
            PaymentMethod.provider == PROVIDER, PaymentMethod.provider_id == pm
        )
        same_card.append(PaymentMethod.fingerprint.in_(saved.scalar_subquery()))
    named: list[Any] = [select(PaymentMethod.provider_id).where(or_(false(), *same_card))]
    if method:
        named.append(select(pm))
    parts = [retries.where(action.payment_method.in_(union(*named)))]
    if others:  # invoices tried on this card
        parts.append(retries.where(case.invoice_id.in_(bindparam("others", expanding=True))))
    return union(*parts)


_ADVICE = (
    "network_advice_code",
    "decline_code",
    "advice_code",
    "outcome_reason",
)


def _block(card: list[PaymentAttempt], policy: Policy) -> tuple[datetime, str] | None:
    """The longest-lasting "never retry" any decline on this card left, over its whole
    history (a fraud decline years ago still counts while the card is the same)."""
    advised = [
        a
        for a in card
        if a.outcome is not AttemptOutcome.SUCCEEDED
        and (any(getattr(a, f) is not None for f in _ADVICE) or a.outcome_type == "blocked")
    ]
    blocks = [b for a in advised if (b := card_block(decline_of(a), a.occurred_at, policy))]
    return max(blocks, default=None, key=lambda b: b[0])
