"""Process settings: read once from the environment, validated, secrets never printed.

The contract is DESIGN §4. Every variable has an embedded default so that a bare machine runs
the demo: SQLite under ``.dunning/``, a broker that needs no server (kombu's filesystem
transport under ``.dunning/broker``) and emails written to ``.dunning/outbox``.

Redis database numbering in production: 0 = Celery broker and the fleet's Stripe budget
(``dunning:stripe-budget:*``). (Results are not stored.)

Nothing here is read at import time: callers use :func:`load_settings`, and tests build
:class:`Settings` directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

EMBEDDED_BROKER_URL = "filesystem://"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
DEFAULT_CONFIG = "config/dunning.toml"
# The SQLite database, embedded broker folders, outbox, beat schedule: relative to the working
# directory unless DUNNING_DATA_DIR says where. Nothing is written outside it.
DATA_DIR = Path(".dunning")


def default_database_url(data_dir: Path = DATA_DIR) -> str:
    return f"sqlite:///{data_dir / 'dunning.db'}"


LOG_FORMATS = ("text", "json")
_BROKER_SCHEMES = {"filesystem", "redis", "rediss", "amqp", "amqps", "pyamqp", "memory"}
_SMTP_SCHEMES = {"smtp", "smtps", "file"}


class SettingError(ValueError):
    """One setting is missing or malformed; the message starts with the variable's name."""


class Secret(str):
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"

    def __str__(self) -> str:
        return "**********"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class LinkKey:
    """One key for the signed card-update links: ``kid`` names it inside each token."""

    kid: str
    secret: Secret


_KID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
LINK_SECRET_MIN = 32


@dataclass(frozen=True)
class Settings:
    database_url: str = default_database_url()
    broker_url: str = EMBEDDED_BROKER_URL
    config_path: Path = Path(DEFAULT_CONFIG)
    smtp_url: Secret | None = None  # None: write emails to DATA_DIR/outbox
    public_url: str = DEFAULT_PUBLIC_URL
    stripe_api_key: Secret | None = None
    stripe_webhook_secret: Secret | None = None
    stripe_api_base: str | None = None  # None: Stripe's own
    stripe_timeout_s: float = 80.0  # the stripe library's own default
    # The fleet-wide Stripe budget (worker.billing.budget), requests per second of every
    # process together: Stripe's live-mode limits (test mode allows 25 each).
    stripe_read_rps: float = 100.0
    stripe_write_rps: float = 100.0
    # Card-update link keys, newest first: the first signs, all verify (rotation).
    link_keys: tuple[LinkKey, ...] = ()
    # The customer's app: where signed access webhooks go, the secret that signs them, and
    # the token its GET /v1/customers/{id}/access calls present.
    app_webhook_url: str | None = None
    app_webhook_secret: Secret | None = None
    app_api_token: Secret | None = None
    data_dir: Path = field(default=DATA_DIR)
    # Where `dunning worker` serves its /metrics (host, port); None: not served.
    metrics_address: tuple[str, int] | None = None
    log_format: str = "text"  # "text" or "json" (one object per line)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this process knows, for the log redaction (:mod:`worker.redact`)."""
        found = [
            self.smtp_url,
            self.stripe_api_key,
            self.stripe_webhook_secret,
            self.app_webhook_secret,
            self.app_api_token,
            *(key.secret for key in self.link_keys),
        ]
        return tuple(s.reveal() for s in found if s is not None)

    @property
    def outbox_dir(self) -> Path:
        if self.smtp_url and self.smtp_url.reveal().startswith("file://"):
            return Path(urlsplit(self.smtp_url.reveal()).path)
        return self.data_dir / "outbox"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def default_config_path() -> Path:
    """``config/dunning.toml`` in the working directory, else the copy shipped with the
    package (so ``dunning demo`` works from anywhere)."""
    local = Path(DEFAULT_CONFIG)
    if local.is_file():
        return local
    from worker.resources import bundled

    return bundled("config", "dunning.toml") / "dunning.toml"


def _url(name: str, value: str, schemes: set[str]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        msg = f"{name}: unsupported scheme {parts.scheme!r} (expected one of {allowed})"
        raise SettingError(msg)
    return value


def _database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError:
        msg = "DUNNING_DATABASE_URL: not a database URL (e.g. postgresql+psycopg://user@host/db)"
        raise SettingError(msg) from None
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        msg = f"DUNNING_DATABASE_URL: unsupported database {url.get_backend_name()!r}"
        raise SettingError(msg + " (sqlite or postgresql)")
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        value = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return value


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        msg = f"{name}: must be an http(s) URL, got {value!r}"
        raise SettingError(msg)
    return value.rstrip("/")


def _secret(name: str, value: str, prefixes: tuple[str, ...]) -> Secret:
    if not value.startswith(prefixes):
        msg = f"{name}: malformed (expected it to start with {' or '.join(prefixes)})"
        raise SettingError(msg)
    return Secret(value)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raises :class:`SettingError` on the first bad one."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None:
            return None
        if not value.strip():
            msg = f"{name}: set but empty (unset it to use the default)"
            raise SettingError(msg)
        return value.strip()

    data_dir = Path(get("DUNNING_DATA_DIR") or DATA_DIR)
    database_url = _database_url(get("DUNNING_DATABASE_URL") or default_database_url(data_dir))
    broker = _url(
        "DUNNING_BROKER_URL", get("DUNNING_BROKER_URL") or EMBEDDED_BROKER_URL, _BROKER_SCHEMES
    )
    smtp = get("DUNNING_SMTP_URL")
    api_key = get("STRIPE_API_KEY")
    webhook_secret = get("STRIPE_WEBHOOK_SECRET")
    api_base = get("STRIPE_API_BASE")
    return Settings(
        database_url=database_url,
        broker_url=broker,
        config_path=Path(config) if (config := get("DUNNING_CONFIG")) else default_config_path(),
        smtp_url=Secret(_url("DUNNING_SMTP_URL", smtp, _SMTP_SCHEMES)) if smtp else None,
        public_url=_http_url("DUNNING_PUBLIC_URL", get("DUNNING_PUBLIC_URL") or DEFAULT_PUBLIC_URL),
        stripe_api_key=_secret("STRIPE_API_KEY", api_key, ("sk_", "rk_")) if api_key else None,
        stripe_webhook_secret=(
            _secret("STRIPE_WEBHOOK_SECRET", webhook_secret, ("whsec_",))
            if webhook_secret
            else None
        ),
        stripe_api_base=_http_url("STRIPE_API_BASE", api_base) if api_base else None,
        stripe_timeout_s=_seconds("STRIPE_TIMEOUT_SECONDS", get("STRIPE_TIMEOUT_SECONDS"), 80.0),
        stripe_read_rps=_rate("DUNNING_STRIPE_READ_RPS", get("DUNNING_STRIPE_READ_RPS")),
        stripe_write_rps=_rate("DUNNING_STRIPE_WRITE_RPS", get("DUNNING_STRIPE_WRITE_RPS")),
        link_keys=_link_keys(get("DUNNING_LINK_KEYS")),
        **_app(get),
        data_dir=data_dir,
        metrics_address=_address("DUNNING_METRICS_PORT", get("DUNNING_METRICS_PORT")),
        log_format=log_format(env),
    )


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``DUNNING_LOG_FORMAT`` alone: the CLI sets up logging before it reads the rest."""
    env = os.environ if environ is None else environ
    value = env.get("DUNNING_LOG_FORMAT", "text").strip().lower()
    if value not in LOG_FORMATS:
        given = env.get("DUNNING_LOG_FORMAT")
        msg = f"DUNNING_LOG_FORMAT: expected text or json, got {given!r}"
        raise SettingError(msg)
    return value


def _address(name: str, value: str | None) -> tuple[str, int] | None:
    """``PORT`` (loopback) or ``HOST:PORT``."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or (":" in value and not host):
        msg = f"{name}: expected a port (1-65535) or host:port, got {value!r}"
        raise SettingError(msg)
    return (host.strip("[]") or "127.0.0.1", int(port))


def _app(get: Callable[[str], str | None]) -> dict[str, Any]:
    """The app-facing settings: a webhook URL needs its signing secret, and both the secret
    and the API token must be long enough not to be guessed."""
    url, secret, token = (
        get("DUNNING_APP_WEBHOOK_URL"),
        get("DUNNING_APP_WEBHOOK_SECRET"),
        get("DUNNING_APP_API_TOKEN"),
    )
    if url is not None and secret is None:
        msg = "DUNNING_APP_WEBHOOK_SECRET: required with DUNNING_APP_WEBHOOK_URL, not set"
        raise SettingError(msg)
    for name, value in (("DUNNING_APP_WEBHOOK_SECRET", secret), ("DUNNING_APP_API_TOKEN", token)):
        if value is not None and len(value) < LINK_SECRET_MIN:
            msg = f"{name}: at least {LINK_SECRET_MIN} characters"
            raise SettingError(msg)
    return {
        # checked, kept as given (a trailing slash may matter to the receiver)
        "app_webhook_url": url if url and _http_url("DUNNING_APP_WEBHOOK_URL", url) else None,
        "app_webhook_secret": Secret(secret) if secret else None,
        "app_api_token": Secret(token) if token else None,
    }


def _link_keys(value: str | None) -> tuple[LinkKey, ...]:
    """``kid:secret[,kid:secret...]``, newest first. Rotate by putting a new key in front and
    dropping the old one once its links have expired."""
    if value is None:
        return ()
    keys: list[LinkKey] = []
    for part in value.split(","):
        kid, sep, secret = part.strip().partition(":")
        if not sep or not _KID.match(kid) or len(secret) < LINK_SECRET_MIN:
            msg = (
                "DUNNING_LINK_KEYS: expected kid:secret[,kid:secret...] with kid of 1-16 "
                f"letters, digits, '-' or '_' and secrets of at least {LINK_SECRET_MIN} "
                f"characters (a key {kid[:16]!r} is not)"
            )
            raise SettingError(msg)
        if any(k.kid == kid for k in keys):
            msg = f"DUNNING_LINK_KEYS: key id {kid!r} appears twice"
            raise SettingError(msg)
        keys.append(LinkKey(kid, Secret(secret)))
    return tuple(keys)


def _seconds(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 600:
        msg = f"{name}: expected a number of seconds above 0 and at most 600, got {value!r}"
        raise SettingError(msg)
    return seconds


MAX_RPS = 10_000.0


def _rate(name: str, value: str | None, default: float = 100.0) -> float:
    """Requests per second for the whole fleet (fractions allowed: 0.5 is one every 2 s)."""
    if value is None:
        return default
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0 < rate <= MAX_RPS:  # also refuses nan and inf
        msg = f"{name}: expected requests per second above 0 and at most {MAX_RPS:g}, got {value!r}"
        raise SettingError(msg)
    return rate
