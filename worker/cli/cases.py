"""``dunning cases list | show | retry-now | pause | resume | close``: the ops view of dunning
cases, and the ops moves (each through the state machine, recorded in the timeline)."""

from __future__ import annotations

import json

import click

from worker.cli.common import (
    BadInput,
    one_line_errors,
    runtime_or_exit,
    settings_or_exit,
)


@click.group()
def cases() -> None:
    """Ops view of dunning cases."""


@cases.command("list")
@click.option("--state", default=None, help="Only cases in this state.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def cases_list(state: str | None, as_json: bool) -> None:
    from worker.dunning.state import DunningState
    from worker.dunning.views import list_cases

    if state is not None and state not in set(DunningState):
        raise BadInput(
            f"--state: unknown state {state!r} ({', '.join(s.value for s in DunningState)})"
        )
    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        rows = list_cases(session, state=state)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from worker.cli.terminal import cases_table

    cases_table(rows)


@cases.command("show")
@click.argument("case_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def cases_show(case_id: int, as_json: bool) -> None:
    from worker.dunning.views import show_case

    runtime = runtime_or_exit(settings_or_exit())
    with runtime.session() as session:
        detail = show_case(session, case_id)
    if detail is None:
        raise BadInput(f"no dunning case {case_id}")
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    from worker.cli.terminal import case_timeline

    case_timeline(detail)


@cases.command("retry-now")
@click.argument("case_id", type=int)
@one_line_errors
def cases_retry_now(case_id: int) -> None:
    """Plan an immediate retry through the normal path (the scheduler runs it). Skips our
    schedule and minimum gap, never a network rule (budget, MAC wait, "never retry")."""
    from worker import clock
    from worker.dunning.operations import CaseNotRetryableError, retry_now

    runtime = runtime_or_exit(settings_or_exit())
    try:
        with runtime.session() as session:
            now = clock.now()
            action = retry_now(session, case_id, policy=runtime.policy, now=now)
            key, due_at, reason = action.idempotency_key, action.due_at, action.reason
    except LookupError:
        raise BadInput(f"no dunning case {case_id}") from None
    except CaseNotRetryableError as exc:
        raise BadInput(str(exc)) from None
    when = "now" if due_at <= now else f"for {due_at:%Y-%m-%d %H:%M} UTC ({reason})"
    click.echo(f"case {case_id}: retry planned {when} (idempotency key {key})")


def _ops_command(verb: str, doc: str, *, reason_required: bool) -> click.Command:
    @click.argument("case_id", type=int, required=False)
    @click.option("--customer", default=None, help="Every case of this customer (cus_...).")
    @click.option(
        "--reason",
        # Click counts an explicit default (even None) as a value: give none when required.
        **({"required": True} if reason_required else {"default": "by ops"}),
        help="Why, for the case's timeline." + ("" if reason_required else " [default: by ops]"),
    )
    @one_line_errors
    def command(case_id: int | None, customer: str | None, reason: str) -> None:
        from worker import clock
        from worker.dunning.operations import OpsRefusedError, customer_case_ids, ops_move

        if (case_id is None) == (customer is None):
            raise BadInput(f"cases {verb}: give a case ID or --customer cus_..., not both")
        runtime = runtime_or_exit(settings_or_exit())
        if customer is not None:
            try:
                with runtime.session() as session:
                    ids = customer_case_ids(session, customer, verb)
            except LookupError as exc:
                raise BadInput(str(exc)) from None
            if not ids:
                click.echo(f"{customer}: no case to {verb}")
                return
        else:
            ids = [case_id] if case_id is not None else []
        for one in ids:
            try:
                with runtime.session() as session:  # one transaction per case
                    case = ops_move(
                        session, one, verb, reason=reason, policy=runtime.policy, now=clock.now()
                    )
                    state = case.state.value
                    window = case.window_ends_at
            except LookupError:
                raise BadInput(f"no dunning case {one}") from None
            except OpsRefusedError as exc:
                if customer is None:
                    raise BadInput(str(exc)) from None
                click.echo(f"case {one}: skipped ({exc})")  # it moved since we listed it
                continue
            extra = f", window now ends {window:%Y-%m-%d %H:%M} UTC" if verb == "resume" else ""
            click.echo(f"case {one}: {state}{extra}")

    command.__doc__ = doc
    return click.command(verb)(command)


for _verb, _doc, _required in (
    (
        "pause",
        "Hold a case: nothing is sent or charged, its clock stops (payments still count).",
        False,
    ),
    (
        "resume",
        "End a hold: the window and the plan move on by the pause; nothing fires in a burst.",
        False,
    ),
    (
        "close",
        "End dunning without a final action (the invoice stays open at the provider).",
        True,
    ),
):
    cases.add_command(_ops_command(_verb, _doc, reason_required=_required))
