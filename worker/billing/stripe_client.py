"""The one door to Stripe: every call goes through :meth:`StripeGateway._call`.

Owns: the official ``stripe`` client, the tenacity choke point (seconds-scale retries of
transient errors, honouring ``Stripe-Should-Retry`` and ``Retry-After``), and turning Stripe's
answers into our domain values. Permanent errors become domain outcomes (a 402 card_error is a
:class:`PaymentResult` with a decline, never an exception); transient ones that outlive
tenacity surface as :class:`TransientProviderError` for Celery's minutes-scale retry.

With a :class:`~worker.billing.budget.StripeBudget`, each attempt first takes a token of its
kind (reads: ``retrieve``/``list``; every other call writes) from the fleet's shared buckets,
and a 429 pauses the whole fleet for as long as this process backs off. A call whose token
would come after its deadline (``budget_wait_s``, for all its attempts together) is not made
and surfaces as :class:`TransientProviderError`.

Every mutating call carries an idempotency key derived from our own row, so tenacity retries,
Celery retries and redeliveries all reuse it and Stripe replays instead of charging twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import stripe
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from worker.billing.budget import Kind, OverBudgetError, StripeBudget
from worker.billing.declines import (
    decline_from_card_error,
    decline_from_charge,
    decline_from_payment_intent,
    merge_declines,
)
from worker.billing.domain import Card, Decline, DiscountFacts
from worker.billing.normalise import parse_stripe_object, subscription_facts
from worker.telemetry import STRIPE_REQUESTS, STRIPE_SECONDS, timed

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_AFTER_S = 60.0
# How long one call may wait for the fleet's budget, over all its attempts: well inside a
# task's soft time limit (worker.app: 60 s), so a starved call is put back, not killed.
BUDGET_WAIT_S = 15.0
READ_METHODS = frozenset({"retrieve", "list", "search"})


class TransientProviderError(Exception):
    """The provider could not answer now (network, 409, 429, 5xx); try again later."""


class ProviderError(Exception):
    """The provider refused the request for good (4xx other than a card decline)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PaymentResult:
    succeeded: bool
    decline: Decline | None = None
    requires_action: bool = False  # the customer must authenticate (3DS)
    already_paid: bool = False  # paid before our attempt (by the customer or the provider)
    # Accepted but not settled (a bank debit: ACH, SEPA, BACS): the invoice stays open until
    # the provider reports it paid or failed. Neither a recovery nor a decline yet.
    processing: bool = False


def _header(exc: stripe.StripeError, name: str) -> str | None:
    headers = exc.headers or {}
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def is_transient(exc: BaseException) -> bool:
    """Stripe's own rule (stripe-python ``_should_retry``), plus 429 as DESIGN §6 asks."""
    if isinstance(exc, stripe.APIConnectionError):
        return True
    if not isinstance(exc, stripe.StripeError) or isinstance(exc, stripe.CardError):
        return False
    should_retry = _header(exc, "Stripe-Should-Retry")
    if should_retry is not None:
        return should_retry == "true"
    status = exc.http_status or 0
    return status in {409, 429} or status >= 500


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of one HTTP attempt (``dunning_stripe_requests_total``)."""
    if exc is None:
        return "ok"
    if isinstance(exc, stripe.CardError):
        return "declined"
    if isinstance(exc, stripe.APIConnectionError):
        return "connection_error"
    status = exc.http_status if isinstance(exc, stripe.StripeError) else None
    if status == 429:
        return "rate_limited"
    if status is not None and 400 <= status < 500:
        return "client_error"
    return "server_error"  # 5xx, or an answer the library could not read


_backoff = wait_random_exponential(multiplier=0.5, max=5)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, stripe.StripeError):
        retry_after = _header(exc, "Retry-After")
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), MAX_RETRY_AFTER_S)
    return max(0.5, _backoff(state))  # Stripe's SDK never waits less than 0.5 s


def _pause_after_429(exc: stripe.StripeError, attempt: int) -> float:
    """How long the fleet pauses after a 429 on a call's ``attempt``-th try: Stripe's
    Retry-After when it says one, else the ceiling of this process' own back-off (0.5 s
    doubling, at most 5 s), so repeated 429s pause the fleet longer."""
    retry_after = _header(exc, "Retry-After")
    if retry_after and retry_after.replace(".", "", 1).isdigit():
        return min(float(retry_after), MAX_RETRY_AFTER_S)
    return float(min(5.0, 0.5 * 2 ** (attempt - 1)))


def kind_of(operation: str) -> Kind:
    """``invoices.retrieve`` reads (GET); ``invoices.pay``, ``subscriptions.cancel`` write."""
    return "read" if operation.rsplit(".", 1)[-1] in READ_METHODS else "write"


class Page(NamedTuple):
    objects: list[dict[str, Any]]
    has_more: bool


class StripeGateway:
    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        attempts: int = 4,
        wait: Callable[[RetryCallState], float] = _wait,
        timeout_s: float = 80.0,
        budget: StripeBudget | None = None,
        budget_wait_s: float = BUDGET_WAIT_S,
    ) -> None:
        self.budget, self.budget_wait_s = budget, budget_wait_s
        base: Any = {"api": api_base} if api_base else None
        # max_network_retries=0: tenacity below is the single retry layer. A request that
        # times out is retried with the same idempotency key (Stripe replays a charge it made).
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )
        self._retrying = retry(
            retry=retry_if_exception(is_transient),
            wait=wait,
            stop=stop_after_attempt(attempts),
            reraise=True,
        )

    def _call(
        self,
        operation: str,
        fn: Callable[[], T],
        *,
        before_each_attempt: Callable[[], None] | None = None,
    ) -> T:
        """Run one API call (``operation``: Stripe's resource and method, a metrics label);
        a card decline propagates as ``stripe.CardError`` for the caller to turn into an
        outcome, everything else becomes one of our two error types. ``before_each_attempt``
        runs before every attempt, retries included (a rate limiter), outside its timing;
        then the attempt takes its token from the fleet's budget, if there is one."""
        budget, kind = self.budget, kind_of(operation)
        deadline = time.monotonic() + self.budget_wait_s
        attempts = 0

        def attempt() -> T:  # each HTTP attempt is counted, tenacity's retries included
            nonlocal attempts
            attempts += 1
            if before_each_attempt is not None:
                before_each_attempt()
            if budget is not None:
                budget.take(kind, max_wait_s=max(0.0, deadline - time.monotonic()))
            with timed(STRIPE_SECONDS, operation):
                try:
                    answer = fn()
                except Exception as exc:
                    STRIPE_REQUESTS.labels(operation, outcome_of(exc)).inc()
                    if (
                        budget is not None
                        and isinstance(exc, stripe.StripeError)
                        and exc.http_status == 429
                    ):
                        budget.pause(_pause_after_429(exc, attempts))
                    raise
            STRIPE_REQUESTS.labels(operation, "ok").inc()
            return answer

        try:
            return self._retrying(attempt)()
        except stripe.CardError:
            raise
        except OverBudgetError as exc:  # this attempt was not made; a later one replays its key
            raise TransientProviderError(f"stripe: not called, {exc}") from exc
        except stripe.StripeError as exc:
            summary = f"stripe: {type(exc).__name__} (HTTP {exc.http_status})"
            if is_transient(exc):
                raise TransientProviderError(summary) from exc
            raise ProviderError(f"{summary}: {exc.user_message or exc}", code=exc.code) from exc

    # ---- mutations (always with our idempotency key) ----

    def pay_invoice(
        self, invoice_id: str, *, idempotency_key: str, payment_method: str | None = None
    ) -> PaymentResult:
        """Pay the open invoice off-session: with the customer's default card, or with
        ``payment_method`` (another card of that customer)."""
        options: Any = {"idempotency_key": idempotency_key}
        params: Any = {"payment_method": payment_method} if payment_method else {}
        try:
            invoice = self._call(
                "invoices.pay",
                lambda: self._client.v1.invoices.pay(invoice_id, params, options=options),
            )
        except stripe.CardError as exc:
            body = exc.json_body if isinstance(exc.json_body, dict) else {}
            error = body.get("error") or {}
            decline = decline_from_card_error(error)
            action = decline.reason in {"authentication_required", "authentication_not_handled"}
            return PaymentResult(succeeded=False, decline=decline, requires_action=action)
        except ProviderError as exc:
            if exc.code == "invoice_payment_intent_requires_action":
                # Off-session payment needs 3D Secure: only the customer can complete it.
                return PaymentResult(
                    succeeded=False, requires_action=True, decline=Decline(code=exc.code)
                )
            if "already paid" in str(exc).lower():
                return PaymentResult(succeeded=True, already_paid=True)
            raise
        if _as_dict(invoice).get("status") != "paid":  # 200 with the PaymentIntent processing
            return PaymentResult(succeeded=False, processing=True)
        return PaymentResult(succeeded=True)

    def cancel_subscription(self, subscription_id: str, *, idempotency_key: str) -> None:
        options: Any = {"idempotency_key": idempotency_key}
        self._call(
            "subscriptions.cancel",
            lambda: self._client.v1.subscriptions.cancel(subscription_id, options=options),
        )

    def mark_uncollectible(self, invoice_id: str, *, idempotency_key: str) -> None:
        options: Any = {"idempotency_key": idempotency_key}
        self._call(
            "invoices.mark_uncollectible",
            lambda: self._client.v1.invoices.mark_uncollectible(invoice_id, options=options),
        )

    # ---- reads ----

    def saved_card(self, payment_method_id: str) -> tuple[str | None, Card]:
        """A PaymentMethod as it is now: the customer it is attached to (None once detached)
        and its card."""
        found = _as_dict(
            self._call(
                "payment_methods.retrieve",
                lambda: self._client.v1.payment_methods.retrieve(payment_method_id),
            )
        )
        card = parse_stripe_object(found)
        if not isinstance(card, Card):
            msg = f"{payment_method_id} is not a card"
            raise ProviderError(msg)
        customer = found.get("customer")
        return (customer if isinstance(customer, str) else None), card

    def fetch_discounts(self, subscription_id: str) -> tuple[DiscountFacts, ...]:
        """A subscription's discounts with their coupons (webhooks carry only their ids)."""
        found = self._call(
            "subscriptions.retrieve",
            lambda: self._client.v1.subscriptions.retrieve(
                subscription_id, {"expand": ["discounts.source.coupon"]}
            ),
        )
        return subscription_facts(_as_dict(found)).discounts

    def fetch_decline(
        self, *, invoice_id: str, payment_intent_id: str | None, charge_id: str | None
    ) -> Decline:
        """The decline signals of an invoice's latest failed attempt (retry-rules §1.1)."""
        found: list[Decline] = []
        if payment_intent_id is None and charge_id is None:
            payments = self._call(
                "invoice_payments.list",
                lambda: self._client.v1.invoice_payments.list(
                    {"invoice": invoice_id, "expand": ["data.payment.payment_intent"]}
                ),
            )
            failed = [p for p in map(_as_dict, payments.data) if p.get("status") != "paid"]
            for payment in failed[:1]:  # newest first; a paid one carries no decline
                intent = payment.get("payment", {}).get("payment_intent")
                if isinstance(intent, Mapping):
                    found.append(decline_from_payment_intent(intent))
                elif isinstance(intent, str):
                    payment_intent_id = intent
        if payment_intent_id:
            pi_id = payment_intent_id
            pi = _as_dict(
                self._call(
                    "payment_intents.retrieve",
                    lambda: self._client.v1.payment_intents.retrieve(pi_id),
                )
            )
            found.append(decline_from_payment_intent(pi))
        charge_ids = [d.charge_id for d in found if d.charge_id] or (
            [charge_id] if charge_id else []
        )
        if charge_ids:
            ch_id = charge_ids[0]
            charge = _as_dict(
                self._call("charges.retrieve", lambda: self._client.v1.charges.retrieve(ch_id))
            )
            found.append(decline_from_charge(charge))
        return merge_declines(*found)

    def invoice_status(self, invoice_id: str) -> str | None:
        """The invoice's status at the provider right now (draft, open, paid, void,
        uncollectible)."""
        found = _as_dict(
            self._call("invoices.retrieve", lambda: self._client.v1.invoices.retrieve(invoice_id))
        )
        return found.get("status")

    def list_page(
        self,
        resource: str,
        params: Mapping[str, Any],
        *,
        before_each_attempt: Callable[[], None] | None = None,
    ) -> Page:
        """One page of ``customers``, ``subscriptions`` or ``invoices`` (Stripe's list
        parameters: ``limit``, ``starting_after``, ``created``, ``expand``...), as plain dicts.
        ``before_each_attempt`` runs before every attempt, retries included (a rate limiter)."""
        services: dict[str, Any] = {
            "customers": self._client.v1.customers,
            "subscriptions": self._client.v1.subscriptions,
            "invoices": self._client.v1.invoices,
        }
        if resource not in services:
            msg = f"cannot list {resource!r}: expected one of {', '.join(services)}"
            raise ValueError(msg)

        listed = self._call(
            f"{resource}.list",
            lambda: services[resource].list(dict(params)),
            before_each_attempt=before_each_attempt,
        )
        return Page([obj.to_dict() for obj in listed.data], has_more=bool(listed.has_more))

    def portal_url(self, customer_id: str, *, return_url: str, flow: bool = True) -> str:
        """A fresh billing-portal session; with ``flow``, straight to updating the payment
        method (refused by accounts whose portal configuration turns that feature off)."""
        params: Any = {"customer": customer_id, "return_url": return_url}
        if flow:
            params["flow_data"] = {"type": "payment_method_update"}
        session = self._call(
            "billing_portal.sessions.create",
            lambda: self._client.v1.billing_portal.sessions.create(params),
        )
        return str(session.url)


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
