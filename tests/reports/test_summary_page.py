"""``dunning report summary``: the page a CFO reads, opened from its file in a real headless
Chromium. Headline figures per currency first, then the charts, then the tables; every chart
drawn with a size; the headline figures shown are those of the command's JSON form, which are
those of the ``--by range`` reports; nothing logged, thrown or fetched. A year in three
currencies (tests/support/finance_year.py) through the real command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator

from tests.support.browser import watched_page
from tests.support.finance_year import AS_OF, CURRENCIES, FIRST, LAST
from tests.support.processes import clean_env, dunning
from worker.money import format_money

RANGE = ["--from", FIRST, "--to", LAST, "--as-of", AS_OF.isoformat()]
MONEY = {"recovered_amount"}
FIGURES = (
    "recovered_amount",
    "recovery_rate_amount",
    "involuntary_share_of_churn",
    "nrr",
    "nrr_without_involuntary",
)
CHARTS = ("mrr-waterfall", "nrr-grr", "recovery-funnel", "time-to-recover")


def run(finance_db: str, cwd: Path, *args: str) -> str:
    result = dunning(clean_env(DUNNING_DATABASE_URL=finance_db), cwd, *args)
    assert result.returncode == 0, result.stderr
    assert f"as of {AS_OF.isoformat()}" in result.stderr
    return result.stdout


def box(locator: Locator) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not laid out"
    return dict(found)


@pytest.fixture(scope="module")
def summary(finance_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("summary")
    return dict(json.loads(run(finance_db, cwd, "report", "summary", *RANGE, "--format", "json")))


def test_headline_figures_are_the_whole_range_reports(
    finance_db: str, tmp_path: Path, summary: dict[str, Any]
) -> None:
    headline = {h["currency"]: h for h in summary["headline"]}
    assert list(headline) == sorted(CURRENCIES)
    by_range = {
        kind: {
            row["currency"]: row
            for row in json.loads(
                run(
                    finance_db,
                    tmp_path,
                    "report",
                    kind,
                    *RANGE,
                    "--by",
                    "range",
                    "--format",
                    "json",
                )
            )["rows"]
        }
        for kind in ("retention", "recovery")
    }
    monthly = json.loads(
        run(finance_db, tmp_path, "report", "retention", *RANGE, "--format", "json")
    )["rows"]
    for currency, figures in headline.items():
        retention, recovery = by_range["retention"][currency], by_range["recovery"][currency]
        assert retention["period"] == f"{FIRST}..{LAST}"
        assert figures["recovered_amount"] == recovery["recovered_amount"]
        assert figures["recovery_rate_amount"] == recovery["recovery_rate_amount"]
        assert figures["nrr"] == retention["nrr"]
        assert figures["nrr_without_involuntary"] == retention["nrr_without_involuntary"]
        # The involuntary share: every loss in the range, month by month.
        months = [r for r in monthly if r["currency"] == currency and r["segment"] is None]
        involuntary = sum(r["churn_involuntary"] + r["contraction_involuntary"] for r in months)
        voluntary = sum(r["churn_voluntary"] + r["contraction_voluntary"] for r in months)
        assert (figures["involuntary_loss"], figures["lost_mrr"]) == (
            involuntary,
            involuntary + voluntary,
        )
    # The year of tests/support/finance_year.py in EUR, to the cent: recovered €1,300,000.00
    # (the large invoice, by our retry) + 12 x €25,000.00 (the steady customer), of that and
    # €2,617.25 more (new2's and new3's invoices). Lost, month by month: the big customer's
    # downgrade from its upgraded price (€65,432.11 + €30,000.00), new1's cancellation
    # (€1,123.45), and for non-payment cus_two's second subscription (€2,000.00) and new2,
    # who joined during the year (€1,246.90): €3,246.90 of €99,802.46.
    eur = headline["eur"]
    assert (eur["recovered_amount"], eur["at_risk_amount"]) == (160_000_000, 160_261_725)
    assert (eur["recovery_rate_amount"], eur["involuntary_share_of_churn"]) == ("99.84", "3.25")
    assert (eur["lost_mrr"], eur["involuntary_loss"]) == (9_980_246, 324_690)
    # Every figure differs somewhere between currencies: none was read off the wrong one.
    assert len({h["nrr"] for h in headline.values()}) == len(CURRENCIES)


def test_the_page_shows_headline_charts_then_tables(
    finance_db: str, tmp_path: Path, browser: Browser, summary: dict[str, Any]
) -> None:
    run(finance_db, tmp_path, "report", "summary", *RANGE, "--format", "html", "--out", "p.html")
    shown = watched_page(browser)
    page = shown.page
    try:
        page.goto((tmp_path / "p.html").as_uri())

        # The headline: one card per currency, in the JSON's order, each figure as the JSON has it.
        cards = page.locator("#headline section[data-currency]")
        assert cards.count() == len(summary["headline"])
        for i, figures in enumerate(summary["headline"]):
            card = cards.nth(i)
            currency = figures["currency"]
            assert card.get_attribute("data-currency") == currency
            for key in FIGURES:
                value = figures[key]
                text = format_money(value, currency) if key in MONEY else f"{value}%"
                shown_figure = card.locator(f"[data-figure={key}]")
                assert shown_figure.is_visible()
                assert shown_figure.inner_text() == text, (currency, key)
        # The charts: each drawn with a size, two retention and two recovery per currency.
        charts = page.locator("svg[data-chart]")
        for name in CHARTS:
            assert page.locator(f"svg[data-chart={name}]").count() == len(CURRENCIES)
        for i in range(charts.count()):
            drawn = box(charts.nth(i))
            assert drawn["width"] > 0
            assert drawn["height"] > 0
        # The tables: retention, then recovery, per currency, each ending with the whole range.
        tables = page.locator("table")
        assert tables.count() == 2 * len(CURRENCIES)
        assert tables.first.locator("thead th").last.inner_text() == "whole range"
        # In that order down the page: headline, charts, tables.
        headline = box(page.locator("#headline"))
        first_chart, last_chart = box(charts.first), box(charts.last)
        assert headline["y"] + headline["height"] <= first_chart["y"]
        assert last_chart["y"] + last_chart["height"] <= box(tables.first)["y"]
        assert page.locator("script, img, link").count() == 0
        assert shown.problems == []
    finally:
        page.close()
