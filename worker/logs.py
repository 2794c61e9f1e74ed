"""How every process logs: one handler on the root logger, on stderr, as text or as JSON
(``DUNNING_LOG_FORMAT``), masked by :mod:`worker.redact` either way.

JSON is one object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
then the record's structured extras (``extra={...}``; a Celery task's name and id), and
``exc_info`` with the traceback. Every string value is masked before encoding (and the line
once more after), so an extra cannot carry an email address or a secret past the redaction.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from worker import redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's records carry an ANSI-coloured copy of the message; Python 3.12 adds taskName.
_NOT_EXTRAS = (*RESERVED_ATTRS, "color_message", "taskName")


class JsonLines(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=_NOT_EXTRAS,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        super().add_fields(log_data, record, message_dict)

    def formatException(self, ei: Any) -> str | list[str]:  # type: ignore[override]
        return _masked(super().formatException(ei))

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Mask every string before encoding: once encoded, a non-ASCII letter is an escape,
        an address around it no longer reads as one, and masking inside an escape would
        break the JSON."""
        return _masked(super().process_log_record(log_data))

    def format(self, record: logging.LogRecord) -> str:
        return redact.redact(super().format(record))  # a backstop; the values are masked


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return redact.redact(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def formatter(log_format: str) -> logging.Formatter:
    return JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(*, level: int, log_format: str) -> None:
    """Replace the root logger's handlers with one on stderr in ``log_format``, masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # a library's warning is a log line too, in the same format
    redact.install()
