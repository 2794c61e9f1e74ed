"""``dunning events replay``: recorded provider events through the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.common import (
    BadInput,
    Fail,
    one_line_errors,
    runtime_or_exit,
    settings_or_exit,
)


@click.group()
def events() -> None:
    """Provider events."""


@events.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@one_line_errors
def events_replay(file: Path) -> None:
    """Process recorded payloads (JSON or JSONL) in file order, without signature checks."""
    from worker.webhooks.replay import ReplayFileError, replay_file

    runtime = runtime_or_exit(settings_or_exit())
    try:
        counts = replay_file(runtime, file)
    except ReplayFileError as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(counts))
    if counts.get("failed"):
        raise Fail(
            f"{counts['failed']} of {counts['events']} events failed: they stay in the inbox, "
            "pending, with the reason (the scheduler retries them)"
        )
