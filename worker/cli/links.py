"""``dunning links revoke --customer cus_...``: switch off a customer's card-update links."""

from __future__ import annotations

import click

from worker.cli.common import BadInput, one_line_errors, runtime_or_exit, settings_or_exit


@click.group()
def links() -> None:
    """The one-click card-update links in emails."""


@links.command("revoke")
@click.option("--customer", "customer", required=True, help="The provider's customer id.")
@one_line_errors
def links_revoke(customer: str) -> None:
    """End every live link the customer holds (e.g. a mailbox was compromised). Their pages
    then say so and offer the invoice's own payment page; later emails carry new links."""
    from worker import clock
    from worker.links.service import revoke_customer

    runtime = runtime_or_exit(settings_or_exit())
    try:
        with runtime.session() as session:
            count = revoke_customer(session, customer, now=clock.now())
    except LookupError:
        raise BadInput(f"--customer: no customer {customer!r}") from None
    click.echo(f"{customer}: {count} live link(s) revoked")
