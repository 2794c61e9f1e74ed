"""Report formats: terminal tables (periods as columns, metrics as rows), CSV with a fixed
column list, JSON, and HTML. All of them render the same
:class:`~worker.reports.model.Report`; a :class:`~worker.reports.model.Summary` renders as
tables, JSON or the summary page."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from worker.reports.layout import Grid, headline_grid, report_grids
from worker.reports.model import (
    RECOVERY_COLUMNS,
    RETENTION_COLUMNS,
    RecoveryRow,
    Report,
    Summary,
)

FORMATS = ("table", "csv", "json", "html")
SUMMARY_FORMATS = ("table", "json", "html")


def render(report: Report, fmt: str) -> str:
    match fmt:
        case "json":
            return json.dumps(report.as_dict(), indent=2) + "\n"
        case "csv":
            return to_csv(report)
        case "table":
            return to_table(report)
        case "html":
            from worker.reports.html import to_html  # html pulls in Jinja: load it on demand

            return to_html(report)
    msg = f"--format {fmt!r}: expected one of {', '.join(FORMATS)}"
    raise ValueError(msg)


def to_csv(report: Report) -> str:
    """One header line, then one line per row; the columns are fixed (README, "Reports"):
    ``as_of`` first, so a file keeps the view it shows."""
    columns = RETENTION_COLUMNS if report.kind == "retention" else RECOVERY_COLUMNS
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=("as_of", *columns), lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        flat = row.csv_dict() if isinstance(row, RecoveryRow) else row.as_dict()
        cells = {k: "" if flat[k] is None else flat[k] for k in columns}
        writer.writerow({"as_of": report.as_of.isoformat(), **cells})
    return out.getvalue()


def render_summary(summary: Summary, fmt: str, width: int | None = None) -> str:
    """``dunning report summary``: JSON (``{"headline": [...], "retention": ..., ...}``), the
    HTML page (:func:`worker.reports.page.to_page`), or the headline figures and both reports
    as terminal tables."""
    match fmt:
        case "json":
            return json.dumps(summary.as_dict(), indent=2) + "\n"
        case "html":
            from worker.reports.page import to_page  # Jinja: load it on demand

            return to_page(summary)
        case "table":
            retention = summary.retention
            console = _console(width)
            console.print(f"summary {retention.first} .. {retention.last}")
            console.print(f"as of {retention.as_of:%Y-%m-%d %H:%M:%S %Z}")
            headline = headline_grid(summary)
            if headline.periods:
                span = summary.retention_range.rows or summary.recovery_range.rows
                _print_grid(console, f"headline figures, {span[0].period}", headline)
            for report in (retention, summary.recovery):
                console.print()
                _print_report(console, report)
            return _text(console)
    msg = f"--format {fmt!r}: expected one of {', '.join(SUMMARY_FORMATS)}"
    raise ValueError(msg)


def to_table(report: Report, width: int | None = None) -> str:
    """The report as text no wider than ``width`` columns (default: the terminal's, from
    ``COLUMNS`` or the terminal itself; 160 when not on one). One table per segment x
    currency, periods as columns and metrics as rows; when the periods do not fit side by side
    they go in several tables of consecutive periods, one under the other. Every number is
    printed whole: a cell is never cut short with an ellipsis."""
    console = _console(width)
    _print_report(console, report)
    return _text(console)


def _console(width: int | None) -> Console:
    width = width or shutil.get_terminal_size((160, 40)).columns
    # Plain text: a plan id like "pro [annual]" or "team:100:" is printed as stored, never
    # read as markup or an emoji code.
    return Console(
        record=True, width=width, file=io.StringIO(), highlight=False, markup=False, emoji=False
    )


def _text(console: Console) -> str:
    return "".join(f"{line.rstrip()}\n" for line in console.export_text().splitlines())


def _print_report(console: Console, report: Report) -> None:
    per = f", per {report.segment}" if report.segment else ""
    console.print(f"{report.kind} report {report.first} .. {report.last} by {report.by}{per}")
    console.print(f"as of {report.as_of:%Y-%m-%d %H:%M:%S %Z}")
    found = report_grids(report)
    if not found:
        console.print("(no data)")
    for grid in found:
        _print_grid(console, grid.heading, grid)
    for note in report.notes:
        console.print(note)


def _print_grid(console: Console, heading: str, grid: Grid) -> None:
    for first, last in _fitting(console, heading, grid):
        console.print()
        console.print(_grid_table(heading, grid, first, last))


def _grid_table(heading: str, grid: Grid, first: int, last: int) -> Table:
    """The grid's columns ``first`` .. ``last - 1`` as one table. Cells fold rather than be
    cut short, should even one column not fit the width."""
    shown = grid.periods[first:last]
    if len(shown) < len(grid.periods):
        heading += f": {shown[0]}" if len(shown) == 1 else f": {shown[0]} .. {shown[-1]}"
    table = Table(title=heading, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("", overflow="fold")
    for period in shown:
        table.add_column(period, justify="right", overflow="fold")
    for label, cells in grid.lines:
        table.add_row(label, *cells[first:last])
    return table


def _fitting(console: Console, heading: str, grid: Grid) -> list[tuple[int, int]]:
    """Consecutive runs of the grid's columns, as many per run as fit the console's width at
    their natural size (at least one)."""
    runs: list[tuple[int, int]] = []
    first = 0
    unbounded = console.options.update_width(sys.maxsize)
    for last in range(1, len(grid.periods) + 1):
        table = _grid_table(heading, grid, first, last)
        wide = Measurement.get(console, unbounded, table).maximum > console.width
        if wide and last - first > 1:
            runs.append((first, last - 1))
            first = last - 1
    runs.append((first, len(grid.periods)))
    return runs
