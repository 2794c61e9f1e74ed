"""Terminal rendering for ops commands (rich). Formatting only; data comes from views."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from babel.numbers import format_currency, get_currency_precision
from rich.console import Console
from rich.table import Table

console = Console()


def money(amount: int, currency: str) -> str:
    exponent = get_currency_precision(currency.upper())
    return format_currency(Decimal(amount).scaleb(-exponent), currency.upper(), locale="en_US")


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
            money(row["amount_due"], row["currency"]),
            str(row["attempts"]),
            row["decline_code"] or "-",
            row["next_action_at"] or "-",
        )
    console.print(table)


def case_timeline(detail: dict[str, Any]) -> None:
    console.print(
        f"[bold]case {detail['id']}[/] {detail['invoice_id']} "
        f"({detail['customer_id']}) {money(detail['amount_due'], detail['currency'])}"
        f" — [bold]{detail['state']}[/], decline {detail['decline_code'] or '-'} "
        f"({detail['decline_class'] or '-'}), retries.mode {detail['retries_mode']}, "
        f"policy {detail['policy_version']}"
    )
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
