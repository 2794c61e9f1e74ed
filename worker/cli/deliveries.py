"""``dunning deliveries list``: the log of the signed webhooks sent to the customer's app."""

from __future__ import annotations

import json

import click

from worker.cli.common import one_line_errors, runtime_or_exit, settings_or_exit

STATUSES = ("pending", "delivered", "failed", "skipped")
COLUMNS = {
    "event": "event",
    "type": "type",
    "customer": "customer",
    "status": "status",
    "attempts": "tries",
    "last_status": "HTTP",
    "created": "happened",
}


@click.group()
def deliveries() -> None:
    """Webhooks to the customer's app (case.opened, access.*, case.recovered, ...)."""


@deliveries.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def deliveries_list(status: str | None, limit: int, as_json: bool) -> None:
    """Newest first: each event, whether it was delivered, how often it was tried and the
    receiver's last answer."""
    from worker.dunning.access import deliveries as delivery_log

    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        rows = delivery_log(session, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from worker.cli.terminal import plain_table

    plain_table(f"{len(rows)} app webhook(s)", COLUMNS, rows)
