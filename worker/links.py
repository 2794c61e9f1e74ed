"""Signed one-click links for emails: ``/u/<token>`` opens a fresh billing-portal session.

Portal sessions expire within minutes, so an email cannot carry one; it carries a token that
names the customer and an expiry, signed with a key derived from STRIPE_WEBHOOK_SECRET (the
service's one secret). The intake verifies it and mints the session when the customer clicks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

LINK_VALIDITY = timedelta(days=30)


class BadLinkError(ValueError):
    """Not a token we signed."""


class ExpiredLinkError(ValueError):
    """A token we signed, too old to honour."""


def _key(secret: str) -> bytes:
    return hashlib.sha256(f"dunning-link:{secret}".encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign_link(secret: str, customer_ref: str, *, now: datetime) -> str:
    expires = int((now + LINK_VALIDITY).timestamp())
    body = _b64(f"{customer_ref}|{expires}".encode())
    mac = hmac.new(_key(secret), body.encode(), hashlib.sha256).digest()[:18]
    return f"{body}.{_b64(mac)}"


def verify_link(secret: str, token: str, *, now: datetime) -> str:
    """The customer the token names; raises BadLinkError or ExpiredLinkError."""
    body, _, mac = token.partition(".")
    expected = _b64(hmac.new(_key(secret), body.encode(), hashlib.sha256).digest()[:18])
    if not mac or not hmac.compare_digest(mac, expected):
        raise BadLinkError(token[:8])
    padded = body + "=" * (-len(body) % 4)
    customer_ref, _, expires = base64.urlsafe_b64decode(padded).decode().rpartition("|")
    if now.timestamp() > int(expires):
        raise ExpiredLinkError(customer_ref)
    return customer_ref


def update_card_url(
    public_url: str,
    secret: str | None,
    customer_ref: str,
    *,
    now: datetime,
    fallback: str | None = None,
) -> str:
    """The link to put in an email: our signed link, or ``fallback`` without a secret."""
    if secret is None:
        return fallback or f"{public_url}/"
    return f"{public_url}/u/{sign_link(secret, customer_ref, now=now)}"
