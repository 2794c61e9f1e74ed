"""Dunning cases, their append-only transition log, and the actions planned for them."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from worker.config import DeclineClass, RetryMode
from worker.db import Base, BigIntPK
from worker.dunning.state import DunningEvent, DunningState
from worker.ledger.models import RecoveryMethod


class ActionKind(StrEnum):
    RETRY_PAYMENT = "retry_payment"
    SEND_EMAIL = "send_email"
    FINAL_ACTION = "final_action"
    ACCESS_CHANGE = "access_change"  # the app's access level moves on (template: the level)
    NOTIFY_APP = "notify_app"  # one signed webhook to the app (key: its app_events row)


class ActionStatus(StrEnum):
    PLANNED = "planned"  # waiting for due_at
    CLAIMED = "claimed"  # taken by a scheduler tick and handed to the broker
    DONE = "done"
    CANCELLED = "cancelled"  # superseded or the case ended; `note` says why
    FAILED = "failed"  # gave up after retries; `note` says why


class PolicyVersion(Base):
    """Every policy a case was opened under, by digest: open cases keep theirs when ops
    change config/dunning.toml (only new cases get the new one)."""

    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(Text, primary_key=True)
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class DunningCase(Base):
    __tablename__ = "dunning_cases"
    __table_args__ = (UniqueConstraint("invoice_id"), Index(None, "state"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    state: Mapped[DunningState] = mapped_column(default=DunningState.OPEN)
    decline_code: Mapped[str | None] = mapped_column(Text)  # the latest failure's reason
    decline_class: Mapped[DeclineClass | None]
    retries_mode: Mapped[RetryMode]  # fixed when opened
    policy_version: Mapped[str] = mapped_column(Text)  # digest of the config it started with
    opened_at: Mapped[datetime]
    window_ends_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    recovered_method: Mapped[RecoveryMethod | None]
    updated_at: Mapped[datetime]
    # What the customer's app should allow while the case is open (grace, limited, blocked);
    # None once it no longer restricts anything (worker.dunning.access).
    access: Mapped[str | None] = mapped_column(Text)
    access_since: Mapped[datetime | None]
    # Ops pauses: when the current one began (None: not paused) and the total of the finished
    # ones. The window and the schedules run on the case's own clock, which stops while paused.
    paused_at: Mapped[datetime | None]
    paused_seconds: Mapped[int] = mapped_column(default=0, server_default="0")

    @property
    def schedule_start(self) -> datetime:
        """``opened_at`` moved on by every pause: retries and emails are timed from here."""
        return self.opened_at + timedelta(seconds=self.paused_seconds)


class CaseTransition(Base):
    """Append-only audit of every event a case saw, including self-transitions."""

    __tablename__ = "case_transitions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("dunning_cases.id"), index=True)
    at: Mapped[datetime]
    event: Mapped[DunningEvent]
    from_state: Mapped[DunningState]
    to_state: Mapped[DunningState]
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)  # provider event id, action key, "ops"


def _partial(name: str, *columns: str, where: str) -> Index:
    """An index over the rows ``where`` holds, on PostgreSQL and SQLite alike."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class ScheduledAction(Base):
    __tablename__ = "scheduled_actions"
    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index(None, "status", "due_at"),
        # The scheduler tick's claims (worker.dunning.scheduler): planned actions oldest due
        # first, and claims in flight (lost ones, the in-flight count). Only live rows, so a
        # tick costs the same at 10 k rows as at millions of finished ones.
        _partial("ix__scheduled_actions__planned_due", "due_at", "id", where="status = 'planned'"),
        _partial(
            "ix__scheduled_actions__claimed_at", "claimed_at", "id", where="status = 'claimed'"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # Emails outside a case (card expiring) have no case; every action has a customer.
    case_id: Mapped[int | None] = mapped_column(ForeignKey("dunning_cases.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[ActionKind]
    due_at: Mapped[datetime]
    status: Mapped[ActionStatus] = mapped_column(default=ActionStatus.PLANNED)
    idempotency_key: Mapped[str] = mapped_column(Text)  # also the provider Idempotency-Key
    template: Mapped[str | None] = mapped_column(Text)  # send_email only
    reason: Mapped[str] = mapped_column(Text)  # the rule that planned it (shown in timelines)
    # retry_payment only: what its success counts as (our retry, or a prompt retry after a
    # card update by the customer or the network)
    recovery_method: Mapped[RecoveryMethod | None]
    note: Mapped[str | None] = mapped_column(Text)  # outcome or why cancelled / failed
    created_at: Mapped[datetime]
    claimed_at: Mapped[datetime | None]
    claims: Mapped[int] = mapped_column(default=0)  # hand-outs (sets the transient back-off)
    # retry_payment only: when the check right before the charge let it go (every other check
    # on the card counts it as an attempt until its result is recorded) ...
    charging_at: Mapped[datetime | None]
    # ... and whether ops asked for it now, which waives our own spacing (the minimum gap, the
    # gap to the provider's retry), never a network rule.
    ops_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    # When it was first due, if a transient failure has put it back since (an email more
    # than emails.skip_overdue_after_hours past this is skipped, not sent late).
    first_due_at: Mapped[datetime | None]
    # The provider's payment method this action is about: the card a retry charges, the card
    # a card-expiring notice warns of.
    payment_method: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]


def new_action(**values: Any) -> ScheduledAction:
    """A new action with every optional column stated (None unless given): rows planned
    together then share one multi-row INSERT."""
    return ScheduledAction(**{**_UNSET_ACTION_COLUMNS, **values})


_UNSET_ACTION_COLUMNS: dict[str, Any] = dict.fromkeys(
    (
        "case_id",
        "template",
        "recovery_method",
        "note",
        "claimed_at",
        "charging_at",
        "first_due_at",
        "payment_method",
        "finished_at",
    )
)


class CardExpiryNotice(Base):
    """A card we warned about before it expires: one row per card and expiry month, and
    whether (and when, provider time) it was replaced or renewed in time."""

    __tablename__ = "card_expiry_notices"
    __table_args__ = (UniqueConstraint("payment_method", "expires"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    payment_method: Mapped[str] = mapped_column(Text)
    expires: Mapped[str] = mapped_column(Text)  # YYYY-MM, the card's expiry month
    first_planned_at: Mapped[datetime]
    replaced_at: Mapped[datetime | None]
    replaced_by: Mapped[str | None] = mapped_column(Text)  # customer | network


class AppEvent(Base):
    """One event for the customer's app (case.opened, access.limited, ...): its payload and
    the log of its delivery. The NOTIFY_APP action with the same key delivers it."""

    __tablename__ = "app_events"
    __table_args__ = (UniqueConstraint("event_id"), UniqueConstraint("dedupe_key"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text)  # evt_..., what the receiver dedupes on
    dedupe_key: Mapped[str] = mapped_column(Text)  # app:case:<id>:<type>
    type: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("dunning_cases.id"), index=True)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]  # when the fact happened
    attempts: Mapped[int] = mapped_column(default=0)
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]  # the receiver's HTTP status (None: no answer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class SchedulerTick(Base):
    """The scheduler's last tick (one row per beat name): when, and what it handed out.
    ``dunning status`` shows it; a beat that stopped shows as an old tick."""

    __tablename__ = "scheduler_ticks"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    at: Mapped[datetime]
    claimed: Mapped[int]  # due actions handed to workers
    swept: Mapped[int]  # pending events handed out again
