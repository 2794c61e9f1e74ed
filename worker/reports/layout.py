"""Reports as finance reads them: one grid per segment x currency, its periods as columns and
its metrics as rows (a waterfall reads down a column: starting MRR, each movement, ending MRR).
The terminal table (:func:`worker.reports.render.to_table`) and the summary page
(:mod:`worker.reports.page`) lay out the same grids. Cells are the rows' own ``as_dict()``
values, formatted whole: money through :func:`worker.money.format_money`, percents as
``"41.88%"``, counts and days as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.money import format_money
from worker.reports.model import RECOVERY_METHODS, RecoveryRow, Report, RetentionRow, Summary

MISSING = "-"  # no row for that period (nothing at risk, no MRR), or a ratio over zero
WHOLE_RANGE = "whole range"  # the heading of the column of rows given as ``whole``

# (label, key in the row's as_dict(), how to show it)
_RETENTION = (
    ("starting MRR", "starting_mrr", "money"),
    ("+ new", "new", "money"),
    ("+ reactivation", "reactivation", "money"),
    ("+ expansion", "expansion", "money"),
    ("- contraction, voluntary", "contraction_voluntary", "money"),
    ("- contraction, involuntary", "contraction_involuntary", "money"),
    ("- churn, voluntary", "churn_voluntary", "money"),
    ("- churn, involuntary", "churn_involuntary", "money"),
    ("= ending MRR", "ending_mrr", "money"),
    ("NRR", "nrr", "percent"),
    ("GRR", "grr", "percent"),
    ("involuntary churn rate", "involuntary_churn_rate", "percent"),
    ("NRR w/o involuntary loss", "nrr_without_involuntary", "percent"),
)
_RECOVERY_HEAD = (
    ("at risk, cases", "at_risk_count", "count"),
    ("at risk, amount", "at_risk_amount", "money"),
    ("recovered, cases", "recovered_count", "count"),
    ("recovered, amount", "recovered_amount", "money"),
)
_RECOVERY_TAIL = (
    ("recovery rate, cases", "recovery_rate_count", "percent"),
    ("recovery rate, amount", "recovery_rate_amount", "percent"),
    ("MRR saved", "mrr_saved", "money"),
    ("churned, cases", "churned_count", "count"),
    ("churned MRR", "churned_mrr", "money"),
    ("median days to recover", "median_days_to_recover", "text"),
    ("p90 days to recover", "p90_days_to_recover", "text"),
)


# The headline figures, in order: (key in Headline.as_dict(), label, how to show it).
FIGURES = (
    ("recovered_amount", "Recovered revenue", "money"),
    ("recovery_rate_amount", "Recovery rate, by amount", "percent"),
    ("involuntary_share_of_churn", "Involuntary share of churn", "percent"),
    ("nrr", "NRR", "percent"),
    ("nrr_without_involuntary", "NRR without involuntary loss", "percent"),
)


@dataclass(frozen=True)
class Grid:
    """One segment x currency: a heading per period, and per metric its label and one cell
    per period."""

    currency: str
    segment: str | None
    periods: list[str]
    lines: list[tuple[str, list[str]]]

    @property
    def heading(self) -> str:
        code = self.currency.upper()
        return code if self.segment is None else f"{code}, {self.segment}"


def grids(
    kind: str,
    rows: Sequence[RetentionRow | RecoveryRow],
    whole: Sequence[RetentionRow | RecoveryRow] = (),
) -> list[Grid]:
    """The grids of ``rows`` (all of one report ``kind``), by segment then currency. Every grid
    of a report has the same periods, in time order, so they read side by side; rows of the
    same report over the whole range as one period (``whole``), if given, make a last column."""
    order: dict[str, tuple[Any, ...]] = {}
    groups: dict[tuple[str | None, str], dict[str, dict[str, Any]]] = {}
    for last, batch in ((False, rows), (True, whole)):
        for row in batch:
            label = WHOLE_RANGE if last else row.period
            order.setdefault(label, (last, row.period_start, row.period_end, label))
            groups.setdefault((row.segment, row.currency), {})[label] = row.as_dict()
    periods = sorted(order, key=order.__getitem__)
    found = []
    for (segment, currency), by_period in sorted(groups.items(), key=_group_order):
        cells = [by_period.get(p) for p in periods]
        lines = [
            (label, [_cell(values, key, how, currency) for values in cells])
            for label, key, how in _metrics(kind, cells)
        ]
        found.append(Grid(currency, segment, periods, lines))
    return found


def report_grids(report: Report) -> list[Grid]:
    return grids(report.kind, report.rows)


def headline_grid(summary: Summary) -> Grid:
    """The headline figures with the currencies as columns."""
    found = [h.as_dict() for h in summary.headlines()]
    lines = [
        (label, [show(values[key], how, values["currency"]) for values in found])
        for key, label, how in FIGURES
    ]
    return Grid("", None, [values["currency"].upper() for values in found], lines)


def show(value: Any, how: str, currency: str) -> str:
    """One value as tables and pages show it: money whole (``€1,234,567.89``), percents as
    ``41.88%``, counts and days as they are; None (a ratio over zero) as a dash."""
    if value is None:
        return MISSING
    if how == "money":
        return format_money(value, currency)
    if how == "percent":
        return f"{value}%"
    return str(value)


def _group_order(item: tuple[tuple[str | None, str], Any]) -> tuple[str, str]:
    (segment, currency), _ = item
    return (segment or "", currency)


def _metrics(kind: str, cells: list[dict[str, Any] | None]) -> list[tuple[str, str, str]]:
    """The metric lines of a grid: for recovery, a pair of lines (cases, amount) per method that
    recovered anything in it, known methods first."""
    if kind == "retention":
        return list(_RETENTION)
    used = {m for d in cells if d for m in d["recovered_by_method"]}
    methods = [m for m in RECOVERY_METHODS if m in used] + sorted(used - set(RECOVERY_METHODS))
    by_method = [
        (f"  by {m.replace('_', ' ')}, {what}", f"{m}.{what}", how)
        for m in methods
        for what, how in (("cases", "count"), ("amount", "money"))
    ]
    return [*_RECOVERY_HEAD, *by_method, *_RECOVERY_TAIL]


def _cell(values: dict[str, Any] | None, key: str, how: str, currency: str) -> str:
    if values is None:
        return MISSING
    if "." in key:  # a method's count or amount
        method, what = key.split(".")
        found = values["recovered_by_method"].get(method, {"count": 0, "amount": 0})
        value = found["count" if what == "cases" else "amount"]
    else:
        value = values[key]
    return show(value, how, currency)
