"""``dunning db upgrade | serve | worker | beat | run``: the schema and the long-running
processes."""

from __future__ import annotations

import gc
import os

import click

from worker.cli.common import (
    BadInput,
    one_line_errors,
    policy_or_exit,
    runtime_or_exit,
    settings_or_exit,
)
from worker.settings import Settings


@click.group()
def db() -> None:
    """Schema management (Alembic)."""


@db.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply migrations to DUNNING_DATABASE_URL."""
    from worker.migrate import upgrade

    settings = settings_or_exit()
    upgrade(settings.database_url)
    click.echo("database at head")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Webhook intake with /healthz and /readyz."""
    import uvicorn

    from worker.app import create_app
    from worker.webhooks.intake import build_intake

    settings = settings_or_exit()
    if settings.stripe_webhook_secret is None:
        raise BadInput("STRIPE_WEBHOOK_SECRET: required by `dunning serve`, not set")
    app = create_app(settings, runtime_or_exit(settings))
    intake = build_intake(app)
    # What start-up built (modules, mappers, the Celery app) lives as long as the process:
    # frozen out of the collector's sight, a full collection walks about 25,000 objects
    # instead of 140,000 (measured under load: 6-37 ms instead of 80-190 ms, with every
    # request in flight waiting).
    gc.collect()
    gc.freeze()
    # httptools and uvloop: the HTTP parser and event loop in C (h11 and asyncio's loop in
    # Python cost as much CPU per delivery as storing it). log_config=None: uvicorn logs
    # through our root handler (text or JSON, masked).
    uvicorn.run(
        intake,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        log_config=None,
    )


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "-Q",
    "--queues",
    default="intake,payments,emails,scheduler",
    show_default=True,
    help="The queues this worker takes, comma-separated: intake (webhook events), payments "
    "(retries, final actions), emails (emails, access changes, app webhooks, the card "
    "scan), scheduler (the tick). Start one worker per kind to scale each alone.",
)
@click.pass_context
def worker(ctx: click.Context, queues: str) -> None:
    """Celery worker (extra arguments go to `celery worker`); its /metrics on
    DUNNING_METRICS_PORT when set."""
    from worker.enqueue import QUEUES

    chosen = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(QUEUES))
    if unknown or not chosen:
        # Celery would listen on a queue nobody sends to, and take nothing.
        raise BadInput(
            f"--queues: {', '.join(unknown) or 'none given'}: not a queue; "
            f"choose from {', '.join(QUEUES)}"
        )
    settings = settings_or_exit()
    if settings.metrics_address is not None:
        _serve_worker_metrics(settings)
    from worker.app import create_app

    app = create_app(settings, runtime_or_exit(settings))
    app.worker_main(
        [*_quiet(settings), "worker", "--loglevel=INFO", f"--queues={','.join(chosen)}", *ctx.args]
    )


def _serve_worker_metrics(settings: Settings) -> None:
    """Pool processes count into files under the data directory, one folder per metrics
    port (two workers on one host keep apart); this process serves their sum. The folder
    must be named before prometheus_client is first imported (worker.telemetry)."""
    assert settings.metrics_address is not None  # noqa: S101 - the caller checked
    host, port = settings.metrics_address
    directory = (settings.data_dir / "metrics" / f"worker-{port}").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from worker.telemetry import serve_worker_metrics

    try:
        serve_worker_metrics(host, port, directory)
    except OSError as exc:
        raise BadInput(f"DUNNING_METRICS_PORT: cannot listen on {host}:{port}: {exc}") from None


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """The scheduler tick (extra arguments go to `celery beat`)."""
    from worker.app import create_app

    settings = settings_or_exit()
    app = create_app(settings, runtime_or_exit(settings))
    app.start([*_quiet(settings), "beat", "--loglevel=INFO", *ctx.args])


def _quiet(settings: Settings) -> list[str]:
    """With JSON logs, no start-up banner: every line a process writes is one JSON object."""
    return ["--quiet"] if settings.log_format == "json" else []


@click.command()
@click.option("--port", default=8000, show_default=True, type=int)
@one_line_errors
def run(port: int) -> None:
    """Intake + worker + beat in one process tree; migrates the database first."""
    from worker.migrate import upgrade
    from worker.processes import run_all

    settings = settings_or_exit()
    if settings.stripe_webhook_secret is None:
        raise BadInput("STRIPE_WEBHOOK_SECRET: required by the intake, not set")
    policy_or_exit(settings)
    upgrade(settings.database_url)
    raise SystemExit(run_all(port=port))
