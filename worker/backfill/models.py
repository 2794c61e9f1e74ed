"""Where a ``dunning backfill`` run stands: one cursor row per provider resource.

Owns the ``backfill_cursors`` table only; :mod:`worker.backfill.service` reads and advances
it, in the same transaction as the rows of each page, so a run that stops anywhere resumes
after the last page it committed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base


class BackfillResource(StrEnum):
    """What a backfill pages through, in this order (owners before what they own)."""

    CUSTOMERS = "customers"
    SUBSCRIPTIONS = "subscriptions"
    INVOICES = "invoices"


class BackfillCursor(Base):
    """How far the current run got through one resource. The three rows of a run share its
    ``since``; a run with another ``since``, or after a finished run, starts them over."""

    __tablename__ = "backfill_cursors"

    resource: Mapped[BackfillResource] = mapped_column(primary_key=True)
    since: Mapped[datetime | None]  # the run's --since (None: everything)
    last_id: Mapped[str | None] = mapped_column(Text)  # last object committed: starting_after
    finished: Mapped[bool] = mapped_column(default=False)
    pages: Mapped[int] = mapped_column(default=0)  # committed so far in this run, all attempts
    objects: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime]  # when the run began (the caller's clock)
    updated_at: Mapped[datetime]
