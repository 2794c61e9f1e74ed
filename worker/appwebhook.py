"""Signed webhooks to the customer's app, signed the way Stripe signs its own.

The header is ``Dunning-Signature: t=<unix time>,v1=<hex HMAC-SHA256>`` over
``"<t>.<raw body>"`` with the shared secret (``DUNNING_APP_WEBHOOK_SECRET``). A receiver
recomputes it over the raw body, compares in constant time and refuses a ``t`` more than a few
minutes old (:func:`verify` is that check, for receivers written in Python and for tests).
"""

from __future__ import annotations

import hashlib
import hmac

import httpx

SIGNATURE_HEADER = "Dunning-Signature"
TOLERANCE_S = 300
TIMEOUT_S = 10.0


class NoAnswerError(Exception):
    """The receiver could not be reached or did not answer in time."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, body: bytes, header: str, *, now: int, tolerance: int = TOLERANCE_S
) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return abs(now - timestamp) <= tolerance and hmac.compare_digest(parts.get("v1", ""), expected)


def post(url: str, secret: str, body: bytes, *, timestamp: int, timeout: float = TIMEOUT_S) -> int:
    """POST ``body`` signed at ``timestamp``; the receiver's status. Raises
    :class:`NoAnswerError` when there is none."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "dunning-worker",
        SIGNATURE_HEADER: signature(secret, body, timestamp),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise NoAnswerError(type(exc).__name__) from exc
    return response.status_code
