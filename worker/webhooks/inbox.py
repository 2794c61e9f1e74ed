"""The inbox: every verified provider event stored once, and handed to a worker until it is
processed.

Owns the ``inbox_events`` rows' life: storing a delivery (unique per provider and event id),
the sweep that hands a row to the broker again while it stays pending (a minute after intake,
then backing off to hourly, never given up on), recording why a row failed, and finishing it.
What an event *means* is :mod:`worker.webhooks.handlers`; processing one is
:mod:`worker.webhooks.service`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worker.billing.payload import storable
from worker.redact import redact
from worker.webhooks.models import InboxEvent, InboxStatus, RejectedDelivery

SWEEP_AFTER = timedelta(minutes=1)  # an inbox row still pending this long is enqueued again
MAX_SWEEP_BACKOFF = timedelta(hours=1)
MAX_ID_LENGTH = 255  # Stripe's event ids are about 30 characters
REJECTED_EXCERPT = 64 * 1024
SWEEP_BATCH = 500  # at most this many rows handed out again per tick
PROCESSING_HOLD = timedelta(minutes=5)  # a task is killed after 90 s (worker.app)


class BadEventError(ValueError):
    """A body that is not a provider event (answered with 400)."""


@dataclass(frozen=True)
class Stored:
    inbox_id: int | None  # None: a duplicate delivery, already stored
    event_id: str


def parse_envelope(body: bytes) -> tuple[str, str]:
    """The event id and type from a raw body, or :class:`BadEventError`."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadEventError("malformed JSON") from None
    except RecursionError:
        raise BadEventError("JSON nested too deeply") from None
    except ValueError:  # e.g. an integer of more than 4,300 digits
        raise BadEventError("JSON number too large") from None
    if not isinstance(data, dict):
        raise BadEventError("not a JSON object")
    event_id, event_type = data.get("id"), data.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise BadEventError("missing event id")
    if not isinstance(event_type, str) or not event_type:
        raise BadEventError("missing event type")
    for name, value in (("id", event_id), ("type", event_type)):
        if len(value) > MAX_ID_LENGTH or not storable(value):
            raise BadEventError(f"event {name}: too long, or a NUL or an unpaired surrogate")
    return event_id, event_type


def keep_rejected(
    session: Session, *, provider: str, body: bytes, reason: str, now: datetime
) -> None:
    """Keep a signed body we answered 400 for inspection (its first 64 KiB, as text a
    database can hold)."""
    excerpt = body[:REJECTED_EXCERPT].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    session.add(
        RejectedDelivery(
            provider=provider, received_at=now, reason=reason, size=len(body), excerpt=excerpt
        )
    )


def store_event(session: Session, *, provider: str, body: bytes, now: datetime) -> Stored:
    """INSERT ... ON CONFLICT DO NOTHING on (provider, event_id)."""
    event_id, event_type = parse_envelope(body)
    values = _row(provider, event_id, event_type, body.decode("utf-8"), now)
    stmt = (
        _insert(session.get_bind().dialect.name)(InboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(InboxEvent.id)
    )
    inbox_id = session.scalar(stmt)
    return Stored(inbox_id, event_id)


@dataclass(frozen=True)
class Delivery:
    """A delivery's body as text and what :func:`parse_envelope` read from it."""

    event_id: str
    event_type: str
    payload: str


def parse_delivery(body: bytes) -> Delivery:
    """A body ready for :func:`store_events`, or :class:`BadEventError`."""
    event_id, event_type = parse_envelope(body)
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:  # JSON in UTF-16 or UTF-32: Stripe sends UTF-8
        raise BadEventError("not UTF-8") from None
    return Delivery(event_id, event_type, payload)


def store_events(
    conn: Connection, *, provider: str, deliveries: Sequence[Delivery], now: datetime
) -> dict[str, int]:
    """Many deliveries in one ``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING``, in
    the caller's transaction: the inbox ids of the rows it added, by event id. An event id
    already stored, or given twice, adds no second row."""
    rows, seen = [], set()
    for d in deliveries:
        if d.event_id not in seen:
            seen.add(d.event_id)
            rows.append(_row(provider, d.event_id, d.event_type, d.payload, now))
    # Executed with many parameter sets: SQLAlchemy compiles the statement once (cached)
    # and sends one multi-row INSERT per page of rows ("insertmanyvalues").
    stmt = (
        _insert(conn.dialect.name)(InboxEvent)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(InboxEvent.event_id, InboxEvent.id)
    )
    return {event_id: inbox_id for event_id, inbox_id in conn.execute(stmt, rows)}


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _row(
    provider: str, event_id: str, event_type: str, payload: str, now: datetime
) -> dict[str, Any]:
    return {
        "provider": provider,
        "event_id": event_id,
        "event_type": event_type,
        "payload": payload,
        "received_at": now,
        "sweep_at": now + SWEEP_AFTER,
        "status": InboxStatus.PENDING,
        "enqueue_count": 1,
    }


def sweep_inbox(session: Session, *, now: datetime, limit: int = SWEEP_BATCH) -> list[int]:
    """Inbox rows whose processing has not finished: hand them to the broker again.

    A row is swept a minute after intake, then 2, 4, ... minutes after each hand-off (at most
    an hour apart), and never given up on: Stripe already has its 200, so this row is the
    only copy. Rows stuck through a long outage show in ``/metrics`` (oldest pending age) and
    go through once workers, the database and the provider answer again.
    """
    rows = session.scalars(
        select(InboxEvent)
        .where(InboxEvent.status == InboxStatus.PENDING, InboxEvent.sweep_at <= now)
        .order_by(InboxEvent.sweep_at, InboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        row.enqueue_count += 1
        row.sweep_at = now + min(SWEEP_AFTER * 2 ** (row.enqueue_count - 1), MAX_SWEEP_BACKOFF)
    return [row.id for row in rows]


def hold(session: Session, inbox_id: int, *, now: datetime) -> None:
    """A worker has started on the row: the sweeper leaves it alone for a while, so a slow
    month-start queue does not fill up with copies of events already being processed (each
    copy would ask Stripe again)."""
    row = session.get(InboxEvent, inbox_id, with_for_update=True)
    if row is not None and row.status is InboxStatus.PENDING:
        row.sweep_at = max(row.sweep_at, now + PROCESSING_HOLD)


@dataclass(frozen=True)
class Claimed:
    event_type: str
    payload: str | None  # None when not asked for (the caller already read it)
    error: str | None  # what a failed earlier run noted (cleared once it is processed)


def claim(
    session: Session, inbox_id: int, *, now: datetime, payload: bool = True
) -> Claimed | None:
    """Take a pending row for processing in this transaction: one UPDATE that locks it and
    marks it processed (a rollback gives it back, pending); None when it is not pending (done
    already, or another worker finished it while this one waited for the lock). The outcome
    is ``processed`` unless :func:`settle` says otherwise before the commit."""
    row = session.execute(
        _claim_statement(payload), {"inbox_id": inbox_id, "claimed_at": now}
    ).one_or_none()
    if row is None:
        return None
    return Claimed(row.event_type, row.payload if payload else None, row.error)


@functools.cache
def _claim_statement(payload: bool) -> Any:
    # Core, not the ORM: no object of this row is in the session to keep in step.
    table = InboxEvent.__table__
    returned = [table.c.event_type, table.c.error]
    if payload:
        returned.append(table.c.payload)
    return (
        update(table)  # type: ignore[arg-type]
        .where(table.c.id == bindparam("inbox_id"), table.c.status == InboxStatus.PENDING)
        .values(status=InboxStatus.PROCESSED, processed_at=bindparam("claimed_at"))
        .returning(*returned)
    )


def hand_back(session: Session, inbox_id: int, *, now: datetime) -> None:
    """Undo :func:`claim` in the same transaction and :func:`hold` the row: the worker must
    ask the provider something first, outside any transaction."""
    hold_until = now + PROCESSING_HOLD
    session.execute(
        update(InboxEvent)
        .where(InboxEvent.id == inbox_id)
        .values(
            status=InboxStatus.PENDING,
            processed_at=None,
            sweep_at=case(
                (InboxEvent.sweep_at < hold_until, hold_until), else_=InboxEvent.sweep_at
            ),
        )
        .execution_options(synchronize_session=False)
    )


def settle(
    session: Session, inbox_id: int, claimed: Claimed, status: InboxStatus, error: str | None
) -> InboxStatus:
    """The outcome of a claimed row, when it is not a plain ``processed`` (which the claim
    wrote): ``ignored`` or ``failed`` with why, or processed after an earlier run's error."""
    if status is not InboxStatus.PROCESSED or error is not None or claimed.error is not None:
        session.execute(
            update(InboxEvent)
            .where(InboxEvent.id == inbox_id)
            .values(status=status, error=redact(error) if error else None)
            .execution_options(synchronize_session=False)
        )
    return status


def note_error(session: Session, inbox_id: int, *, error: str) -> None:
    """The task's retries ran out: keep the event pending (the sweeper tries again later,
    backing off) and record why, for ops. Nothing Stripe sent is ever dropped."""
    row = session.get(InboxEvent, inbox_id, with_for_update=True)
    if row is not None and row.status is InboxStatus.PENDING:
        row.error = redact(error)


def finish(
    row: InboxEvent, status: InboxStatus, now: datetime, error: str | None = None
) -> InboxStatus:
    row.status, row.error, row.processed_at = status, redact(error) if error else None, now
    return status


class NotRedrivableError(ValueError):
    pass


def redrive(session: Session, inbox_ids: list[int], *, now: datetime) -> list[InboxEvent]:
    """Ops: process these events again through the normal path. Each goes back to pending,
    due for the sweep now: the scheduler's next tick hands it to a worker, whose handlers
    are idempotent (a fact already applied is not applied twice). A processed event is
    refused (:class:`NotRedrivableError`); its error stays until the new outcome replaces it."""
    rows = session.scalars(
        select(InboxEvent).where(InboxEvent.id.in_(inbox_ids)).with_for_update()
    ).all()
    found = {row.id for row in rows}
    if missing := [i for i in inbox_ids if i not in found]:
        msg = f"no event {missing[0]} in the inbox"
        raise LookupError(msg)
    for row in rows:
        if row.status is InboxStatus.PROCESSED:
            msg = f"event {row.id} ({row.event_id}) was processed; nothing to re-drive"
            raise NotRedrivableError(msg)
    for row in rows:
        row.status, row.sweep_at, row.processed_at = InboxStatus.PENDING, now, None
    return list(rows)
