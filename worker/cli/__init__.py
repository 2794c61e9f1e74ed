"""The ``dunning`` command (DESIGN §3): one module per command group, each building what it
needs from settings read once at start. Exit status: 0 ok, 2 bad usage or input, 1 failure;
errors are one readable line on stderr (``-v`` adds the traceback)."""

from __future__ import annotations

import logging

import click

from worker import redact
from worker.cli import (
    cards,
    cases,
    deliveries,
    demo,
    emails,
    events,
    links,
    policy,
    processes,
    report,
    status,
)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log details and show tracebacks.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """dunning-worker: win back revenue lost to failed card payments."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact.install()  # no email address in any log line, -v or not


for command in (
    processes.db,
    processes.serve,
    processes.worker,
    processes.beat,
    processes.run,
    policy.config,
    policy.policy,
    cases.cases,
    cards.cards,
    deliveries.deliveries,
    links.links,
    status.status,
    events.events,
    emails.emails,
    report.report,
    report.backfill,
    demo.demo,
):
    main.add_command(command)
