"""``dunning report retention | recovery | summary`` and ``dunning backfill``: finance
reports and the history they need."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from worker.cli.common import (
    BadInput,
    F,
    Fail,
    one_line_errors,
    settings_or_exit,
)
from worker.settings import SettingError


@click.group()
def report() -> None:
    """Finance reports from the revenue ledger (read-only)."""


def _report_options(fn: F) -> F:
    options = [
        click.option("--from", "first", required=True, metavar="YYYY-MM", help="First month."),
        click.option("--to", "last", required=True, metavar="YYYY-MM", help="Last month."),
        click.option(
            "--by",
            type=click.Choice(["month", "quarter", "ttm", "range"]),
            default="month",
            show_default=True,
            help="Periods: calendar months or quarters, trailing twelve months per month, "
            "or the whole range as one period.",
        ),
        click.option(
            "--segment",
            type=click.Choice(["plan", "currency", "interval", "cohort"]),
            default=None,
        ),
        click.option(
            "--as-of",
            "as_of",
            default=None,
            metavar="ISO8601",
            help="The ledger as it stood then (default: now).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "csv", "json", "html"]),
            default="table",
            show_default=True,
        ),
        click.option(
            "--out",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Write to this file instead of standard output.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_report(
    kind: str,
    *,
    first: str,
    last: str,
    by: str,
    segment: str | None,
    as_of: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    from worker.reports.build import build_report
    from worker.reports.render import render

    def build(engine: Any, when: datetime) -> Any:
        return build_report(
            engine, kind, first=first, last=last, by=by, segment=segment, as_of=when
        )

    built = _built(build, as_of)
    _emit(render(built, fmt), built.as_of, out)


def _built(build: Callable[[Any, datetime], Any], as_of: str | None) -> Any:
    """What ``build(engine, as_of)`` returns, for the database the settings name; bad input
    (a malformed ``--as-of``, months) exits 2 with one line."""
    from worker import clock
    from worker.db import make_engine

    settings = settings_or_exit()
    try:
        when = datetime.fromisoformat(as_of) if as_of else clock.now()
        engine = make_engine(settings.database_url)
        try:
            return build(engine, when)
        finally:
            engine.dispose()
    except ValueError as exc:
        raise BadInput(
            str(exc).replace("Invalid isoformat string", "--as-of: not ISO 8601")
        ) from None


def _emit(text: str, as_of: datetime, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
    click.echo(f"as of {as_of.isoformat()}" + (f", written to {out}" if out else ""), err=True)


@report.command("retention")
@_report_options
@one_line_errors
def report_retention(**options: Any) -> None:
    """MRR movements, NRR and GRR per period, involuntary churn as its own line."""
    _run_report("retention", **options)


@report.command("recovery")
@_report_options
@one_line_errors
def report_recovery(**options: Any) -> None:
    """What dunning put at risk and recovered, by the period cases opened in."""
    _run_report("recovery", **options)


@report.command("summary")
@click.option("--from", "first", required=True, metavar="YYYY-MM", help="First month.")
@click.option("--to", "last", required=True, metavar="YYYY-MM", help="Last month.")
@click.option(
    "--by",
    type=click.Choice(["month", "quarter"]),
    default="month",
    show_default=True,
    help="The periods of the charts and tables (the headline is the whole range).",
)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    metavar="ISO8601",
    help="The ledger as it stood then (default: now).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "html"]),
    default="table",
    show_default=True,
    help="html: one self-contained page (headline figures, charts, tables).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
@one_line_errors
def report_summary(
    *, first: str, last: str, by: str, as_of: str | None, fmt: str, out: Path | None
) -> None:
    """Headline figures per currency over the range (recovered revenue, recovery rate,
    involuntary share of churn, NRR with and without involuntary loss), then both reports."""
    from worker.reports.build import build_summary
    from worker.reports.render import render_summary

    def build(engine: Any, when: datetime) -> Any:
        return build_summary(engine, first=first, last=last, by=by, as_of=when)

    built = _built(build, as_of)
    _emit(render_summary(built, fmt), built.retention.as_of, out)


@click.command()
@click.option(
    "--since", default=None, metavar="YYYY-MM-DD", help="Only history from this date (UTC) on."
)
@one_line_errors
def backfill(since: str | None) -> None:
    """Mirror the provider's customers, subscriptions and invoices (resumable)."""
    from datetime import UTC

    from worker import clock
    from worker.backfill.service import run_backfill
    from worker.billing.stripe_client import ProviderError, TransientProviderError

    try:
        start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC) if since else None
    except ValueError:
        raise BadInput(f"--since {since!r}: expected a date as YYYY-MM-DD") from None
    from worker.runtime import Runtime

    runtime = Runtime(settings_or_exit())  # no policy: a backfill plans nothing
    try:
        summary = run_backfill(runtime, since=start, now=clock.now())
    except SettingError as exc:
        raise BadInput(str(exc)) from None
    except (ProviderError, TransientProviderError, KeyboardInterrupt) as exc:
        raise Fail(
            f"stopped ({exc or 'interrupted'}); run the same command again to resume"
        ) from None
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        raise Fail(
            f"{len(summary.failed)} object(s) could not be mirrored (logged above); "
            "everything else was: run the same command again once they are fixed"
        )
