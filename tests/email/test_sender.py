"""Delivery against a real SMTP server (aiosmtpd on loopback) and a real outbox folder."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.processes import free_port
from tests.support.smtp import Recorder
from tests.support.smtp import smtp_server as running_smtp
from worker.email.sender import (
    OutboxSender,
    OutgoingEmail,
    PermanentEmailError,
    SmtpSender,
    TransientEmailError,
    build_mime,
    mask_email,
    sender_from_url,
)
from worker.settings import Secret

EMAIL = OutgoingEmail(
    to="jane.doe@example.com",
    from_addr="Acme Billing <billing@acme.example>",
    subject="Your Acme payment didn't go through",
    text="Hi Jane,\n\nPlease update your card: https://billing.example.com/u/tok\n",
    html='<p>Hi Jane, <a href="https://billing.example.com/u/tok">update your card</a></p>',
    message_id_key="dunning:42:payment_failed",
)


def accept_jane(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"jane", b"p@ss w")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[tuple[Recorder, int]]:
    with running_smtp(**getattr(request, "param", {})) as server:
        yield server


def test_smtp_delivers_both_parts_and_the_key(smtp_server: tuple[Recorder, int]) -> None:
    recorder, port = smtp_server
    SmtpSender(f"smtp://127.0.0.1:{port}").send(EMAIL)

    [received] = recorder.messages
    assert received.get_content_type() == "multipart/alternative"
    assert received["X-Dunning-Key"] == "dunning:42:payment_failed"
    assert received["Subject"] == EMAIL.subject
    assert received["To"] == "jane.doe@example.com"
    assert received["Message-ID"].endswith("@acme.example>")
    assert received["Auto-Submitted"] == "auto-generated"
    text, html = (part.get_content() for part in received.iter_parts())
    assert "https://billing.example.com/u/tok" in text
    assert '<a href="https://billing.example.com/u/tok">' in html


def test_message_id_is_derived_from_the_key() -> None:
    again = build_mime(EMAIL)["Message-ID"]
    assert again == build_mime(EMAIL)["Message-ID"]
    other = OutgoingEmail(**{**EMAIL.__dict__, "message_id_key": "dunning:42:reminder"})
    assert build_mime(other)["Message-ID"] != again


def test_bad_recipient_is_permanent_and_masked(smtp_server: tuple[Recorder, int]) -> None:
    _, port = smtp_server
    email = OutgoingEmail(**{**EMAIL.__dict__, "to": "nobody@example.com"})
    with pytest.raises(PermanentEmailError, match="550") as caught:
        SmtpSender(f"smtp://127.0.0.1:{port}").send(email)
    assert "nobody@example.com" not in str(caught.value)
    assert "n***@example.com" in str(caught.value)


def test_4xx_is_transient(smtp_server: tuple[Recorder, int]) -> None:
    _, port = smtp_server
    email = OutgoingEmail(**{**EMAIL.__dict__, "to": "busy@example.com"})
    with pytest.raises(TransientEmailError, match="451"):
        SmtpSender(f"smtp://127.0.0.1:{port}").send(email)


def test_connection_refused_is_transient() -> None:
    with pytest.raises(TransientEmailError, match="unavailable"):
        SmtpSender(f"smtp://127.0.0.1:{free_port()}").send(EMAIL)


def test_starttls_not_offered_is_transient(smtp_server: tuple[Recorder, int]) -> None:
    recorder, port = smtp_server
    with pytest.raises(TransientEmailError, match="SMTPNotSupportedError"):
        SmtpSender(f"smtp://127.0.0.1:{port}?starttls=1").send(EMAIL)
    assert recorder.messages == []  # never falls back to plain text


def test_tls_failure_is_transient(smtp_server: tuple[Recorder, int]) -> None:
    _, port = smtp_server  # a plain-text server: the TLS handshake cannot succeed
    with pytest.raises(TransientEmailError, match="SSL"):
        SmtpSender(f"smtps://127.0.0.1:{port}").send(EMAIL)


AUTH = {"authenticator": accept_jane, "auth_require_tls": False}
AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS"


@pytest.mark.filterwarnings(AUTH_WARNING)
@pytest.mark.parametrize("smtp_server", [AUTH], indirect=True)
def test_credentials_come_from_the_url(smtp_server: tuple[Recorder, int]) -> None:
    recorder, port = smtp_server
    SmtpSender(f"smtp://jane:p%40ss%20w@127.0.0.1:{port}").send(EMAIL)
    assert len(recorder.messages) == 1


@pytest.mark.filterwarnings(AUTH_WARNING)
@pytest.mark.parametrize("smtp_server", [AUTH], indirect=True)
def test_wrong_password_is_transient(smtp_server: tuple[Recorder, int]) -> None:
    """A 535 is our configuration, not this message: retry after ops fix it."""
    recorder, port = smtp_server
    with pytest.raises(TransientEmailError, match="SMTPAuthenticationError"):
        SmtpSender(f"smtp://jane:wrong@127.0.0.1:{port}").send(EMAIL)
    assert recorder.messages == []


def test_outbox_writes_one_file_per_key(tmp_path: Path) -> None:
    outbox = OutboxSender(tmp_path / "outbox")
    outbox.send(EMAIL)
    outbox.send(EMAIL)  # a redelivered task
    [written] = (tmp_path / "outbox").iterdir()
    assert written == outbox.path_for(EMAIL.message_id_key)
    assert written.name.startswith("dunning_42_payment_failed-")
    assert written.suffix == ".eml"

    parsed = message_from_bytes(written.read_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["X-Dunning-Key"] == EMAIL.message_id_key
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]

    outbox.send(OutgoingEmail(**{**EMAIL.__dict__, "message_id_key": "dunning:42:reminder"}))
    assert len(list((tmp_path / "outbox").iterdir())) == 2


def test_outbox_keys_that_look_alike_stay_apart(tmp_path: Path) -> None:
    outbox = OutboxSender(tmp_path)
    assert outbox.path_for("a:b") != outbox.path_for("a_b")
    assert outbox.path_for("../../etc/passwd").parent == tmp_path


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (None, OutboxSender),
        ("", OutboxSender),
        ("smtp://localhost:1025", SmtpSender),
        ("smtps://u:p@mail.example:465", SmtpSender),
        ("smtp://u:p@mail.example?starttls=1", SmtpSender),
    ],
)
def test_sender_from_url(url: str | None, kind: type, tmp_path: Path) -> None:
    sender = sender_from_url(url, outbox=tmp_path)
    assert isinstance(sender, kind)
    if isinstance(sender, OutboxSender):
        assert sender.folder == tmp_path


def test_file_url_means_the_outbox_at_that_path(tmp_path: Path) -> None:
    sender = sender_from_url(f"file://{tmp_path}/mails", outbox=Path("unused"))
    assert isinstance(sender, OutboxSender)
    assert sender.folder == tmp_path / "mails"


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example",
        "smtp://",
        "smtp://host?starttls=maybe",
        "smtps://host?starttls=1",
        "smtp://host?tls=1",
        "smtp://host:99999",
        "smtp://host:port",
    ],
)
def test_bad_urls_are_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DUNNING_SMTP_URL"):
        sender_from_url(url, outbox=tmp_path)


def test_settings_secret_is_accepted(tmp_path: Path) -> None:
    sender = sender_from_url(Secret("smtp://jane:hunter2@mail.example:2525"), outbox=tmp_path)
    assert repr(sender) == "SmtpSender(smtp://mail.example:2525)"


def test_password_never_shown() -> None:
    sender = SmtpSender("smtps://jane:hunter2@mail.example")
    assert "hunter2" not in repr(sender)
    assert repr(sender) == "SmtpSender(smtps://mail.example:465)"


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane.doe@example.com", "j***@example.com"),
        ("Jane Doe <jane.doe@example.com>", "j***@example.com"),
        ("j@example.com", "j***@example.com"),
        ("not-an-address", "***"),
        ("", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked
