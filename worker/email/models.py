"""The email outbox: one row per email we decided to send, unique per case and step."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK


class NotificationStatus(StrEnum):
    SENDING = "sending"  # row written, SMTP hand-off not yet confirmed
    SENT = "sent"
    FAILED = "failed"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("dedupe_key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(Text)  # e.g. "case:12:reminder:3d"
    case_id: Mapped[int | None] = mapped_column(ForeignKey("dunning_cases.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    template: Mapped[str] = mapped_column(Text)
    to_masked: Mapped[str] = mapped_column(Text)  # never the full address
    status: Mapped[NotificationStatus]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    # When the current hand-off started: a twin task finding the row 'sending' since less
    # than SENDING_HOLD ago leaves the send to it (worker.email.service).
    sending_since: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
