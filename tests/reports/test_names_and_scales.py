"""Tables and the summary page print segment names as stored (never as rich markup or emoji
codes) and amounts to the minor unit Stripe keeps (two decimals for HUF, ISK, IQD), so the
cells equal the JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.ledger.periods import parse_month, periods
from worker.reports.model import RecoveryRow, Report, RetentionRow, Summary
from worker.reports.page import to_page
from worker.reports.render import to_table

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)


def _retention(segment: str | None, currency: str, amount: int, by: str = "month") -> Report:
    spans = periods(parse_month("2026-01"), parse_month("2026-02"), by)
    rows = [
        RetentionRow(
            p.label, p.start, p.end, segment, currency, starting_mrr=amount, ending_mrr=amount
        )
        for p in spans
    ]
    return Report("retention", AS_OF, by, "plan" if segment else None, "2026-01", "2026-02", rows)


@pytest.mark.parametrize("plan", ["pro [annual]", "gold[/]", "team:100:"])
def test_a_plan_id_is_printed_as_it_is(plan: str) -> None:
    # legacy Stripe plan ids are chosen by the merchant: rich must not read them as markup
    text = to_table(_retention(plan, "usd", 4900), 100)
    assert f"USD, {plan}" in text


@pytest.mark.parametrize(
    ("currency", "minor", "whole"),
    [("huf", 833333, "8,333.33"), ("isk", 12345, "123.45"), ("iqd", 1234, "12.34")],
)
def test_amounts_are_shown_to_the_minor_unit(currency: str, minor: int, whole: str) -> None:
    table = to_table(_retention(None, currency, minor), 100)
    assert whole in table
    spans = periods(parse_month("2026-01"), parse_month("2026-02"), "range")
    recovered = RecoveryRow(
        spans[0].label,
        spans[0].start,
        spans[0].end,
        None,
        currency,
        at_risk_count=1,
        at_risk_amount=minor,
        recovered_count=1,
        recovered_amount=minor,
    )
    rec = Report("recovery", AS_OF, "range", None, "2026-01", "2026-02", [recovered])
    monthly = _retention(None, currency, minor)
    summary = Summary(monthly, rec, _retention(None, currency, minor, "range"), rec, monthly)
    assert summary.as_dict()["headline"][0]["recovered_amount"] == minor
    assert whole in to_page(summary)  # the headline card equals the JSON
