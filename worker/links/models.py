"""The ``update_links`` table: one row per email that carries a card-update link."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigIntPK


class UpdateLink(Base):
    __tablename__ = "update_links"
    __table_args__ = (UniqueConstraint("link_id"), UniqueConstraint("issued_for"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    link_id: Mapped[str] = mapped_column(Text)  # random; the only thing the URL names
    # The email's dedupe key: sending that email again carries the same link.
    issued_for: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    first_opened_at: Mapped[datetime | None]
    open_count: Mapped[int] = mapped_column(default=0)
    revoked_at: Mapped[datetime | None]
