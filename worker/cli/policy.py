"""``dunning config check`` and ``dunning policy preview``: the ops policy file, validated and
previewed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.common import (
    BadInput,
    policy_or_exit,
    settings_or_exit,
)


@click.group()
def config() -> None:
    """The ops policy file."""


@config.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def config_check(path: Path | None) -> None:
    """Validate the policy file; problems as file:line: key: what is wrong."""
    settings = settings_or_exit()
    target = path or settings.config_path
    policy = policy_or_exit(settings, target)
    click.echo(f"{target}: ok (policy {policy.version}, retries.mode = {policy.retries.mode})")


@click.group()
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

    settings = settings_or_exit()
    loaded = policy_or_exit(settings, config_path)
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
    from worker.cli.terminal import preview_table

    click.echo(f"policy: {config_path or settings.config_path} (version {loaded.version})")
    preview_table(result)
