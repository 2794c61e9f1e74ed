"""``dunning status``: one line on what is waiting (events not processed, actions past their
time), for ops after an outage and for scripts (``--json``)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from worker.cli.common import one_line_errors, runtime_or_exit, settings_or_exit


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@click.command()
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def status(as_json: bool) -> None:
    """What is waiting: unprocessed events and overdue actions, with the oldest of each."""
    from worker import clock
    from worker.webhooks.metrics import backlog

    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        waiting = backlog(session, now=clock.now())
    if as_json:
        click.echo(json.dumps(asdict(waiting)))
        return
    events = f"{waiting.pending_events} events pending"
    if waiting.pending_events:
        events += f" (oldest {_age(waiting.oldest_pending_event_s)})"
    actions = f"{waiting.overdue_actions} actions overdue"
    if waiting.overdue_actions:
        actions += f" (oldest {_age(waiting.oldest_overdue_action_s)} past its time)"
    click.echo(f"{events}; {actions}")
