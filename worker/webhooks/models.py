"""The webhook inbox: every provider event we accepted, byte for byte, with its fate."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK


class InboxStatus(StrEnum):
    PENDING = "pending"  # stored, not yet handled
    PROCESSED = "processed"
    IGNORED = "ignored"  # a type we do not act on
    FAILED = "failed"  # unparseable or gave up; `error` says why, ops can replay


class InboxEvent(Base):
    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index(None, "status", "sweep_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the raw body as received (signature input)
    received_at: Mapped[datetime]
    status: Mapped[InboxStatus] = mapped_column(default=InboxStatus.PENDING)
    enqueue_count: Mapped[int] = mapped_column(default=0)  # times handed to the broker
    sweep_at: Mapped[datetime]  # when the sweeper hands a still-pending row out again
    error: Mapped[str | None] = mapped_column(Text)  # why it failed, or the last retry error
    processed_at: Mapped[datetime | None]


class RejectedDelivery(Base):
    """A correctly signed body that is not an event we can store (broken JSON, hostile
    nesting or numbers, an id a database cannot hold): answered 400 and kept here for
    inspection. Unsigned bodies are never kept (anyone could send them)."""

    __tablename__ = "rejected_deliveries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(index=True)
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int]  # bytes received
    excerpt: Mapped[str] = mapped_column(Text)  # the first 64 KiB, escaped to storable text
