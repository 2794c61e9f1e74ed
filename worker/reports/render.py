"""Report formats: a rich table, CSV with a fixed column list, JSON, and HTML. All of them
render the same :class:`~worker.reports.model.Report`."""

from __future__ import annotations

import csv
import io
import json
import shutil

from rich.console import Console
from rich.table import Table

from worker.money import format_money
from worker.reports.model import (
    MOVEMENTS,
    RATIOS,
    RECOVERY_COLUMNS,
    RETENTION_COLUMNS,
    RecoveryRow,
    Report,
)

FORMATS = ("table", "csv", "json", "html")


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


def to_table(report: Report) -> str:
    """A rich table as text, as wide as the terminal (160 columns when not on one)."""
    width = shutil.get_terminal_size((160, 40)).columns
    console = Console(record=True, width=width, file=io.StringIO())
    per = f", per {report.segment}" if report.segment else ""
    title = (
        f"{report.kind} report {report.first} .. {report.last} by {report.by}{per}, "
        f"as of {report.as_of:%Y-%m-%d %H:%M:%S %Z}"
    )
    table = Table(title=title, caption="; ".join(report.notes))
    if report.kind == "retention":
        headers = [
            "period",
            "segment",
            "start",
            "new",
            "react.",
            "expansion",
            "contr. vol",
            "contr. invol",
            "churn vol",
            "churn invol",
            "end",
            "NRR %",
            "GRR %",
            "invol. churn %",
            "NRR w/o invol. %",
        ]
    else:
        headers = [
            "period",
            "segment",
            "at risk",
            "at-risk amount",
            "recovered",
            "recovered amount",
            "rate %",
            "amount rate %",
            "MRR saved",
            "churned MRR",
            "median days",
            "p90 days",
        ]
    for header in headers:
        table.add_column(header, justify="left" if header in {"period", "segment"} else "right")
    for row in report.rows:
        d = row.as_dict()
        c = d["currency"]
        if report.kind == "retention":
            cells = [
                d["period"],
                d["segment"] or "",
                *(format_money(d[k], c) for k in ("starting_mrr", *MOVEMENTS, "ending_mrr")),
                *(d[k] or "-" for k in RATIOS),
            ]
        else:
            cells = [
                d["period"],
                d["segment"] or "",
                str(d["at_risk_count"]),
                format_money(d["at_risk_amount"], c),
                str(d["recovered_count"]),
                format_money(d["recovered_amount"], c),
                d["recovery_rate_count"] or "-",
                d["recovery_rate_amount"] or "-",
                format_money(d["mrr_saved"], c),
                format_money(d["churned_mrr"], c),
                d["median_days_to_recover"] or "-",
                d["p90_days_to_recover"] or "-",
            ]
        table.add_row(*cells)
    if not report.rows:
        table.add_row("(no data)", *[""] * (len(headers) - 1))
    console.print(table)
    return console.export_text()
