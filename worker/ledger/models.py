"""Revenue ledger rows written by dunning: recoveries, involuntary churn, reactivations.

MRR movements from subscription history and the finance reports build on this table later.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK


class MovementKind(StrEnum):
    RECOVERY = "recovery"  # a dunning case recovered its invoice
    CHURN_INVOLUNTARY = "churn_involuntary"  # a case ended churned: the subscription's MRR
    REACTIVATION = "reactivation"  # paid after churning


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
    method: Mapped[str | None] = mapped_column(Text)  # recoveries: retry | card_update | ...
    occurred_at: Mapped[datetime]  # when it happened (provider / clock time)
    recorded_at: Mapped[datetime]  # when we wrote it (restatements are visible)
