"""``dunning status``: one screen on the system's health for ops after an outage or a deploy,
and for scripts (``--json``): can we reach the database and the broker, is the scheduler
ticking, what is waiting (events, due and overdue actions), what failed, which cases are open.
Exit status 1 when the database or the broker cannot be reached."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from worker.cli.common import Fail, one_line_errors, runtime_or_exit, settings_or_exit

if TYPE_CHECKING:
    from worker.settings import Settings

# The beat ticks every 10 s: a last tick older than this means it stopped.
TICK_LATE_S = 120


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _where(url: str) -> str:
    """A broker or database URL without credentials: scheme and host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def _broker(settings: Settings) -> tuple[bool, str]:
    from worker.app import create_app
    from worker.settings import EMBEDDED_BROKER_URL

    where = (
        f"embedded, {settings.data_dir / 'broker'}"
        if settings.broker_url == EMBEDDED_BROKER_URL
        else _where(settings.broker_url)
    )
    try:
        app = create_app(settings)
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=2)
    except Exception as exc:  # any failure to connect is the answer, not a crash
        return False, f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return True, where


@click.command()
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def status(as_json: bool) -> None:
    """The system's health on one screen: reachability, scheduler, backlog, failures, cases."""
    from sqlalchemy.exc import OperationalError

    from worker import clock
    from worker.webhooks.metrics import health

    settings = settings_or_exit()
    runtime = runtime_or_exit(settings)
    now = clock.now()
    database = _where(settings.database_url) if not settings.is_sqlite else settings.database_url
    try:
        with runtime.session() as session:
            found = health(session, now=now)
        db_ok, db_note = True, database
    except OperationalError as exc:
        found = None
        db_ok, db_note = False, f"{database}: {str(exc.orig).strip().splitlines()[0]}"
    broker_ok, broker_note = _broker(settings)
    report: dict[str, Any] = {
        "as_of": now.isoformat(),
        "database": {"ok": db_ok, "where": db_note},
        "broker": {"ok": broker_ok, "where": broker_note},
    }
    if found is not None:
        report.update(asdict(found))
        report["last_tick_at"] = found.last_tick_at.isoformat() if found.last_tick_at else None
        report["last_tick_age_s"] = (
            (now - found.last_tick_at).total_seconds() if found.last_tick_at else None
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _screen(report, now)
    if not (db_ok and broker_ok):
        down = [name for name in ("database", "broker") if not report[name]["ok"]]
        raise Fail(f"{' and '.join(down)} unreachable")


def _screen(report: dict[str, Any], now: datetime) -> None:
    from rich.console import Console
    from rich.table import Table

    def ok(part: dict[str, Any]) -> str:
        return f"[green]ok[/] {part['where']}" if part["ok"] else f"[red]down[/] {part['where']}"

    table = Table(
        title=f"dunning status, {now:%Y-%m-%d %H:%M:%S} UTC",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("database", ok(report["database"]))
    table.add_row("broker", ok(report["broker"]))
    if "backlog" in report:
        _figures(table, report)
    Console().print(table)


def _figures(table: Any, report: dict[str, Any]) -> None:
    age = report["last_tick_age_s"]
    if age is None:
        tick = "[yellow]never ticked[/] (is `dunning beat` running?)"
    else:
        tick = (
            f"last tick {_age(age)} ago (claimed {report['last_tick_claimed']}, "
            f"swept {report['last_tick_swept']})"
        )
        if age > TICK_LATE_S:
            tick = f"[yellow]{tick}: is `dunning beat` running?[/]"
    table.add_row("scheduler", tick)
    waiting = report["backlog"]
    inbox = f"{waiting['pending_events']} pending"
    if waiting["pending_events"]:
        inbox += f" (oldest {_age(waiting['oldest_pending_event_s'])})"
    failed = report["failed_events"]
    inbox += f", {failed} failed" + (" (dunning events list --status failed)" if failed else "")
    table.add_row("events", inbox)
    actions = f"{report['due_actions']} due, {waiting['overdue_actions']} overdue"
    if waiting["overdue_actions"]:
        actions += f" (oldest {_age(waiting['oldest_overdue_action_s'])} past its time)"
    actions += f", {report['failed_actions']} failed ({report['failed_actions_last_day']} in 24 h)"
    table.add_row("actions", actions)
    cases = report["open_cases"]
    table.add_row(
        "open cases",
        f"{sum(cases.values())}: " + ", ".join(f"{state} {n}" for state, n in cases.items()),
    )
