"""Periods of MRR movements and reports: calendar months, quarters, trailing twelve months
and the whole range asked for, in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

GROUPINGS = ("month", "quarter", "ttm", "range")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive
    label: str


def parse_month(text: str) -> datetime:
    """``YYYY-MM`` as the first instant of that month, UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not match or not 1 <= int(match[2]) <= 12:
        msg = f"{text!r}: expected a month as YYYY-MM"
        raise ValueError(msg)
    return datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)


def add_months(month: datetime, count: int) -> datetime:
    index = month.year * 12 + month.month - 1 + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def periods(first: datetime, last: datetime, by: str) -> list[Period]:
    """The periods covering months ``first`` .. ``last`` (inclusive): each month; each
    calendar quarter touching them; per month, the twelve months ending with it; or one
    period from the start of ``first`` to the end of ``last`` (``range``)."""
    if last < first:
        msg = "--to is before --from"
        raise ValueError(msg)
    months = []
    month = first
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    if by == "month":
        return [Period(m, add_months(m, 1), f"{m:%Y-%m}") for m in months]
    if by == "ttm":
        return [Period(add_months(m, -11), add_months(m, 1), f"TTM {m:%Y-%m}") for m in months]
    if by == "quarter":
        starts = sorted({m.replace(month=(m.month - 1) // 3 * 3 + 1) for m in months})
        return [Period(q, add_months(q, 3), f"{q:%Y}-Q{(q.month - 1) // 3 + 1}") for q in starts]
    if by == "range":
        return [Period(first, add_months(last, 1), f"{first:%Y-%m}..{last:%Y-%m}")]
    msg = f"--by {by!r}: expected one of {', '.join(GROUPINGS)}"
    raise ValueError(msg)
