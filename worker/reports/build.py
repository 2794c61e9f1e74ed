"""The one query path behind every report format: a read-only transaction, the ledger as of
one instant, rows per period x segment x currency (:class:`~worker.reports.model.Report`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from worker.billing.mrr import MRR_RULE
from worker.db import read_only_session
from worker.ledger.movements import changes_as_of
from worker.ledger.periods import parse_month, periods
from worker.reports.model import SEGMENTS, Report, Summary
from worker.reports.recovery import recovery_rows
from worker.reports.retention import monthly_rows, retention_rows

KINDS = ("retention", "recovery")


def build_report(
    engine: Engine,
    kind: str,
    *,
    first: str,
    last: str,
    by: str = "month",
    segment: str | None = None,
    as_of: datetime,
) -> Report:
    """``kind`` over months ``first`` .. ``last`` (YYYY-MM, inclusive) as the ledger stood at
    ``as_of``. Raises ValueError for bad input (the CLI turns it into exit status 2)."""
    _check(kind, segment, as_of)
    with read_only_session(engine) as session:
        return _report(session, kind, first=first, last=last, by=by, segment=segment, as_of=as_of)


def build_summary(
    engine: Engine, *, first: str, last: str, by: str = "month", as_of: datetime
) -> Summary:
    """Both reports over months ``first`` .. ``last`` per ``by``, both over the whole range
    as one period, and retention by month when ``by`` is not (the headline figures), per
    currency: from one read-only transaction, so they show one state of the ledger."""
    _check("retention", None, as_of)
    with read_only_session(engine) as session:

        def report(kind: str, grouping: str) -> Report:
            return _report(
                session, kind, first=first, last=last, by=grouping, segment=None, as_of=as_of
            )

        retention = report("retention", by)
        return Summary(
            retention=retention,
            recovery=report("recovery", by),
            retention_range=report("retention", "range"),
            recovery_range=report("recovery", "range"),
            retention_by_month=retention if by == "month" else report("retention", "month"),
        )


def _check(kind: str, segment: str | None, as_of: datetime) -> None:
    if kind not in KINDS:
        msg = f"unknown report {kind!r}: expected one of {', '.join(KINDS)}"
        raise ValueError(msg)
    if segment is not None and segment not in SEGMENTS:
        msg = f"--segment {segment!r}: expected one of {', '.join(SEGMENTS)}"
        raise ValueError(msg)
    if as_of.tzinfo is None:
        msg = "--as-of needs a timezone (e.g. 2026-03-01T00:00:00Z)"
        raise ValueError(msg)


def _report(
    session: Session,
    kind: str,
    *,
    first: str,
    last: str,
    by: str,
    segment: str | None,
    as_of: datetime,
) -> Report:
    spans = periods(parse_month(first), parse_month(last), by)
    if kind == "retention" and by == "month" and segment in {None, "currency", "cohort"}:
        rows: list[Any] = monthly_rows(session, spans, segment, as_of)
        notes = [f"MRR rule: {MRR_RULE}; periods are UTC calendar months"]
    elif kind == "retention":
        rows = retention_rows(changes_as_of(session, as_of), spans, segment)
        notes = [f"MRR rule: {MRR_RULE}; periods are UTC calendar months"]
    else:
        rows = recovery_rows(session, spans, segment, as_of)
        notes = ["cases grouped by the period they opened in"]
    return Report(kind, as_of, by, segment, first, last, rows, notes)
