"""HTTP intake (``dunning serve``): verify, persist, enqueue after commit, answer. Nothing else.

``POST /webhooks/stripe``: 400 for a bad or missing signature or a body that is not an event,
413 over 1 MiB, 503 when the database cannot take the event (Stripe redelivers), 200 once the
event is durable (also for a duplicate, with no second effect). ``GET /healthz`` says the
process is up; ``GET /readyz`` that the database and the broker answer; ``GET /metrics`` the
backlog and case states for Prometheus, and this process's counters (requests by route and
status, latency, Stripe calls: :mod:`worker.telemetry`); ``GET /u/<token>`` turns a signed
email link into a fresh billing-portal session (``worker.links``), and ``GET /u/<token>/done``
thanks the customer back from it. ``GET /v1/customers/<id>/access`` tells the customer's app
(bearer token) what to allow while an invoice is unpaid.

Blocking database work runs off the event loop: deliveries through the inbox writer
(:mod:`worker.webhooks.writer`: the deliveries that arrive together share one transaction,
each answered once it committed), the rest on threads that hold one of the pool's
connections each. ``dunning serve`` runs on uvicorn with httptools and uvloop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
import stripe
from anyio import CapacityLimiter
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker import clock
from worker.db import retry_once_on_disconnect
from worker.dunning.access import customer_access
from worker.dunning.cases import SMART_RETRIES_ON, provider_retries_planned
from worker.email.i18n import email_locale
from worker.enqueue import Background
from worker.links.pages import Page, render_page
from worker.links.service import LinkState, OpenedLink, destination, open_link
from worker.runtime import Runtime
from worker.telemetry import INTAKE_REQUESTS, INTAKE_SECONDS, exposition, timed
from worker.webhooks.inbox import BadEventError, keep_rejected, parse_delivery
from worker.webhooks.metrics import render_metrics
from worker.webhooks.writer import InboxWriter

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # 1 MiB: Stripe events are a few KB
# A database that has not stored an event by then is treated as down (503, Stripe redelivers);
# readiness checks have as long each, so /readyz answers within a second either way.
STORE_DEADLINE_S = 1.0
CHECK_DEADLINE_S = 0.8
# The backlog gauges are a few GROUP BYs; a scrape answers well within Prometheus' 10 s.
METRICS_DEADLINE_S = 5.0
SIGNATURE_TOLERANCE_S = 300  # Stripe's library default; never 0

# A link's token is in its URL: never cached, never sent on as a referrer.
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

Enqueue = Callable[[int], Callable[[], None]]  # inbox id -> after-commit callback
BrokerCheck = Callable[[], None]
T = TypeVar("T")
WEBHOOK = "/webhooks/stripe"
WRITERS = 2  # inbox writer threads on PostgreSQL: one batch builds while another commits


class _TooLargeError(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLargeError
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def _problem(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


class _Intake:
    """The endpoints, sharing one runtime. Blocking work goes to threads."""

    def __init__(
        self, runtime: Runtime, secret: str, enqueue: Enqueue, broker_check: BrokerCheck
    ) -> None:
        self.runtime, self.secret = runtime, secret
        self.enqueue, self.broker_check = enqueue, broker_check
        writers = 1 if runtime.engine.dialect.name == "sqlite" else WRITERS
        self.writer = InboxWriter(
            runtime.engine, provider="stripe", threads=writers, after_commit=self._enqueue
        )
        self.db_slots = CapacityLimiter(_db_slots(runtime, writers))

    def _enqueue(self, inbox_id: int) -> None:
        self.enqueue(inbox_id)()

    async def _db(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on a thread holding one of ``db_slots``: as many as the pool keeps
        connections beside the inbox writers', so no request waits for a connection or opens
        one (SQLite: one, so its writers queue here and not in its busy loop). A connection
        the server dropped is retried once on a fresh one."""
        return await anyio.to_thread.run_sync(
            retry_once_on_disconnect, lambda: work(*args), limiter=self.db_slots
        )

    async def stripe_webhook(self, request: Request) -> Response:
        try:
            body = await _read_body(request)
        except _TooLargeError:
            return _problem(413, "body over 1 MiB")
        header = request.headers.get("stripe-signature")
        if not header:
            return _problem(400, "missing Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8", "replace"), header, self.secret, SIGNATURE_TOLERANCE_S
            )
        except stripe.SignatureVerificationError:
            return _problem(400, "invalid signature")
        try:
            delivery = parse_delivery(body)
        except BadEventError as exc:
            await self._db(self._keep_rejected, body, str(exc))
            return _problem(400, str(exc))
        try:
            async with asyncio.timeout(STORE_DEADLINE_S):
                stored = await self.writer.store(delivery)
        except (OperationalError, DBAPIError, TimeoutError) as exc:
            # A frozen database is down too. Should the late commit still land, Stripe's
            # redelivery is a duplicate: no second effect.
            log.warning("webhook not stored, database unavailable: %s", type(exc).__name__)
            return _problem(503, "database unavailable, retry later")
        if stored.inbox_id is None:
            return JSONResponse({"received": stored.event_id, "duplicate": True})
        return JSONResponse({"received": stored.event_id})

    def _keep_rejected(self, body: bytes, reason: str) -> None:
        """Signed, so Stripe's (or someone holding our secret): kept for inspection, when
        the database can take it."""
        try:
            with self.runtime.session() as session:
                keep_rejected(session, provider="stripe", body=body, reason=reason, now=clock.now())
        except (OperationalError, DBAPIError) as exc:
            log.warning("rejected delivery not kept: %s", type(exc).__name__)

    async def update_card(self, request: Request) -> Response:
        """A customer clicked an email link: a fresh portal session, or a page that says
        why not and offers another way to pay."""
        token = request.path_params["token"]
        try:
            opened = await self._db(self._open_link, token)
        except (OperationalError, DBAPIError):
            return self._page(Page.UNAVAILABLE, None)
        if opened.state is not LinkState.OPEN:
            return self._page(Page(opened.state.value), opened.pay_url, opened.locale)
        gateway = self.runtime.portal_gateway  # bounded: the customer is waiting
        back = f"{self.runtime.settings.public_url}/u/{token}/done"
        url = None
        if gateway is not None:
            url = await anyio.to_thread.run_sync(
                lambda: destination(gateway, opened, return_url=back)
            )
        if url is None:
            return self._page(Page.UNAVAILABLE, opened.pay_url, opened.locale)
        return RedirectResponse(url, status_code=303, headers=_PRIVATE)

    async def update_card_done(self, _: Request) -> Response:
        return self._page(Page.DONE, None)

    def _open_link(self, token: str) -> OpenedLink:
        with self.runtime.session() as session:
            return open_link(session, self.runtime.settings.link_keys, token, now=clock.now())

    def _page(
        self, page: Page, pay_url: str | None, customer_locale: str | None = None
    ) -> HTMLResponse:
        emails = self.runtime.policy.emails
        status, html = render_page(
            page,
            pay_url=pay_url,
            support_email=emails.support_email,
            company_name=emails.company_name,
            locale=email_locale(customer_locale, emails.default_locale),
        )
        return HTMLResponse(html, status_code=status, headers=_PRIVATE)

    async def customer_access(self, request: Request) -> Response:
        """The customer's graded access, for the app's banner (worker.dunning.access).
        Bearer-authenticated with DUNNING_APP_API_TOKEN; 404 for a customer we do not know."""
        token = self.runtime.settings.app_api_token
        if token is None:
            return _problem(404, "the access API is off: DUNNING_APP_API_TOKEN is not set")
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.reveal().encode()):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        customer = request.path_params["customer"]
        try:
            found = await self._db(self._customer_access, customer)
        except (OperationalError, DBAPIError):
            return _problem(503, "database unavailable")
        if found is None:
            return _problem(404, "no such customer")
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    def _customer_access(self, customer: str) -> dict[str, Any] | None:
        with self.runtime.session() as session:
            return customer_access(session, customer)

    async def metrics(self, _: Request) -> Response:
        """The fleet's backlog from the database, then this process's counters. A database
        that does not answer in time costs only its gauges (``dunning_database_up 0``): the
        intake's own counts (its 503s among them) are what an outage needs to show."""
        try:
            gauges = await asyncio.wait_for(self._db(self._metrics), METRICS_DEADLINE_S)
        except (OperationalError, DBAPIError, TimeoutError) as exc:
            log.warning("metrics without the database gauges: %s", type(exc).__name__)
            gauges = ""
        up = (
            "# HELP dunning_database_up Whether this scrape read the database gauges.\n"
            f"# TYPE dunning_database_up gauge\ndunning_database_up {1 if gauges else 0}\n"
        )
        body = gauges + up + exposition().decode()
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    def _metrics(self) -> str:
        with self.runtime.session() as session:
            return render_metrics(session, now=clock.now())

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        """Answers within a second: each check that has not answered by then is a problem."""
        found = await asyncio.gather(
            _within("database", self._db(self._database_check)),
            _within("broker", anyio.to_thread.run_sync(self.broker_check)),
        )
        problems = [p for p in found if p is not None]
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        try:
            warnings = await asyncio.wait_for(self._db(self._warnings), CHECK_DEADLINE_S)
        except TimeoutError:
            warnings = ["warnings not checked: the database answered slowly"]
        return JSONResponse({"status": "ready", **({"warnings": warnings} if warnings else {})})

    def _warnings(self) -> list[str]:
        """Ready, but configured against itself: said loudly, not failed on."""
        with self.runtime.session() as session:
            both = provider_retries_planned(session, now=clock.now())
        return [f"{both} open case(s): {SMART_RETRIES_ON}"] if both else []

    def _database_check(self) -> None:
        with self.runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


async def _within(what: str, check: Awaitable[None]) -> str | None:
    """A readiness problem (``what: ErrorName``), or None when ``check`` passed in time."""
    try:
        await asyncio.wait_for(check, CHECK_DEADLINE_S)
    except TimeoutError:
        return f"{what}: no answer within {CHECK_DEADLINE_S:g} s"
    except Exception as exc:  # any failure means not ready
        return f"{what}: {type(exc).__name__}"
    return None


def create_intake(runtime: Runtime, *, enqueue: Enqueue, broker_check: BrokerCheck) -> _Front:
    secret = runtime.settings.stripe_webhook_secret
    if secret is None:
        msg = "STRIPE_WEBHOOK_SECRET: required by the webhook intake, not set"
        raise ValueError(msg)
    intake = _Intake(runtime, secret.reveal(), enqueue, broker_check)
    routes = [
        Route("/webhooks/stripe", intake.stripe_webhook, methods=["POST"]),
        Route("/u/{token}", intake.update_card, methods=["GET"]),
        Route("/u/{token}/done", intake.update_card_done, methods=["GET"]),
        Route("/v1/customers/{customer}/access", intake.customer_access, methods=["GET"]),
        Route("/healthz", intake.healthz, methods=["GET"]),
        Route("/readyz", intake.readyz, methods=["GET"]),
        Route("/metrics", intake.metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Measured, routes=routes)])
    return _Front(intake, app)


def _db_slots(runtime: Runtime, writers: int) -> int:
    """Threads for the other endpoints' database work: the pool's connections that the
    inbox writers leave (SQLite: one)."""
    engine = runtime.engine
    if engine.dialect.name == "sqlite":
        return 1
    size = getattr(engine.pool, "size", None)
    return max(1, size() - writers) if callable(size) else 1


class _Front:
    """Webhook deliveries, nearly all of the traffic, go straight to their endpoint; every
    other request through Starlette's middleware and router. Counted and timed as
    :class:`_Measured` does, with the label children looked up once."""

    def __init__(self, intake: _Intake, app: Starlette) -> None:
        self.intake, self.app = intake, app
        self.seconds = INTAKE_SECONDS.labels(WEBHOOK)
        self.counts: dict[int, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        try:
            response = await self.intake.stripe_webhook(Request(scope, receive))
        except Exception:
            # as Starlette's ServerErrorMiddleware: answer 500, let the server log it
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        else:
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self.seconds.observe(time.perf_counter() - started)
            count = self.counts.get(status)
            if count is None:
                count = self.counts[status] = INTAKE_REQUESTS.labels(WEBHOOK, str(status))
            count.inc()


class _Measured:
    """Counts and times every answer (``dunning_intake_requests_total``,
    ``dunning_intake_request_duration_seconds``) by route template, never by the path
    itself: a link's token or a customer id is not a label. An exception that escapes
    counts as the 500 the server answers."""

    def __init__(self, app: ASGIApp, *, routes: list[Route]) -> None:
        self.app, self.routes = app, routes

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:  # PARTIAL: the path, another method (405)
                return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, status = self._route(scope), 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with timed(INTAKE_SECONDS, route):
            try:
                await self.app(scope, receive, noting_status)
            finally:
                INTAKE_REQUESTS.labels(route, str(status)).inc()


def build_intake(app: Any) -> _Front:
    """The intake wired to a Celery app: enqueue through it, check its broker."""

    background = Background(app)

    def enqueue(inbox_id: int) -> Callable[[], None]:
        return background.sender("webhooks.process_event", inbox_id=inbox_id)

    def broker_check() -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=CHECK_DEADLINE_S)

    return create_intake(app.runtime, enqueue=enqueue, broker_check=broker_check)
