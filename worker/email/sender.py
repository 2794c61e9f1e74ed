"""Delivers a rendered email: over SMTP, or as an ``.eml`` file in a local outbox folder.

Owns the MIME message (multipart/alternative, text first), its deterministic Message-ID, the
SMTP URL format and the mapping of SMTP failures to transient / permanent errors. It does not
decide whether an email should go out or record that it did: the ``notifications`` row, unique
per case and step, is the proof of "sent once" and lives with the caller.

Error classes. A 5xx reply to this message's envelope or content (MAIL, RCPT, DATA; e.g.
550 unknown recipient) is :class:`PermanentEmailError`: sending it again will not help. Anything
else is :class:`TransientEmailError`: connection refused or dropped, timeouts, TLS failures, 4xx
replies, and session-level rejections such as a 535 on AUTH or a 554 greeting. Those say
nothing about this message; they are configuration or server trouble that ops can fix, after
which a retry should succeed rather than the message being written off.

Recipient addresses appear in logs and error messages only through :func:`mask_email`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import smtplib
import ssl
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from worker import clock

logger = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 10
_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class EmailDeliveryError(Exception):
    """Base class: the email was not handed over."""


class TransientEmailError(EmailDeliveryError):
    """Try again later (connection trouble, 4xx, server or configuration problems)."""


class PermanentEmailError(EmailDeliveryError):
    """The server refused this message for good (5xx to MAIL/RCPT/DATA)."""


class UnconfirmedEmailError(EmailDeliveryError):
    """The whole message went to the server, then the connection was lost before its
    answer: it has most likely been delivered, so it must not be sent again."""


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    from_addr: str
    subject: str
    text: str
    html: str
    message_id_key: str  # our idempotency key, e.g. "dunning:<case>:<step>"
    language: str | None = None  # BCP 47 tag of the words, e.g. "pt-BR" (Content-Language)

    def __post_init__(self) -> None:
        if "@" not in self.to or not self.message_id_key:
            msg = "OutgoingEmail needs a recipient address and a message_id_key"
            raise ValueError(msg)


class Sender(Protocol):
    def send(self, email: OutgoingEmail) -> None: ...


def mask_email(addr: str) -> str:
    """``"jane.doe@example.com"`` -> ``"j***@example.com"``; no address -> ``"***"``."""
    local, at, domain = (parseaddr(addr)[1] or addr).rpartition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


def build_mime(email: OutgoingEmail) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.from_addr
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(clock.now())
    msg["Message-ID"] = _message_id(email)
    msg["X-Dunning-Key"] = email.message_id_key
    # RFC 3834: tells vacation responders not to answer; people can still reply.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    if email.language:  # after the bodies: setting content clears Content-* headers
        msg["Content-Language"] = email.language
    return msg


def _message_id(email: OutgoingEmail) -> str:
    """Same key, same Message-ID: a resend after an ambiguous failure is recognisably a copy."""
    digest = hashlib.sha256(email.message_id_key.encode()).hexdigest()[:32]
    domain = parseaddr(email.from_addr)[1].rpartition("@")[2] or "dunning-worker.invalid"
    return f"<{digest}@{domain}>"


class SmtpSender:
    """``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://[user:pass@]host[:port]``.

    Default ports: 25 (smtp), 587 (smtp with starttls), 465 (smtps). One connection per send.
    """

    def __init__(self, url: str) -> None:
        url = str.__str__(url)  # accept worker.settings.Secret without triggering its masking
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"starttls"}
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname or unknown:
            msg = "DUNNING_SMTP_URL: expected smtp://[user:pass@]host[:port][?starttls=1]"
            raise ValueError(msg + " or smtps://[user:pass@]host[:port]")
        flag = options.get("starttls", "").lower()
        if flag not in _TRUE | _FALSE or (flag in _TRUE and parts.scheme == "smtps"):
            msg = "DUNNING_SMTP_URL: starttls must be 0 or 1 (and only with smtp://)"
            raise ValueError(msg)
        self._ssl = parts.scheme == "smtps"
        self._starttls = flag in _TRUE
        self._host = parts.hostname
        kind = "smtp+starttls" if self._starttls else parts.scheme
        try:
            self._port = parts.port or _DEFAULT_PORTS[kind]
        except ValueError:  # urllib's message is fine but does not name the variable
            msg = "DUNNING_SMTP_URL: the port must be a number from 1 to 65535"
            raise ValueError(msg) from None
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password or "")

    def __repr__(self) -> str:  # never the password
        return f"SmtpSender({'smtps' if self._ssl else 'smtp'}://{self._host}:{self._port})"

    def send(self, email: OutgoingEmail) -> None:
        msg = build_mime(email)
        try:
            smtp = self._connect()
        except (smtplib.SMTPException, OSError) as exc:  # refused, timeout, TLS, 554 greeting
            raise self._unavailable(exc) from exc
        transmitted = _watch_for_end_of_data(smtp)
        try:
            if self._starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._username:
                smtp.login(self._username, self._password)
            smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:  # the only recipient was refused
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply, email) from None  # the cause repeats the address
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, email) from None
        except (smtplib.SMTPException, OSError) as exc:  # AUTH, STARTTLS, dropped connection
            if transmitted:  # the message is with the server; only its answer was lost
                msg_ = f"connection lost after the message was sent: {type(exc).__name__}"
                raise UnconfirmedEmailError(msg_) from exc
            raise self._unavailable(exc) from exc
        finally:
            _close(smtp)
        logger.info(
            "email sent",
            extra={"to": mask_email(email.to), "dunning_key": email.message_id_key},
        )

    def _unavailable(self, exc: Exception) -> TransientEmailError:
        msg = f"SMTP {self._host}:{self._port} unavailable: {type(exc).__name__}: {exc}"
        return TransientEmailError(msg)

    def _connect(self) -> smtplib.SMTP:
        if self._ssl:
            return smtplib.SMTP_SSL(
                self._host,
                self._port,
                timeout=SMTP_TIMEOUT_SECONDS,
                context=ssl.create_default_context(),
            )
        return smtplib.SMTP(self._host, self._port, timeout=SMTP_TIMEOUT_SECONDS)


class _Transmitted:
    def __init__(self) -> None:
        self.done = False

    def __bool__(self) -> bool:
        return self.done


def _watch_for_end_of_data(smtp: smtplib.SMTP) -> _Transmitted:
    """Notes when the message's last line (``.``) has been written to the server."""
    seen, write = _Transmitted(), smtp.send

    def send(data: Any) -> None:
        write(data)
        if isinstance(data, bytes) and data.endswith(b"\r\n.\r\n"):
            seen.done = True

    smtp.send = send  # type: ignore[method-assign,assignment]  # this connection only
    return seen


def _close(smtp: smtplib.SMTP) -> None:
    """Once DATA is accepted the message is sent; a failing QUIT must not turn that into an
    error (the caller would retry and the customer get it twice)."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()


def _classify(code: int, reply: bytes | str, email: OutgoingEmail) -> EmailDeliveryError:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    text = text.replace(parseaddr(email.to)[1] or email.to, mask_email(email.to))
    msg = f"SMTP {code} for {mask_email(email.to)}: {text}"
    return PermanentEmailError(msg) if 500 <= code < 600 else TransientEmailError(msg)


class OutboxSender:
    """Writes ``<folder>/<safe key>-<hash>.eml``; the same key always lands in the same file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_for(self, key: str) -> Path:
        readable = _UNSAFE_FILENAME_CHARS.sub("_", key).strip("._")[:80]
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]  # "a:b" and "a_b" stay apart
        return self.folder / f"{readable}-{digest}.eml"

    def send(self, email: OutgoingEmail) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path_for(email.message_id_key)
        data = build_mime(email).as_bytes()
        # Write aside, then rename: a crash never leaves half a message under the final name.
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info(
            "email written to outbox",
            extra={
                "to": mask_email(email.to),
                "dunning_key": email.message_id_key,
                "path": str(target),
            },
        )


def sender_from_url(url: str | None, *, outbox: Path) -> Sender:
    """``DUNNING_SMTP_URL`` -> a sender. Unset -> the outbox folder; ``file://`` also means the
    outbox, at the URL's path (as ``worker.settings.Settings.outbox_dir`` reads it)."""
    url = str.__str__(url) if url else ""
    scheme = urlsplit(url).scheme
    if not url:
        return OutboxSender(outbox)
    if scheme == "file":
        return OutboxSender(Path(urlsplit(url).path))
    if scheme in {"smtp", "smtps"}:
        return SmtpSender(url)
    msg = f"DUNNING_SMTP_URL: unsupported scheme {scheme!r} (expected smtp, smtps or file)"
    raise ValueError(msg)
