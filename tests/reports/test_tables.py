"""``dunning report retention | recovery`` in a terminal of 100 and of 80 columns: periods as
columns and metrics as rows, split into several tables of consecutive periods when they do
not fit, and every number of the JSON form printed whole, in its own period's column, on a
line no wider than the terminal. A year in three currencies, amounts in the millions
(tests/support/finance_year.py), through the real command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.finance_year import AS_OF, CURRENCIES, FIRST, LAST
from tests.support.processes import clean_env, dunning
from worker.money import format_money

# What each line of a table shows: its label, the JSON key, how the value is written.
RETENTION = {
    "starting MRR": ("starting_mrr", "money"),
    "+ new": ("new", "money"),
    "+ reactivation": ("reactivation", "money"),
    "+ expansion": ("expansion", "money"),
    "- contraction, voluntary": ("contraction_voluntary", "money"),
    "- contraction, involuntary": ("contraction_involuntary", "money"),
    "- churn, voluntary": ("churn_voluntary", "money"),
    "- churn, involuntary": ("churn_involuntary", "money"),
    "= ending MRR": ("ending_mrr", "money"),
    "NRR": ("nrr", "percent"),
    "GRR": ("grr", "percent"),
    "involuntary churn rate": ("involuntary_churn_rate", "percent"),
    "NRR w/o involuntary loss": ("nrr_without_involuntary", "percent"),
}
RECOVERY = {
    "at risk, cases": ("at_risk_count", "count"),
    "at risk, amount": ("at_risk_amount", "money"),
    "recovered, cases": ("recovered_count", "count"),
    "recovered, amount": ("recovered_amount", "money"),
    "recovery rate, cases": ("recovery_rate_count", "percent"),
    "recovery rate, amount": ("recovery_rate_amount", "percent"),
    "MRR saved": ("mrr_saved", "money"),
    "churned, cases": ("churned_count", "count"),
    "churned MRR": ("churned_mrr", "money"),
    "median days to recover": ("median_days_to_recover", "count"),
    "p90 days to recover": ("p90_days_to_recover", "count"),
}


def written(value: Any, how: str, currency: str) -> str:
    if value is None:
        return "-"
    if how == "money":
        return format_money(value, currency)
    return f"{value}%" if how == "percent" else str(value)


def expected_cells(kind: str, rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """(currency, period, line label): cell, for every number of every JSON row."""
    cells = {}
    for row in rows:
        c, period = row["currency"], row["period"]
        lines = dict(RETENTION if kind == "retention" else RECOVERY)
        for method, found in row.get("recovered_by_method", {}).items():
            name = method.replace("_", " ")
            cells[(c, period, f"by {name}, cases")] = str(found["count"])
            cells[(c, period, f"by {name}, amount")] = format_money(found["amount"], c)
        for label, (key, how) in lines.items():
            cells[(c, period, label)] = written(row[key], how, c)
    return cells


def parse_tables(text: str) -> tuple[dict[tuple[str, str, str], str], dict[str, int]]:
    """The cells of every table in ``text`` by (currency, period, line label), and how many
    tables each currency took. A table: its heading (``EUR`` or ``EUR: 2025-07 .. 2025-10``),
    a header line of periods, a rule, one line per metric; columns at least two spaces apart."""
    cells: dict[tuple[str, str, str], str] = {}
    tables: dict[str, int] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        heading = re.fullmatch(r"(EUR|USD|JPY)(: .+)?", line)
        if not heading:
            continue
        currency = heading[1].lower()
        tables[currency] = tables.get(currency, 0) + 1
        assert lines[i + 1] == ""
        periods = lines[i + 2].split()
        assert set(lines[i + 3].strip()) == {"─"}
        for row in lines[i + 4 :]:
            if not row.strip():
                break
            label, *shown = re.split(r"\s{2,}", row.strip())
            assert len(shown) == len(periods), row  # one cell per period: nothing folded
            for period, cell in zip(periods, shown, strict=True):
                assert (currency, period, label) not in cells, "a period shown twice"
                cells[(currency, period, label)] = cell
    return cells, tables


@pytest.mark.parametrize("width", [100, 80])
@pytest.mark.parametrize("kind", ["retention", "recovery"])
def test_every_number_is_whole_in_its_column_within_the_width(
    finance_db: str, tmp_path: Path, kind: str, width: int
) -> None:
    env = clean_env(DUNNING_DATABASE_URL=finance_db, COLUMNS=str(width))
    args = ["report", kind, "--from", FIRST, "--to", LAST, "--as-of", AS_OF.isoformat()]
    as_json = dunning(env, tmp_path, *args, "--format", "json")
    table = dunning(env, tmp_path, *args)
    assert as_json.returncode == 0, as_json.stderr
    assert table.returncode == 0, table.stderr

    rows = json.loads(as_json.stdout)["rows"]
    assert {row["currency"] for row in rows} == set(CURRENCIES)
    assert len({row["period"] for row in rows}) == 12
    assert max(v for row in rows for v in row.values() if isinstance(v, int)) > 10**8
    wanted = expected_cells(kind, rows)
    assert max(len(line) for line in table.stdout.splitlines()) <= width
    assert "…" not in table.stdout
    shown, tables = parse_tables(table.stdout)
    assert {k: shown.get(k) for k in wanted} == wanted
    # Beyond the JSON's numbers, only zeros of a method that recovered in another period.
    for (currency, _, label), cell in shown.items() - wanted.items():
        assert label.startswith("by ")
        assert cell in {"0", format_money(0, currency)}
    # Twelve months do not fit in 100 columns: several tables per currency, one under the other.
    assert set(tables) == set(CURRENCIES)
    assert min(tables.values()) >= 2
    assert "as of 2026-07-01 00:00:00 UTC" in table.stdout
