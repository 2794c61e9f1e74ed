"""Terminal rendering for ops commands (rich). Formatting only; data comes from views."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from worker.dunning.cases import SMART_RETRIES_ON
from worker.dunning.state import TERMINAL
from worker.money import format_money

if TYPE_CHECKING:
    from worker.dunning.preview import Preview

console = Console()


def cases_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} dunning case(s)")
    for column in (
        "id",
        "invoice",
        "customer",
        "state",
        "amount",
        "attempts",
        "decline",
        "next action (UTC)",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["invoice_id"],
            row["customer_id"],
            row["state"],
            format_money(row["amount_due"], row["currency"]),
            str(row["attempts"]),
            row["decline_code"] or "-",
            row["next_action_at"] or "-",
        )
    console.print(table)


def case_timeline(detail: dict[str, Any]) -> None:
    console.print(
        f"[bold]case {detail['id']}[/] {detail['invoice_id']} "
        f"({detail['customer_id']}) {format_money(detail['amount_due'], detail['currency'])}"
        f" — [bold]{detail['state']}[/], decline {detail['decline_code'] or '-'} "
        f"({detail['decline_class'] or '-'}), retries.mode {detail['retries_mode']}, "
        f"policy {detail['policy_version']}"
    )
    theirs = detail.get("provider_next_attempt")
    if theirs and detail["retries_mode"] == "own" and detail["state"] not in TERMINAL:
        console.print(f"[yellow]next provider retry {theirs} UTC. {SMART_RETRIES_ON}")
    events: list[tuple[str, str, str]] = []
    events += [
        (
            t["at"],
            "transition",
            f"{t['event']}: {t['from']} → {t['to']}" + (f" ({t['reason']})" if t["reason"] else ""),
        )
        for t in detail["transitions"]
    ]
    events += [
        (a["at"], "attempt", f"{a['source']} {a['outcome']} {a['decline_code'] or ''}")
        for a in detail["attempts_detail"]
    ]
    events += [
        (e["at"] or "", "email", f"{e['template']} to {e['to']} ({e['status']})")
        for e in detail["emails"]
    ]
    events += [
        (
            a["due_at"],
            f"action {a['status']}",
            f"{a['kind']} {a['template'] or ''} — {a['reason']}"
            + (f" [{a['note']}]" if a["note"] else ""),
        )
        for a in detail["actions"]
    ]
    table = Table(show_header=True)
    for column in ("at (UTC)", "what", "detail"):
        table.add_column(column)
    for at, what, text in sorted(events, key=lambda e: e[0]):
        table.add_row(at, what, text)
    console.print(table)


def preview_table(result: Preview) -> None:
    zone = ZoneInfo(result.timezone)
    console.print(
        f"class [bold]{result.decline_class.value}[/], retries.mode {result.mode}, "
        f"window ends {result.window_ends_at:%Y-%m-%d %H:%M} UTC"
    )
    table = Table(show_header=True)
    for column in ("when (UTC)", f"local ({result.timezone})", "what", "rule"):
        table.add_column(column)
    for action in result.actions:
        what = "retry" if action.kind == "retry" else f"email {action.template}"
        table.add_row(
            f"{action.at:%a %Y-%m-%d %H:%M}",
            f"{action.at.astimezone(zone):%a %Y-%m-%d %H:%M}",
            what,
            action.reason,
        )
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]{note}")
    retries = sum(1 for a in result.actions if a.kind == "retry")
    console.print(
        f"{retries} automatic retr{'y' if retries == 1 else 'ies'}; "
        f"then: {result.final_action['action']}"
    )


def plain_table(title: str, columns: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Rows of plain values, ``columns`` mapping each key to its (short) header; numbers
    right-aligned; a value too wide folds, never truncates."""
    table = Table(title=title)
    for column, header in columns.items():
        numeric = bool(rows) and all(isinstance(row[column], int | None) for row in rows)
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*("-" if row[c] is None else str(row[c]) for c in columns))
    console.print(table)
