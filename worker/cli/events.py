"""``dunning events list | show | retry | replay``: the inbox of provider events, seen and
re-driven by ops, and recorded events fed through the same pipeline."""

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


_STATUSES = ("pending", "processed", "ignored", "failed")


@events.command("list")
@click.option("--status", type=click.Choice(_STATUSES), default=None)
@click.option("--type", "event_type", default=None, help="e.g. invoice.payment_failed")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def events_list(status: str | None, event_type: str | None, limit: int, as_json: bool) -> None:
    """The inbox, newest first: what arrived, what became of it, and why it failed."""
    from worker.webhooks.models import InboxStatus
    from worker.webhooks.views import list_events

    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        rows = list_events(
            session,
            status=InboxStatus(status) if status else None,
            event_type=event_type,
            limit=limit,
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from worker.cli.terminal import plain_table

    shown = [
        {**row, "received_at": row["received_at"][:19].replace("T", " "), "error": row["error"]}
        for row in rows
    ]
    plain_table(
        f"{len(rows)} event(s), newest first",
        {
            "id": "id",
            "event_id": "event",
            "type": "type",
            "status": "status",
            "received_at": "received (UTC)",
            "error": "error",
        },
        shown,
    )


@events.command("show")
@click.argument("ref")
@click.option("--unmasked", is_flag=True, help="Show email addresses in the payload in full.")
@one_line_errors
def events_show(ref: str, unmasked: bool) -> None:
    """One event (inbox id or evt_...): its fate, the error, and the payload as stored."""
    from worker.webhooks.views import find_event, show_event

    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        event = find_event(session, ref)
        if event is None:
            raise BadInput(f"no event {ref} in the inbox")
        detail = show_event(event, unmasked=unmasked)
    click.echo(json.dumps(detail, indent=2, ensure_ascii=False))


@events.command("retry")
@click.argument("refs", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every failed event.")
@one_line_errors
def events_retry(refs: tuple[str, ...], all_failed: bool) -> None:
    """Process events again through the normal path (the scheduler's next tick hands them
    to a worker; handlers never apply a fact twice). REFS: inbox ids or evt_... ids."""
    from sqlalchemy import select

    from worker import clock
    from worker.webhooks.inbox import NotRedrivableError, redrive
    from worker.webhooks.models import InboxEvent, InboxStatus
    from worker.webhooks.views import find_event

    if bool(refs) == all_failed:
        raise BadInput("events retry: give event ids or --failed, not both")
    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        if all_failed:
            ids = list(
                session.scalars(
                    select(InboxEvent.id).where(InboxEvent.status == InboxStatus.FAILED)
                )
            )
        else:
            ids = []
            for ref in refs:
                event = find_event(session, ref)
                if event is None:
                    raise BadInput(f"no event {ref} in the inbox")
                ids.append(event.id)
        try:
            redriven = redrive(session, ids, now=clock.now())
        except NotRedrivableError as exc:
            raise BadInput(str(exc)) from None
        names = [f"{e.id} ({e.event_id})" for e in redriven]
    if not names:
        click.echo("no failed events")
        return
    click.echo(
        f"{len(names)} event(s) pending again, handed to a worker on the scheduler's next "
        f"tick: {', '.join(names)}"
    )


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
