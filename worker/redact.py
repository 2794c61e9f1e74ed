"""Keeping personal data out of logs and stored error texts: email addresses are masked
(``jane.doe@example.com`` -> ``j***@example.com``), the same way the email sender masks the
recipients it names.

:func:`redact` for a text we store (an inbox error, a note), :func:`install` for every
handler of the root logger (the CLI and the Celery processes call it once logging is set).
SQL parameters never reach an error text in the first place (``hide_parameters``,
:func:`worker.db.make_engine`).
"""

from __future__ import annotations

import logging
import re

# Starts only where an address can start (not inside a longer word), so a long run of
# letters with no "@" is scanned once, not once per position; unicode letters count too.
_EMAIL = re.compile(r"(?<![\w.%+-])([\w.%+-])[\w.%+-]*@([\w-]+(?:\.[\w-]+)+)")


def redact(text: str) -> str:
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
