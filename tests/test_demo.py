"""``dunning demo`` on a bare environment: no variables, no config/ in the working directory.

One run (module fixture), several questions: the live month's pipeline, the account's history
(loaded by ``dunning backfill``), and the finance story the summary and the reports tell.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.support.browser import watched_page
from tests.support.processes import clean_env
from worker.money import format_money

LIVE = "2026-03"
LIVE_START = datetime(2026, 3, 1, 9, tzinfo=UTC)
HISTORY = [f"2025-{m:02d}" for m in range(3, 13)] + ["2026-01", "2026-02"]  # twelve months
HEADLINE = (
    "recovered_amount",
    "recovery_rate_amount",
    "involuntary_share_of_churn",
    "nrr",
    "nrr_without_involuntary",
)


@dataclass
class Demo:
    stdout: str
    out: Path
    folder: Path  # the working directory it ran in

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.out / "dunning.db")

    def json(self, name: str) -> Any:
        return json.loads((self.out / name).read_text(encoding="utf-8"))

    def rows(self, report: str, period: str) -> dict[str, dict[str, Any]]:
        """A report's rows for one month, by currency."""
        return {
            row["currency"]: row
            for row in self.json(f"{report}.json")["rows"]
            if row["period"] == period and row["segment"] is None
        }

    def summary_cell(self, label: str) -> str:
        found = re.search(rf"│ {re.escape(label)}\s*│ (.*?)\s*│", self.stdout)
        assert found is not None, f"no summary row {label!r}"
        return found[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("demo-run")
    out = folder / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "demo",
            "--customers",
            "40",
            "--seed",
            "11",
            "--out",
            str(out),
        ],
        env=clean_env(COLUMNS="250"),  # wide enough that no summary cell wraps
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return Demo(result.stdout, out, folder)


def test_demo_runs_the_pipeline_and_summarises(demo: Demo) -> None:
    assert "Recovery summary" in demo.stdout
    assert list(demo.folder.iterdir()) == [demo.out]  # nothing written outside its folder
    assert "involuntary churn" in demo.stdout
    with demo.db() as db:
        states = dict(db.execute("SELECT state, count(*) FROM dunning_cases GROUP BY state"))
        methods = {
            m
            for (m,) in db.execute(
                "SELECT DISTINCT recovered_method FROM dunning_cases WHERE state = 'recovered'"
            )
        }
        churn = db.execute(
            "SELECT count(*) FROM ledger_movements WHERE kind = 'churn_involuntary'"
        ).fetchone()[0]
        sent = db.execute("SELECT count(*) FROM notifications").fetchone()[0]
        notices = db.execute(
            "SELECT count(*) FROM notifications WHERE template = 'card_expiring'"
        ).fetchone()[0]
        inbox = dict(db.execute("SELECT status, count(*) FROM inbox_events GROUP BY status"))
    # A month is long enough for every case to end one way or the other.
    assert set(states) == {"recovered", "churned"}
    assert churn == states["churned"]
    assert "retry" in methods
    assert "backup_method" in methods  # an expired card, and another saved card paid
    assert notices > 0  # the daily scan warned of cards expiring this month
    languages = demo.summary_cell("emails by language")
    assert len(re.findall(r"[a-z_A-Z]+: \d+", languages)) >= 2
    assert "card-expiry notices sent" in demo.stdout
    assert inbox.get("pending", 0) == 0
    assert "failed" not in inbox
    emails = list((demo.out / "outbox").glob("*.eml"))
    assert len(emails) == sent > 0
    assert demo.summary_cell("emails sent").startswith(f"{sent} → ")


def test_the_history_came_through_the_backfill(demo: Demo) -> None:
    """Twelve months and more before the live month, read from the peer's API by ``dunning
    backfill``: no event of the live month reaches back before it."""
    with demo.db() as db:
        cursors = db.execute("SELECT resource, finished, objects FROM backfill_cursors").fetchall()
        first, backfilled = db.execute(
            "SELECT min(effective_at), count(*) FROM mrr_changes WHERE source LIKE 'backfill:%'"
        ).fetchone()
        from_events_before = db.execute(
            "SELECT count(*) FROM mrr_changes WHERE source NOT LIKE 'backfill:%' "
            "AND effective_at < ?",
            (LIVE_START.strftime("%Y-%m-%d %H:%M:%S"),),
        ).fetchone()[0]
        ended_for_non_payment = db.execute(
            "SELECT count(*) FROM mrr_changes WHERE source LIKE 'backfill:%:end' "
            "AND end_cause = 'involuntary'"
        ).fetchone()[0]
        cases_before = db.execute(
            "SELECT count(*) FROM dunning_cases WHERE opened_at < ?",
            (LIVE_START.strftime("%Y-%m-%d %H:%M:%S"),),
        ).fetchone()[0]
    assert {r for r, _, _ in cursors} == {"customers", "subscriptions", "invoices"}
    assert all(finished and objects > 0 for _, finished, objects in cursors)
    assert backfilled > 0
    assert datetime.fromisoformat(first).replace(tzinfo=UTC) < datetime(2025, 3, 1, tzinfo=UTC)
    assert from_events_before == 0
    assert ended_for_non_payment > 0  # Stripe's own retries ran out before we were installed
    assert cases_before == 0  # a backfill opens no case


def test_the_history_has_every_movement_in_several_currencies(demo: Demo) -> None:
    totals: dict[str, int] = {}
    currencies = set()
    for period in HISTORY:
        rows = demo.rows("retention", period)
        assert sum(row["starting_mrr"] for row in rows.values()) > 0, period
        currencies |= {c for c, row in rows.items() if row["starting_mrr"] > 0}
        for row in rows.values():
            for kind in (
                "new",
                "reactivation",
                "expansion",
                "contraction_voluntary",
                "churn_voluntary",
                "churn_involuntary",
            ):
                totals[kind] = totals.get(kind, 0) + row[kind]
    assert all(totals.values()), totals
    assert len(currencies) >= 3


def test_the_live_month_retention_row(demo: Demo) -> None:
    rows = demo.rows("retention", LIVE)
    assert len(rows) >= 3
    for currency, row in rows.items():
        assert row["starting_mrr"] > 0, currency
        assert row["nrr"] is not None, currency
        assert row["grr"] is not None, currency
        assert row["nrr_without_involuntary"] is not None, currency
        assert float(row["nrr_without_involuntary"]) >= float(row["nrr"]), currency
    assert sum(row["churn_involuntary"] for row in rows.values()) > 0
    involuntary = [row for row in rows.values() if row["churn_involuntary"]]
    assert all(float(r["nrr_without_involuntary"]) > float(r["nrr"]) for r in involuntary)
    assert sum(row["new"] for row in rows.values()) > 0  # sign-ups
    assert sum(row["expansion"] for row in rows.values()) > 0  # add-ons, seats
    assert sum(row["churn_voluntary"] for row in rows.values()) > 0


def test_the_summary_equals_the_reports(demo: Demo) -> None:
    """Per currency: the summary's involuntary churn and MRR saved (printed and JSON) are the
    live month's in the retention and recovery reports, and what the ledger booked."""
    retention, recovery = demo.rows("retention", LIVE), demo.rows("recovery", LIVE)
    summary = demo.json("summary.json")
    with demo.db() as db:
        booked = {
            (kind, currency): amount
            for kind, currency, amount in db.execute(
                "SELECT kind, currency, sum(amount) FROM ledger_movements "
                "WHERE occurred_at >= ? GROUP BY kind, currency",
                (LIVE_START.strftime("%Y-%m-%d %H:%M:%S"),),
            )
        }
    churned, saved = {}, {}
    for currency in retention.keys() | recovery.keys():
        kept = retention.get(currency, {})
        won = recovery.get(currency, {})
        loss = kept.get("churn_involuntary", 0) + kept.get("contraction_involuntary", 0)
        assert loss == won.get("churned_mrr", 0), currency
        assert loss == booked.get(("churn_involuntary", currency), 0), currency
        assert summary["involuntary_churn_mrr"].get(currency, 0) == loss, currency
        assert summary["mrr_saved"].get(currency, 0) == won.get("mrr_saved", 0), currency
        assert summary["starting_mrr"][currency] == kept["starting_mrr"], currency
        assert summary["nrr"][currency] == kept["nrr"], currency
        churned[currency], saved[currency] = loss, won.get("mrr_saved", 0)
    assert sum(churned.values()) > 0
    assert sum(saved.values()) > 0

    def printed(amounts: dict[str, int]) -> str:
        return ", ".join(format_money(v, c) for c, v in sorted(amounts.items()) if v)

    assert demo.summary_cell("involuntary churn (MRR)") == printed(churned)
    assert demo.summary_cell("MRR saved") == printed(saved)


def test_report_html_is_one_page_a_cfo_reads(demo: Demo, browser: Browser) -> None:
    """The demo's report.html in headless Chromium: the year's headline figures first (those
    of report.json), then the charts, each drawn with a size, then the tables; nothing logged,
    thrown or fetched."""
    report = demo.json("report.json")
    assert (report["from"], report["to"]) == (HISTORY[0], LIVE)
    shown = watched_page(browser)
    page = shown.page
    try:
        page.goto((demo.out / "report.html").as_uri())
        cards = page.locator("#headline section[data-currency]")
        assert cards.count() == len(report["headline"]) >= 3
        for i, figures in enumerate(report["headline"]):
            card, currency = cards.nth(i), figures["currency"]
            assert card.get_attribute("data-currency") == currency
            for key in HEADLINE:
                value = figures[key]
                if value is None:  # e.g. no churn at all: no share to show
                    text = "-"
                elif key == "recovered_amount":
                    text = format_money(value, currency)
                else:
                    text = f"{value}%"
                assert card.locator(f"[data-figure={key}]").inner_text() == text, (currency, key)
        charts = page.locator("svg[data-chart]")
        assert charts.count() >= 4 * len(report["headline"])
        for i in range(charts.count()):
            drawn = charts.nth(i).bounding_box()
            assert drawn is not None and drawn["width"] > 0 and drawn["height"] > 0
        tables = page.locator("table")
        assert tables.count() >= 2
        headline = page.locator("#headline").bounding_box()
        first_chart, last_chart = charts.first.bounding_box(), charts.last.bounding_box()
        first_table = tables.first.bounding_box()
        assert headline and first_chart and last_chart and first_table
        assert headline["y"] + headline["height"] <= first_chart["y"]
        assert last_chart["y"] + last_chart["height"] <= first_table["y"]
        assert shown.problems == []
    finally:
        page.close()
