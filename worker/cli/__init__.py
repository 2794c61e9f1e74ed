"""The ``dunning`` command (DESIGN §3): one module per command group, each building what it
needs from settings read once at start. Exit status: 0 ok, 2 bad usage or input, 1 failure;
errors are one readable line on stderr (``-v`` adds the traceback)."""

from __future__ import annotations

import logging
import os

import click

from worker import logs, settings
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
from worker.cli.common import BadInput


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log details and show tracebacks.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """dunning-worker: win back revenue lost to failed card payments."""
    ctx.obj = {"verbose": verbose}
    try:
        log_format = settings.log_format()
    except settings.SettingError as exc:
        raise BadInput(str(exc)) from None
    # No email address or secret in any log line, -v or not (worker.redact).
    logs.configure(level=logging.DEBUG if verbose else logging.WARNING, log_format=log_format)
    # Only `dunning worker` keeps prometheus_client's multiprocess files, under the data
    # directory (worker.cli.processes); other commands never write them anywhere.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


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
