"""A card's history as the networks count it: every attempt on it, whoever made it.

Network budgets, the minimum gap and "never retry" advice belong to the card, across every
invoice and every attempt source (ours, the provider's, the customer's). The history follows
the card across a network renumbering: a payment method keeps its id when the network updates
the card, so its history includes every fingerprint it has had.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, false, or_, select, text
from sqlalchemy.orm import Session

from worker.billing.domain import Card
from worker.billing.models import (
    AttemptOutcome,
    Customer,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
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


def charged_card(session: Session, case: DunningCase) -> Card | None:
    """The card a retry of ``case`` charges, as far as we know: the customer's default (what
    the provider charges), else the card the invoice was last tried on; None if neither."""
    default = session.scalar(
        select(Customer.default_payment_method_id).where(Customer.id == case.customer_id)
    )
    if default is not None:
        return Card(payment_method_id=default)
    last = _last_tried(session, case.invoice_id)
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
    pm = session.scalar(select(PaymentMethod).where(PaymentMethod.provider_id == payment_method_id))
    if pm is None:
        return None
    return Card(pm.provider_id, pm.brand, pm.last4, pm.exp_month, pm.exp_year, pm.fingerprint)


def backup_cards(
    session: Session, case: DunningCase, *, failing: Card | None, now: datetime
) -> list[Card]:
    """The customer's other saved cards a backup retry may charge, newest first: still
    attached, not expired, and not the failing card under another id (same fingerprint)."""
    rows = session.scalars(
        select(PaymentMethod)
        .where(
            PaymentMethod.customer_id == case.customer_id,
            PaymentMethod.detached_at.is_(None),
        )
        .order_by(PaymentMethod.updated_at.desc(), PaymentMethod.id.desc())
    ).all()
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


def card_history(
    session: Session,
    invoice: Invoice,
    *,
    now: datetime,
    policy: Policy,
    payment_method_id: str | None = None,
) -> CardHistory:
    """Every attempt the networks count against the card the next charge will use (the given
    payment method, else the one this invoice was last tried on): ours, the provider's and
    the customer's, on any invoice, over the last 30 days."""
    newest = (PaymentAttempt.occurred_at.desc(), PaymentAttempt.id.desc())
    fingerprints: set[str | None] = set()
    if payment_method_id is None:
        last_tried = _last_tried(session, invoice.id)
        if last_tried is not None:
            fingerprints.add(last_tried.card_fingerprint)
            payment_method_id = last_tried.payment_method_id
    if payment_method_id is not None:
        fingerprints.update(
            session.scalars(
                select(PaymentAttempt.card_fingerprint)
                .where(PaymentAttempt.payment_method_id == payment_method_id)
                .distinct()
            )
        )
        fingerprints.add(
            session.scalar(
                select(PaymentMethod.fingerprint).where(
                    PaymentMethod.provider_id == payment_method_id
                )
            )
        )
    fingerprints.discard(None)
    same_card: list[ColumnElement[bool]] = [PaymentAttempt.card_fingerprint.in_(fingerprints)]
    if payment_method_id is not None:
        same_card.append(PaymentAttempt.payment_method_id == payment_method_id)
    attempts = session.scalars(
        select(PaymentAttempt)
        .where(or_(*same_card), PaymentAttempt.occurred_at > now - timedelta(days=30))
        .order_by(*newest)
    ).all()
    known_card = bool(fingerprints) or payment_method_id is not None
    blocked = _block(session, same_card, policy) if known_card else None
    methods = set(
        session.scalars(
            select(PaymentMethod.provider_id).where(PaymentMethod.fingerprint.in_(fingerprints))
        )
    ) | ({payment_method_id} if payment_method_id else set())
    reserved = _reserved(session, same_card, methods, invoice) if known_card else ()
    unsettled = (AttemptOutcome.SUCCEEDED, AttemptOutcome.PROCESSING)
    declines = [a for a in attempts if a.outcome not in unsettled]
    if fingerprints or payment_method_id is not None:
        last_decline = next(iter(declines), None)
    else:  # no card facts at all: the invoice's own latest decline still carries its advice
        last_decline = session.scalars(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.invoice_id == invoice.id,
                PaymentAttempt.outcome != AttemptOutcome.SUCCEEDED,
            )
            .order_by(*newest)
        ).first()
    return CardHistory(
        brand=next((a.card_brand for a in attempts if a.card_brand), None),
        declines=tuple((a.occurred_at, a.amount) for a in declines),
        last_attempt_at=max((a.occurred_at for a in attempts), default=None),
        network_advice_code=last_decline.network_advice_code if last_decline else None,
        last_declined_at=last_decline.occurred_at if last_decline else None,
        provider_next_attempt=invoice.next_payment_attempt,
        blocked=blocked,
        reserved=reserved,
    )


def _reserved(
    session: Session, same_card: list[ColumnElement[bool]], methods: set[str], invoice: Invoice
) -> tuple[datetime, ...]:
    """Other invoices' retries on this card that count as attempts already: charges going
    through right now (whatever their invoice), and the retries of older open invoices,
    planned or running, so the newer invoice yields, two never meet, and the oldest goes
    first."""
    on_card = select(PaymentAttempt.invoice_id).where(or_(*same_card))
    charging = and_(
        ScheduledAction.status == ActionStatus.CLAIMED, ScheduledAction.charging_at.is_not(None)
    )
    mine = session.scalar(select(DunningCase).where(DunningCase.invoice_id == invoice.id))
    waiting = (
        and_(
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            DunningCase.state.not_in(TERMINAL),
            or_(
                DunningCase.opened_at < mine.opened_at,
                and_(DunningCase.opened_at == mine.opened_at, DunningCase.id < mine.id),
            ),
        )
        if mine is not None
        else false()
    )
    rows = session.execute(
        select(
            ScheduledAction.status,
            ScheduledAction.due_at,
            ScheduledAction.claimed_at,
            ScheduledAction.charging_at,
        )
        .join(DunningCase, DunningCase.id == ScheduledAction.case_id)
        .where(
            ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
            DunningCase.invoice_id != invoice.id,
            # invoices tried on this card, and retries that name it (a backup card may have
            # no attempt on any of our invoices yet)
            or_(DunningCase.invoice_id.in_(on_card), ScheduledAction.payment_method.in_(methods)),
            or_(charging, waiting),
        )
    )
    return tuple(
        charging_at or ((claimed_at or due_at) if status is ActionStatus.CLAIMED else due_at)
        for status, due_at, claimed_at, charging_at in rows
    )


def _block(
    session: Session, same_card: list[ColumnElement[bool]], policy: Policy
) -> tuple[datetime, str] | None:
    """The longest-lasting "never retry" any decline on this card left, over its whole
    history (a fraud decline years ago still counts while the card is the same)."""
    advised = session.scalars(
        select(PaymentAttempt).where(
            or_(*same_card),
            PaymentAttempt.outcome != AttemptOutcome.SUCCEEDED,
            or_(
                PaymentAttempt.network_advice_code.is_not(None),
                PaymentAttempt.decline_code.is_not(None),
                PaymentAttempt.outcome_type == "blocked",
                PaymentAttempt.advice_code.is_not(None),
                PaymentAttempt.outcome_reason.is_not(None),
            ),
        )
    )
    blocks = [b for a in advised if (b := card_block(decline_of(a), a.occurred_at, policy))]
    return max(blocks, default=None, key=lambda b: b[0])
