"""The summary page: one self-contained HTML page a CFO can read top to bottom (README,
"Finance reports"). Per currency, the headline figures of the whole range first; then the
retention and recovery charts; then both reports as tables, periods as columns and a last
column for the whole range.

Every number on it comes from one :class:`~worker.reports.model.Summary`, the object whose
``as_dict()`` is ``dunning report summary --format json``: the headline figures are the
summary's :meth:`~worker.reports.model.Headline.as_dict` values, formatted, never recomputed
here. Charts and template are the HTML report's (:mod:`worker.reports.html`): inline SVG and
CSS, no script, nothing fetched, autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.money import format_money
from worker.reports.html import chart_blocks, template
from worker.reports.layout import FIGURES, WHOLE_RANGE, Grid, grids, show
from worker.reports.model import Summary


@dataclass(frozen=True)
class Figure:
    key: str  # the headline's JSON key, the element's data-figure
    label: str
    value: str
    detail: str


def to_page(summary: Summary) -> str:
    """The summary as one HTML page: headline figures per currency, charts, tables."""
    retention, recovery = summary.retention, summary.recovery
    cards = [(h.currency.upper(), h.currency, _figures(h.as_dict())) for h in summary.headlines()]
    retention_blocks, retention_left = chart_blocks(retention)
    recovery_blocks, recovery_left = chart_blocks(recovery)
    charts = [(f"Retention, {heading}", shown) for heading, shown in retention_blocks]
    charts += [(f"Recovery, {heading}", shown) for heading, shown in recovery_blocks]
    span = f"{retention.first} to {retention.last}"
    span = retention.first if retention.first == retention.last else span
    return template("reports/summary.html.j2").render(
        title=f"Retention and recovery, {span}",
        span=span,
        by="trailing twelve months" if retention.by == "ttm" else f"by {retention.by}",
        as_of=f"{retention.as_of:%Y-%m-%d %H:%M:%S %Z}",
        as_of_iso=retention.as_of.isoformat(),
        notes=[*retention.notes, *recovery.notes],
        cards=cards,
        charts=charts,
        not_charted=retention_left + recovery_left,
        tables=[
            *_tables("Retention", grids("retention", retention.rows, summary.retention_range.rows)),
            *_tables("Recovery", grids("recovery", recovery.rows, summary.recovery_range.rows)),
        ],
        whole_range=WHOLE_RANGE,
    )


def _figures(values: dict[str, Any]) -> list[Figure]:
    c = values["currency"]

    def money(key: str) -> str:
        return format_money(values[key], c)

    details = {
        "recovered_amount": f"of {money('at_risk_amount')} in failed payments "
        f"({values['recovered_count']} of {values['at_risk_count']} cases)",
        "recovery_rate_amount": "recovered / failed, by amount",
        "involuntary_share_of_churn": f"{money('involuntary_loss')} of {money('lost_mrr')} "
        "MRR lost to churn and contraction",
        "nrr": f"{money('retained_mrr')} of {money('starting_mrr')} MRR kept by the "
        "customers of the start",
        "nrr_without_involuntary": f"with the {money('involuntary_loss')} lost to non-payment kept",
    }
    return [
        Figure(key, label, show(values[key], how, c), details[key]) for key, label, how in FIGURES
    ]


def _tables(kind: str, found: list[Grid]) -> list[tuple[str, Grid]]:
    return [(f"{kind}, {grid.heading}", grid) for grid in found]
