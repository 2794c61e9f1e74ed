"""``dunning cards scan-expiring | report``: notices before cards expire."""

from __future__ import annotations

import json

import click

from worker.cli.common import BadInput, one_line_errors, runtime_or_exit, settings_or_exit


@click.group()
def cards() -> None:
    """Cards on file: notices before they expire."""


@cards.command("scan-expiring")
@click.option(
    "--rate",
    "rate",
    type=click.FloatRange(min=0.1, max=100),
    default=10.0,
    show_default=True,
    help="Stripe requests per second at most (leave room for the running worker).",
)
@one_line_errors
def cards_scan(rate: float) -> None:
    """Read every customer's default card from Stripe now and plan the notices due (the
    scheduler runs this daily)."""
    from worker import clock
    from worker.dunning.expiring import scan

    runtime = runtime_or_exit(settings_or_exit())
    if runtime.gateway is None:
        raise BadInput("STRIPE_API_KEY: required to read customers' cards, not set")
    summary = scan(runtime, now=clock.now(), requests_per_second=rate)
    for line in summary.lines():
        click.echo(line)


@cards.command("report")
@click.option("--from", "first", required=True, metavar="YYYY-MM", help="First expiry month.")
@click.option("--to", "last", required=True, metavar="YYYY-MM", help="Last expiry month.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def cards_report(first: str, last: str, as_json: bool) -> None:
    """Per expiry month: cards warned about, notices sent, cards updated before expiry (by
    the customer or the network) and cards that expired unchanged."""
    from worker import clock
    from worker.ledger.periods import parse_month
    from worker.reports.cards import CARD_COLUMNS, card_notice_report

    for option, value in (("--from", first), ("--to", last)):
        try:
            parse_month(value)
        except ValueError as exc:
            raise BadInput(f"{option}: {exc}") from None
    if first > last:
        raise BadInput("--from: after --to")
    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        rows = card_notice_report(session, first, last, now=clock.now())
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    from worker.cli.terminal import plain_table

    plain_table("card-expiry notices", CARD_COLUMNS, [row.as_dict() for row in rows])
