"""The ``dunning`` command (DESIGN §3). Exit status: 0 ok, 2 bad usage or input, 1 failure.

Each command builds what it needs from settings read once at start; errors are one readable
line on stderr (``-v`` adds the traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.settings import SettingError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("worker")


class Fail(click.ClickException):
    """A runtime failure: one line, exit status 1."""

    exit_code = 1


class BadInput(click.ClickException):
    """Bad usage or invalid input: one line, exit status 2."""

    exit_code = 2


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingError as exc:
        raise BadInput(str(exc)) from None


def _policy(settings: Settings, path: Path | None = None):
    from worker.config import ConfigError, load_policy

    try:
        return load_policy(path or settings.config_path)
    except ConfigError as exc:
        raise BadInput("\n".join(exc.problems)) from None


def _runtime(settings: Settings):
    from worker.runtime import Runtime

    return Runtime(settings, policy=_policy(settings))


def _errors(fn: F) -> F:
    """Turn known runtime failures into one line on stderr, exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            if click.get_current_context().obj.get("verbose"):
                raise
            raise Fail(f"database: {str(exc.orig).strip().splitlines()[0]}") from None

    return wrapper  # type: ignore[return-value]


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


# ---- database ----


@main.group()
def db() -> None:
    """Schema management (Alembic)."""


@db.command("upgrade")
@_errors
def db_upgrade() -> None:
    """Apply migrations to DUNNING_DATABASE_URL."""
    from worker.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo("database at head")


# ---- processes ----


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Webhook intake with /healthz and /readyz."""
    import uvicorn

    from worker.app import create_app
    from worker.webhooks.intake import build_intake

    settings = _settings()
    if settings.stripe_webhook_secret is None:
        raise BadInput("STRIPE_WEBHOOK_SECRET: required by `dunning serve`, not set")
    app = create_app(settings, _runtime(settings))
    uvicorn.run(build_intake(app), host=host, port=port, log_level="warning")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Celery worker (extra arguments go to `celery worker`)."""
    from worker.app import create_app

    settings = _settings()
    app = create_app(settings, _runtime(settings))
    app.worker_main(["worker", "--loglevel=INFO", *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """The scheduler tick (extra arguments go to `celery beat`)."""
    from worker.app import create_app

    settings = _settings()
    app = create_app(settings, _runtime(settings))
    app.start(["beat", "--loglevel=INFO", *ctx.args])


@main.command()
@click.option("--port", default=8000, show_default=True, type=int)
@_errors
def run(port: int) -> None:
    """Intake + worker + beat in one process tree; migrates the database first."""
    from worker.migrate import upgrade
    from worker.processes import run_all

    settings = _settings()
    if settings.stripe_webhook_secret is None:
        raise BadInput("STRIPE_WEBHOOK_SECRET: required by the intake, not set")
    _policy(settings)
    upgrade(settings.database_url)
    raise SystemExit(run_all(port=port))


# ---- config ----


@main.group()
def config() -> None:
    """The ops policy file."""


@config.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def config_check(path: Path | None) -> None:
    """Validate the policy file; problems as file:line: key: what is wrong."""
    settings = _settings()
    target = path or settings.config_path
    policy = _policy(settings, target)
    click.echo(f"{target}: ok (policy {policy.version}, retries.mode = {policy.retries.mode})")


# ---- policy ----


@main.group()
def policy() -> None:
    """What the retry policy does."""


@policy.command("preview")
@click.option("--decline-code", required=True, help="Stripe decline_code (or error code).")
@click.option("--advice-code", default=None)
@click.option("--network-advice-code", default=None, help="Mastercard MAC, e.g. 24.")
@click.option(
    "--brand", type=click.Choice(["visa", "mastercard", "amex", "discover"]), default=None
)
@click.option("--failed-at", default=None, help="ISO 8601; default: now.")
@click.option("--timezone", default=None, help="The customer's IANA timezone.")
@click.option("--amount", type=int, default=None, help="Minor units.")
@click.option("--currency", default=None)
@click.option(
    "--prior-declines",
    type=int,
    default=0,
    help="Declines on this card in the 30 days before this failure.",
)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
def policy_preview(
    *,
    decline_code: str,
    advice_code: str | None,
    network_advice_code: str | None,
    brand: str | None,
    failed_at: str | None,
    timezone: str | None,
    amount: int | None,
    currency: str | None,
    prior_declines: int,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """The retries and emails a failure would get if nothing succeeds."""
    from datetime import datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from worker import clock
    from worker.billing.domain import Card, Decline
    from worker.dunning.preview import preview

    settings = _settings()
    loaded = _policy(settings, config_path)
    try:
        when = datetime.fromisoformat(failed_at) if failed_at else clock.now()
    except ValueError:
        raise BadInput(f"--failed-at: not an ISO 8601 time: {failed_at!r}") from None
    if when.tzinfo is None:
        raise BadInput("--failed-at: give a timezone offset, e.g. 2026-03-02T10:00:00Z")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadInput(f"--timezone: unknown IANA timezone {timezone!r}") from None
    if (amount is None) != (currency is None):
        raise BadInput("--amount and --currency go together")
    if prior_declines < 0:
        raise BadInput("--prior-declines: must be 0 or more")
    decline = Decline(
        decline_code=decline_code,
        advice_code=advice_code,
        network_advice_code=network_advice_code,
        card=Card(payment_method_id=None, brand=brand),
    )
    result = preview(
        loaded,
        decline,
        currency=currency,
        failed_at=when,
        timezone=timezone,
        amount=amount,
        prior_declines=prior_declines,
    )
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    from worker.terminal import preview_table

    preview_table(result)


# ---- cases ----


@main.group()
def cases() -> None:
    """Ops view of dunning cases."""


@cases.command("list")
@click.option("--state", default=None, help="Only cases in this state.")
@click.option("--json", "as_json", is_flag=True)
@_errors
def cases_list(state: str | None, as_json: bool) -> None:
    from worker.dunning.state import DunningState
    from worker.dunning.views import list_cases

    if state is not None and state not in set(DunningState):
        raise BadInput(
            f"--state: unknown state {state!r} ({', '.join(s.value for s in DunningState)})"
        )
    runtime = _runtime(_settings())
    with runtime.session() as session:
        rows = list_cases(session, state=state)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from worker.terminal import cases_table

    cases_table(rows)


@cases.command("show")
@click.argument("case_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@_errors
def cases_show(case_id: int, as_json: bool) -> None:
    from worker.dunning.views import show_case

    runtime = _runtime(_settings())
    with runtime.session() as session:
        detail = show_case(session, case_id)
    if detail is None:
        raise BadInput(f"no dunning case {case_id}")
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    from worker.terminal import case_timeline

    case_timeline(detail)


@cases.command("retry-now")
@click.argument("case_id", type=int)
@_errors
def cases_retry_now(case_id: int) -> None:
    """Plan an immediate retry through the normal path (the scheduler runs it)."""
    from worker import clock
    from worker.dunning.service import CaseNotRetryableError, retry_now

    runtime = _runtime(_settings())
    try:
        with runtime.session() as session:
            action = retry_now(session, case_id, now=clock.now())
            key = action.idempotency_key
    except LookupError:
        raise BadInput(f"no dunning case {case_id}") from None
    except CaseNotRetryableError as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"case {case_id}: retry planned now (idempotency key {key})")


# ---- events ----


@main.group()
def events() -> None:
    """Provider events."""


@events.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_errors
def events_replay(file: Path) -> None:
    """Process recorded payloads (JSON or JSONL) in file order, without signature checks."""
    from worker.webhooks.replay import ReplayFileError, replay_file

    runtime = _runtime(_settings())
    try:
        counts = replay_file(runtime, file)
    except ReplayFileError as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(counts))


# ---- reports ----


@main.group()
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

    settings = _settings()
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
@_errors
def report_retention(**options: Any) -> None:
    """MRR movements, NRR and GRR per period, involuntary churn as its own line."""
    _run_report("retention", **options)


@report.command("recovery")
@_report_options
@_errors
def report_recovery(**options: Any) -> None:
    """What dunning put at risk and recovered, by the period cases opened in."""
    _run_report("recovery", **options)


@main.command()
@click.option(
    "--since", default=None, metavar="YYYY-MM-DD", help="Only history from this date (UTC) on."
)
@_errors
def backfill(since: str | None) -> None:
    """Mirror the provider's customers, subscriptions and invoices (resumable)."""
    from datetime import UTC, datetime

    from worker import clock
    from worker.backfill import run_backfill
    from worker.billing.stripe_client import ProviderError, TransientProviderError

    try:
        start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC) if since else None
    except ValueError:
        raise BadInput(f"--since {since!r}: expected a date as YYYY-MM-DD") from None
    from worker.runtime import Runtime

    runtime = Runtime(_settings())  # no policy: a backfill plans nothing
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


# ---- demo ----


@main.command()
@click.option("--customers", default=100, show_default=True, type=int)
@click.option("--seed", default=7, show_default=True, type=int)
@click.option(
    "--out",
    default=".dunning/demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def demo(customers: int, seed: int, out: Path) -> None:
    """The whole pipeline against a simulated billing system, over a simulated month."""
    from worker.demo import run_demo

    if customers < 1:
        raise BadInput("--customers: must be at least 1")
    run_demo(customers=customers, seed=seed, out=out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
