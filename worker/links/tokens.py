"""Tokens of the card-update links: ``<kid>.<link id>.<mac>``.

The link id is 128 random bits (it names a row, nothing else); the MAC is HMAC-SHA256 over
``<kid>.<link id>`` with the key ``kid`` names, cut to 128 bits. A token whose key id is not
configured any more, or whose MAC does not match, is refused before any database look-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from worker.settings import LinkKey

_MAC_BYTES = 16


class BadLinkError(ValueError):
    """Not a token signed by a key we hold."""


def new_link_id() -> str:
    return _b64(secrets.token_bytes(16))


def sign(key: LinkKey, link_id: str) -> str:
    signed = f"{key.kid}.{link_id}"
    return f"{signed}.{_mac(key, signed)}"


def link_id_of(keys: tuple[LinkKey, ...], token: str) -> str:
    """The link id ``token`` carries; raises :class:`BadLinkError` unless a key we hold
    signed it."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise BadLinkError(token[:8])
    kid, link_id, mac = parts
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise BadLinkError(token[:8])
    if not hmac.compare_digest(mac.encode(), _mac(key, f"{kid}.{link_id}").encode()):
        raise BadLinkError(token[:8])
    return link_id


def _mac(key: LinkKey, signed: str) -> str:
    digest = hmac.new(key.secret.reveal().encode(), signed.encode(), hashlib.sha256).digest()
    return _b64(digest[:_MAC_BYTES])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
