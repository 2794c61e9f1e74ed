"""``dunning report retention | recovery`` and ``dunning backfill``: finance reports and the
history they need."""

from __future__ import annotations

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
            type=click.Choice(["month", "quarter", "ttm"]),
            default="month",
            show_default=True,
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
    from datetime import datetime

    from worker import clock
    from worker.db import make_engine
    from worker.reports.build import build_report
    from worker.reports.render import render

    settings = settings_or_exit()
    try:
        when = datetime.fromisoformat(as_of) if as_of else clock.now()
        engine = make_engine(settings.database_url)
        try:
            built = build_report(
                engine, kind, first=first, last=last, by=by, segment=segment, as_of=when
            )
        finally:
            engine.dispose()
    except ValueError as exc:
        raise BadInput(
            str(exc).replace("Invalid isoformat string", "--as-of: not ISO 8601")
        ) from None
    text = render(built, fmt)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
    click.echo(
        f"as of {built.as_of.isoformat()}" + (f", written to {out}" if out else ""), err=True
    )


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


@click.command()
@click.option(
    "--since", default=None, metavar="YYYY-MM-DD", help="Only history from this date (UTC) on."
)
@one_line_errors
def backfill(since: str | None) -> None:
    """Mirror the provider's customers, subscriptions and invoices (resumable)."""
    from datetime import UTC, datetime

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
