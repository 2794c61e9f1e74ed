"""Log lines as text or JSON (``DUNNING_LOG_FORMAT``): the fields a log pipeline indexes, and
no email address or secret in either format."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from worker import logs, redact
from worker.redact import RedactingFilter

LINK_SECRET = "link-key-" + "q" * 32
Capture = tuple[logging.Logger, io.StringIO, "logging.StreamHandler[io.StringIO]"]


@pytest.fixture
def log_to() -> Iterator[Capture]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())  # as worker.logs.configure installs it
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def _log_some(logger: logging.Logger) -> None:
    redact.add_secrets([LINK_SECRET])  # what settings_or_exit does with the settings' secrets
    logger.info(
        "email to %s for %s",
        "jane.doe@example.com",
        "in_1",
        extra={"to": "jane.doe@example.com", "attempt": 2, "key": "sk_live_abc123DEF"},
    )
    try:
        msg = f"smtp://mailer:hunter2pass@smtp.example.com refused; signed with {LINK_SECRET}"
        raise RuntimeError(msg)
    except RuntimeError:
        logger.exception("hand-off failed (whsec_Zyx987)")


def test_json_is_one_object_per_line_with_the_usual_fields(log_to: Capture) -> None:
    logger, stream, handler = log_to
    handler.setFormatter(logs.formatter("json"))
    _log_some(logger)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    when = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert when.tzinfo == UTC
    assert abs(time.time() - when.timestamp()) < 60
    assert first["time"].endswith("Z")
    assert (first["level"], first["logger"]) == ("INFO", "tests.logs")
    assert first["message"] == "email to j***@example.com for in_1"
    # structured extras stay structured, and masked
    assert (first["attempt"], first["to"], first["key"]) == (2, "j***@example.com", "sk_live_***")
    assert second["level"] == "ERROR"
    assert second["message"] == "hand-off failed (whsec_***)"
    assert "RuntimeError" in second["exc_info"]
    assert "smtp://mailer:***@smtp.example.com" in second["exc_info"]
    _assert_nothing_leaks(stream.getvalue())


def test_text_lines_are_masked_too(log_to: Capture) -> None:
    logger, stream, handler = log_to
    handler.setFormatter(logs.formatter("text"))
    _log_some(logger)
    text = stream.getvalue()
    assert " INFO tests.logs: email to j***@example.com for in_1" in text
    _assert_nothing_leaks(text)


def _assert_nothing_leaks(text: str) -> None:
    for leak in ("jane.doe", "abc123DEF", "hunter2pass", "Zyx987", LINK_SECRET):
        assert leak not in text


def _json_exception_line(message: str, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("tests.logs.unicode")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        raise RuntimeError(message)
    except RuntimeError:
        logger.exception("send failed", extra=extra)
    return stream.getvalue()


def test_a_non_ascii_address_leaves_valid_masked_json() -> None:
    """Masked before encoding: after it, ö is \\u00f6, the address no longer reads as one,
    and masking inside the escape would break the line."""
    line = _json_exception_line("550 unknown recipient jöhn.doe@example.com")
    record = json.loads(line)
    assert "doe@" not in record["exc_info"]
    assert "j***@example.com" in record["exc_info"]


def test_addresses_at_non_ascii_domains_are_masked_in_extras_too() -> None:
    line = _json_exception_line(
        "550 unknown recipient jane.doe@exämple.de", to="jane.doe@müller.de"
    )
    assert "jane.doe" not in line
    assert json.loads(line)["to"] == "j***@müller.de"
