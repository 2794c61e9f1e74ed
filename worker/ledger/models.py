"""The revenue ledger: what dunning booked (recoveries, involuntary churn, reactivations) and
every subscription's MRR over time, from which the reports derive new, expansion,
contraction and churn movements (worker/reports)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK


class MovementKind(StrEnum):
    RECOVERY = "recovery"  # a dunning case recovered its invoice
    CHURN_INVOLUNTARY = "churn_involuntary"  # a case ended churned: the subscription's MRR
    REACTIVATION = "reactivation"  # paid after churning


class RecoveryMethod(StrEnum):
    """How a recovered invoice got paid (metrics.md, "Recovery")."""

    RETRY = "retry"  # our scheduled retry
    CARD_UPDATE = "card_update"  # our prompt retry after the customer changed card
    NETWORK_UPDATE = "network_update"  # our prompt retry after the network updated the card
    PROVIDER = "provider"  # the provider's own retry (observe mode)
    CUSTOMER = "customer"  # paid another way, out of band included
    BACKUP_METHOD = "backup_method"  # our retry on another saved card of the customer


class LedgerMovement(Base):
    __tablename__ = "ledger_movements"
    __table_args__ = (UniqueConstraint("dedupe_key"), Index(None, "kind", "occurred_at"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(Text)
    kind: Mapped[MovementKind]
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("dunning_cases.id"))
    amount: Mapped[int]  # minor units
    currency: Mapped[str] = mapped_column(Text)
    method: Mapped[RecoveryMethod | None]  # recoveries only
    occurred_at: Mapped[datetime]  # when it happened (provider / clock time)
    recorded_at: Mapped[datetime]  # when we wrote it (restatements are visible)


class EndCause(StrEnum):
    INVOLUNTARY = "involuntary"  # non-payment: provider reason payment_failed,
    # incomplete_expired, or our final action after the dunning window
    VOLUNTARY = "voluntary"  # everything else


class MrrChange(Base):
    """A subscription's MRR from ``effective_at`` on (provider time), append-only.

    MRR of a subscription at *t*, as known at *T*: the row with the latest ``effective_at`` <=
    *t* (ties: the later row) among rows with ``recorded_at`` <= *T*. Late and out-of-order
    events simply land in the past; nothing is updated, so any earlier view can be rebuilt
    exactly (``--as-of``). One row per subscription and source (an event id, a backfill, our
    final action): a duplicate delivery adds nothing.
    """

    __tablename__ = "mrr_changes"
    __table_args__ = (
        UniqueConstraint("subscription_id", "source"),
        Index(None, "customer_id", "currency", "subscription_id", "effective_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(Text)
    effective_at: Mapped[datetime]
    # minor units, net of discounts active at effective_at (BIGINT: 21M IDR overflows INT)
    mrr: Mapped[int] = mapped_column(BigInteger)
    # A repeating discount that runs out changes MRR with no event: when, and to what.
    discount_ends_at: Mapped[datetime | None]
    mrr_after_discount: Mapped[int | None] = mapped_column(BigInteger)
    ended: Mapped[bool] = mapped_column(default=False)
    end_cause: Mapped[EndCause | None]
    plan: Mapped[str | None] = mapped_column(Text)  # segment attributes of this state
    interval: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime]  # our clock when written: what --as-of filters on


class MrrMovementKind(StrEnum):
    NEW = "new"
    REACTIVATION = "reactivation"
    EXPANSION = "expansion"
    CONTRACTION_VOLUNTARY = "contraction_voluntary"
    CONTRACTION_INVOLUNTARY = "contraction_involuntary"
    CHURN_VOLUNTARY = "churn_voluntary"
    CHURN_INVOLUNTARY = "churn_involuntary"


class MrrMovement(Base):
    """A customer's MRR movement in one calendar month (UTC), per currency: the monthly
    ledger the retention report sums. Derived from ``mrr_changes`` by the same engine the
    report uses, append-only: when late facts change a month, a correcting row (a delta,
    possibly negative) is added with the time it was learned, so ``recorded_at`` <= *T*
    gives the ledger exactly as it stood at *T*."""

    __tablename__ = "mrr_movements"
    __table_args__ = (Index(None, "customer_id", "month"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(Text)
    month: Mapped[datetime]  # first instant of the month, UTC
    kind: Mapped[MrrMovementKind]
    cohort: Mapped[str] = mapped_column(Text)  # YYYY-MM of the customer's first MRR
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units; a correction may be < 0
    recorded_at: Mapped[datetime]
