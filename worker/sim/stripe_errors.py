"""Stripe's API errors for the simulated Stripe peer; stateless.

`ApiError` is an error answer (an HTTP status and Stripe's `error` object). The helpers build the
error objects Stripe sends for invalid requests, missing resources, bad API keys, unknown URLs,
idempotency conflicts and (injected) server faults, plus the docs URL of an error code and the
customer-facing message of a card decline.
"""

from __future__ import annotations

from typing import Any

# Stripe's customer-facing messages for common card errors (docs.stripe.com/declines/codes).
_MESSAGES: dict[str, str] = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "invalid_cvc": "Your card's security code is invalid.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
    "card_velocity_exceeded": "Your card was declined for making repeated attempts too "
    "frequently or exceeding its amount limit.",
    "card_decline_rate_limit_exceeded": "You have exceeded the maximum number of declines on "
    "this card in the last 24 hour period. Please contact "
    "your card issuer for more information.",
}


class ApiError(Exception):
    """An error answer: HTTP `status` with body `{"error": error}`.

    `save` says whether an idempotent request that ended in this error stores it for replay
    (Stripe saves results once the endpoint started executing, not validation failures).
    """

    def __init__(self, status: int, error: dict[str, Any], *, save: bool = True) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = {k: v for k, v in error.items() if v is not None}
        self.save = save


def invalid_request(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    status: int = 400,
    save: bool = False,
) -> ApiError:
    return ApiError(
        status,
        {
            "type": "invalid_request_error",
            "message": message,
            "code": code,
            "param": param,
            "doc_url": doc_url(code) if code else None,
        },
        save=save,
    )


def resource_missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    return invalid_request(
        f"No such {kind}: '{object_id}'", code="resource_missing", param=param, status=404
    )


def auth_error(header: str | None) -> dict[str, Any]:
    if not header:
        message = (
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for "
            "details, or we can help at https://support.stripe.com/."
        )
    else:
        key = header.partition(" ")[2].strip()
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else key
        message = f"Invalid API Key provided: {masked}"
    return {"type": "invalid_request_error", "message": message}


def unrecognized_url(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "invalid_request_error",
        "message": f"Unrecognized request URL ({method}: {path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
    }


def idempotency_error(key: str, *, concurrent: bool) -> dict[str, Any]:
    if concurrent:
        message = (
            "There is currently another in-progress request using this idempotency key "
            f"('{key}'). Please try again later."
        )
    else:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they "
            f"were first used with. Try using a key other than '{key}' if you meant to "
            "execute a different request."
        )
    return {"type": "idempotency_error", "message": message}


def fault_error(status: int) -> dict[str, Any]:
    """The error body of an injected fault: Stripe's rate-limit body for 429, else api_error."""
    if status == 429:
        return {
            "type": "invalid_request_error",
            "code": "rate_limit",
            "doc_url": doc_url("rate_limit"),
            "message": "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
        }
    return {"type": "api_error", "message": f"An unknown error occurred (HTTP {status})."}


def doc_url(code: str) -> str:
    return f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def decline_message(code: str, decline_code: str | None) -> str:
    return _MESSAGES.get(decline_code or "") or _MESSAGES.get(code) or "Your card was declined."
