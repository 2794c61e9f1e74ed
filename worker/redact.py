"""Keeping personal data and secrets out of logs and stored error texts: email addresses are
masked (``jane.doe@example.com`` -> ``j***@example.com``), the same way the email sender masks
the recipients it names; so are Stripe keys and webhook secrets (``sk_live_***``,
``whsec_***``), passwords in URLs (``smtp://user:***@host``) and every secret value the process
was configured with (:func:`add_secrets`: link keys, the app's webhook secret and token).

:func:`redact` for a text we store (an inbox error, a note), :func:`install` for every
handler of the root logger (the CLI and the Celery processes call it once logging is set).
SQL parameters never reach an error text in the first place (``hide_parameters``,
:func:`worker.db.make_engine`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Starts only where an address can start (not inside a longer word), so a long run of
# letters with no "@" is scanned once, not once per position; unicode letters count too.
_EMAIL = re.compile(r"(?<![\w.%+-])([\w.%+-])[\w.%+-]*@([\w-]+(?:\.[\w-]+)+)")
# Stripe's secret and restricted keys and webhook signing secrets: the prefix stays readable.
_STRIPE_SECRET = re.compile(r"(?<![A-Za-z0-9])((?:sk|rk)_(?:live|test)_|whsec_)[A-Za-z0-9_]+")
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s\"']*:)[^@/\s\"']+@")
_MIN_SECRET = 8  # shorter values would mask ordinary words
_secrets: set[str] = set()


def add_secrets(values: Iterable[str]) -> None:
    """Mask these exact values from now on (the settings' secrets, once they are read)."""
    _secrets.update(v for v in values if len(v) >= _MIN_SECRET)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _STRIPE_SECRET.sub(r"\1***", text)
    return _EMAIL.sub(r"\1***@\2", text)


class RedactingFilter(logging.Filter):
    """Formats the record's message once, masked; its arguments are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Mask every record the handlers of ``logger`` (default: the root) write. The stripe
    library logs whole responses (customers, with their emails) at DEBUG: it is held at
    WARNING whatever the level."""
    logging.getLogger("stripe").setLevel(logging.WARNING)
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
