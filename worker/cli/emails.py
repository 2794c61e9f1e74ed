"""``dunning emails preview``: review an email's wording and layout with sample data."""

from __future__ import annotations

from pathlib import Path

import click

from worker.cli.common import BadInput, one_line_errors, policy_or_exit, settings_or_exit


@click.group()
def emails() -> None:
    """The emails customers get."""


@emails.command("preview")
@click.argument("template")
@click.option("--locale", default=None, help="e.g. de, fr_CA, pt_BR [default: the policy's].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the HTML here [default: DATA_DIR/preview/TEMPLATE.LOCALE.html].",
)
@click.option("--several", is_flag=True, help="As when one email covers two unpaid invoices.")
@one_line_errors
def emails_preview(template: str, locale: str | None, out: Path | None, several: bool) -> None:
    """Render TEMPLATE (payment_failed, reminder, final_notice, action_required, card_expiring,
    payment_recovered) with sample data: the subject and text here, the HTML to a file."""
    from babel import Locale, UnknownLocaleError

    from worker.email.i18n import catalog_for
    from worker.email.preview import UnknownTemplateError, locales, preview

    settings = settings_or_exit()
    policy = policy_or_exit(settings)
    locale = locale or policy.emails.default_locale
    try:
        Locale.parse(locale)
    except (UnknownLocaleError, ValueError):
        raise BadInput(f"--locale: unknown locale {locale!r} (e.g. de, fr_CA, pt_BR)") from None
    if catalog_for(locale) is None:
        click.echo(
            f"note: no {locale} catalog ({', '.join(locales())}): words in English, "
            f"amounts and dates in {locale}",
            err=True,
        )
    try:
        message = preview(
            template,
            locale=locale,
            company_name=policy.emails.company_name,
            support_email=policy.emails.support_email,
            other_invoices=several,
        )
    except UnknownTemplateError as exc:
        raise BadInput(str(exc)) from None
    out = out or settings.data_dir / "preview" / f"{template}.{locale}.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(message.html, encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"--out: cannot write {out} ({exc.strerror})") from None
    click.echo(f"Subject: {message.subject}\n\n{message.text}")
    click.echo(f"HTML: {out}")
