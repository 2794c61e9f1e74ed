"""The HTML report, rendered in a real headless Chromium: the charts are drawn, nothing is
fetched, user data stays text. The rows are made by hand: this is about rendering, the numbers
are tested elsewhere.

Chromium is Debian's package (``make browser``), driven through Playwright: Playwright's own
browser download is not reachable from CI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from fractions import Fraction
from html.parser import HTMLParser

import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import Rendered, watched_page
from worker.ledger.periods import Period, parse_month, periods
from worker.reports.html import MAX_BLOCKS, MAX_DAYS, MISSING, to_html
from worker.reports.model import (
    RECOVERY_COLUMNS,
    RETENTION_COLUMNS,
    RecoveryRow,
    Report,
    RetentionRow,
)

AS_OF = datetime(2025, 7, 1, 6, 30, tzinfo=UTC)
AS_OF_TEXT = "2025-07-01 06:30:00 UTC"
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
MONTHS = periods(parse_month("2025-01"), parse_month("2025-03"), "month")
HUGE = 2**63 - 1  # the largest amount PostgreSQL's bigint holds


def retention_rows(
    currency: str, segment: str | None, start: int, **moves: int
) -> list[RetentionRow]:
    """One row per month of MONTHS, each starting where the one before ended."""
    rows = []
    for period in MONTHS:
        row = RetentionRow(
            period.label, period.start, period.end, segment, currency, starting_mrr=start, **moves
        )
        row.ending_mrr = start = row.cohort_ending + row.new + row.reactivation
        rows.append(row)
    return rows


def recovery_row(
    period: Period, currency: str, segment: str | None, **values: object
) -> RecoveryRow:
    defaults: dict[str, object] = {
        "at_risk_count": 10,
        "at_risk_amount": 100_000,
        "recovered_count": 6,
        "recovered_amount": 60_000,
        "by_method": {"retry": [3, 30_000], "card_update": [2, 20_000]},
        "mrr_saved": 40_000,
        "churned_count": 2,
        "churned_mrr": 15_000,
        "days_to_recover": [Fraction(k, 2) for k in range(1, 13)],
    }
    return RecoveryRow(
        period.label, period.start, period.end, segment, currency, **(defaults | values)
    )


def report(kind: str, rows: list[RetentionRow] | list[RecoveryRow], **fields: object) -> Report:
    defaults: dict[str, object] = {"by": "month", "segment": "plan", "notes": []}
    return Report(kind, AS_OF, first="2025-01", last="2025-03", rows=rows, **(defaults | fields))


def retention_report() -> Report:
    zero_start = retention_rows("gbp", "Starter", 0, new=5_000)  # NRR undefined in month one
    rows = [
        *retention_rows("eur", "Pro", 1_000_000, new=80_000, expansion=40_000,
                        contraction_voluntary=15_000, contraction_involuntary=8_000,
                        churn_voluntary=30_000, churn_involuntary=22_000),
        *retention_rows("usd", SCRIPT, 500_000, new=10_000, churn_involuntary=5_000),
        *retention_rows("usd", IMG, 200_000, reactivation=3_000),
        *zero_start,
    ]  # fmt: skip
    return report("retention", rows, notes=[f"note with markup {SCRIPT}"])


def recovery_report() -> Report:
    rows = [recovery_row(p, c, s) for c, s in (("eur", "Pro"), ("usd", SCRIPT)) for p in MONTHS]
    return report("recovery", rows)


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture
def render(browser: Browser) -> Iterator[Callable[[str], Rendered]]:
    pages: list[Page] = []

    def load(html: str) -> Rendered:
        shown = watched_page(browser)
        pages.append(shown.page)
        shown.page.set_content(html)
        return shown

    yield load
    for page in pages:
        page.close()


def assert_charts_drawn(page: Page, name: str, count: int, shapes: str) -> None:
    """``count`` charts called ``name`` are laid out with a size, and each paints ``shapes``
    (a CSS selector) with a non-empty box in its own SVG layout."""
    charts = page.locator(f"svg[data-chart={name}]")
    assert charts.count() == count
    for i in range(count):
        chart = charts.nth(i)
        box = chart.bounding_box()
        assert box is not None
        assert box["width"] > 0
        assert box["height"] > 0
        assert chart.get_attribute("aria-label")
        assert chart.locator(":scope > title").count() == 1
        painted = chart.evaluate(
            "(svg, selector) => [...svg.querySelectorAll(selector)]"
            ".filter(s => { const b = s.getBBox(); return b.width > 0 || b.height > 0 }).length",
            shapes,
        )
        assert painted > 0, f"{name} #{i} paints no {shapes}"


def test_retention_charts_are_drawn_in_a_browser(render: Callable[[str], Rendered]) -> None:
    shown = render(to_html(retention_report()))

    assert shown.problems == []
    assert_charts_drawn(shown.page, "mrr-waterfall", 4, "rect")
    assert_charts_drawn(shown.page, "nrr-grr", 4, "polyline")
    assert shown.page.get_by_text(AS_OF_TEXT, exact=True).is_visible()
    body = shown.page.inner_text("body")
    assert SCRIPT in body  # shown as text, so escaped: the dialog handler never fired
    assert IMG in body
    assert shown.page.locator("script, img").count() == 0


def test_recovery_charts_are_drawn_in_a_browser(render: Callable[[str], Rendered]) -> None:
    shown = render(to_html(recovery_report()))

    assert shown.problems == []
    assert_charts_drawn(shown.page, "recovery-funnel", 2, "rect")
    assert_charts_drawn(shown.page, "time-to-recover", 2, "rect")
    histogram = shown.page.locator("svg[data-chart=time-to-recover]").first
    # 36 cases of 0.5 .. 6 days: the median is 3.25 days, p90 the 33rd value, 5.5 days.
    assert histogram.get_by_text("median 3.25 d").is_visible()
    assert histogram.get_by_text("p90 5.50 d").is_visible()
    assert shown.page.get_by_text(AS_OF_TEXT, exact=True).is_visible()


def test_no_rows_says_so_instead_of_empty_charts(render: Callable[[str], Rendered]) -> None:
    for kind in ("retention", "recovery"):
        shown = render(to_html(report(kind, [])))

        assert shown.problems == []
        assert shown.page.get_by_text("No data for this range.").is_visible()
        assert shown.page.get_by_text(AS_OF_TEXT, exact=True).is_visible()
        assert shown.page.locator("svg, table").count() == 0


DEGENERATE = {
    "all zero": report("retention", retention_rows("eur", None, 0)),
    "negative movements": report(
        "retention",
        retention_rows("eur", None, -5_000, new=-3_000, expansion=-1, churn_voluntary=-9),
    ),
    "single period": report("retention", retention_rows("jpy", "x", 1_000, new=5)[:1]),
    "huge amounts": report(
        "retention",
        retention_rows("usd", None, HUGE // 4, new=HUGE // 8, churn_involuntary=HUGE // 8),
    ),
    "recovery zeros": report(
        "recovery",
        [recovery_row(MONTHS[0], "eur", None, at_risk_count=0, at_risk_amount=0, recovered_count=0,
                      recovered_amount=0, by_method={}, days_to_recover=[])],
    ),
    "recovery negative and huge": report(
        "recovery",
        [recovery_row(p, "eur", None, at_risk_amount=-5, recovered_amount=HUGE,
                      by_method={"retry": [1, -7], "mystery": [2, HUGE // 2]},
                      days_to_recover=[Fraction(-3), Fraction(10**9), Fraction(1, 3)])
         for p in MONTHS],
        by="ttm",
    ),
}  # fmt: skip


class _SvgAttributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.values: list[tuple[str, str, str]] = []  # tag, attribute, value

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside += tag == "svg"
        if self.inside:
            self.values += [(tag, name, value or "") for name, value in attrs]

    def handle_endtag(self, tag: str) -> None:
        self.inside -= tag == "svg"


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_values_give_finite_geometry(
    case: str, render: Callable[[str], Rendered]
) -> None:
    html = to_html(DEGENERATE[case])
    parser = _SvgAttributes()
    parser.feed(html)

    assert parser.values
    for tag, name, value in parser.values:
        assert not re.search(r"nan|inf", value, re.IGNORECASE), (tag, name, value)
        if name in {"width", "height", "r"}:
            assert float(value) >= 0, (tag, name, value)
    # Chromium reports any invalid SVG attribute value (negative length, NaN) as a console error.
    assert render(html).problems == []


def test_table_lists_every_row_and_column() -> None:
    retention, recovery = retention_report(), recovery_report()

    for built, columns in ((retention, RETENTION_COLUMNS), (recovery, RECOVERY_COLUMNS)):
        html = to_html(built)
        assert len(re.findall(r"<th[ >]", html)) == len(columns)
        assert html.count("<tr>") == len(built.rows) + 1
    html = to_html(retention)
    assert "€10,000.00" in html  # money, via worker.money.format_money
    assert "92.50%" in html  # GRR of the first EUR month: (1,000,000 - 23,000 - 52,000) / 1M
    assert f'<td class="num">{MISSING}</td>' in html  # the GBP segment's first NRR: no starting MRR


def test_user_data_is_escaped() -> None:
    html = to_html(retention_report())

    assert SCRIPT not in html
    assert IMG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html


def test_combinations_past_the_cap_are_counted_not_charted() -> None:
    rows = [r for n in range(MAX_BLOCKS + 3) for r in retention_rows("eur", f"plan {n}", 100)]
    html = to_html(report("retention", rows))

    assert html.count('data-chart="mrr-waterfall"') == MAX_BLOCKS
    assert "3 more currency and segment combinations are not charted" in html
    assert html.count("<tr>") == len(rows) + 1


def test_trailing_windows_chart_each_recovery_once() -> None:
    days = [[Fraction(1)], [Fraction(1), Fraction(2)], [Fraction(2), Fraction(MAX_DAYS * 2)]]
    rows = [
        recovery_row(p, "eur", None, days_to_recover=d) for p, d in zip(MONTHS, days, strict=True)
    ]
    html = to_html(report("recovery", rows, by="ttm"))

    assert "2 recovered cases, in the last window only (2025-03)" in html
    assert f"{MAX_DAYS} days or more: 1 cases" in html
