"""The HTTP wire of the simulated Stripe peer: serving Stripe's v1 API over ASGI.

`HttpWire` extends `ApiHandlers`: it decodes each request, checks the API key (Bearer or Basic),
answers injected faults, routes, replays or rejects reused `Idempotency-Key`s like Stripe, runs
the handler under the state lock, records the request and answers with Stripe's headers.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from worker.httpserver import serve_in_thread
from worker.sim import stripe_objects as so
from worker.sim.stripe_api import ApiHandlers, Handler
from worker.sim.stripe_objects import ApiError
from worker.sim.stripe_state import Ctx, RecordedRequest, SavedKey

log = logging.getLogger(__name__)


_EXPIRED = HTMLResponse("<!doctype html><title>Expired</title><p>Session expired", 404)


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    emitted: bool = False


class HttpWire(ApiHandlers):
    """The HTTP layer of `StripePeer`: the ASGI app and everything around a handler call."""

    IDEMPOTENCY_TTL = 24 * 3600  # keys may be pruned after 24 h (of the injected clock)
    MAX_IDEMPOTENCY_KEYS = 100_000
    asgi_app: Starlette  # built once, by StripePeer.__init__
    # StripePeer's control call for a card saved on the served portal page (the new default)
    portal_saved: Callable[[str], str]

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Run the API with uvicorn in a daemon thread; yields the base URL (portal sessions
        created meanwhile point at the portal page served there)."""
        with serve_in_thread(self.asgi_app, host, port) as url:
            self.base_url = url
            try:
                yield url
            finally:
                self.base_url = None

    def _asgi_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/p/session/{bps_id}", self._portal_page, methods=["GET"]),
                Route("/p/session/{bps_id}/card", self._portal_card, methods=["POST"]),
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                ),
            ]
        )

    async def _portal_page(self, request: Request) -> Response:
        """The customer portal a session URL opens: one form to save a new card."""
        session = self._served_session(request)
        if session is None:
            return _EXPIRED
        flow = (session.get("flow") or {}).get("type") or "portal_homepage"
        body = (
            '<!doctype html><html lang="en"><meta charset="utf-8"><title>Billing portal</title>'
            f'<main data-flow="{escape(flow)}" data-customer="{escape(session["customer"])}">'
            "<h1>Update your payment method</h1>"
            f'<form method="post" action="/p/session/{escape(session["id"])}/card">'
            '<button id="save" type="submit">Save card</button></form></main></html>'
        )
        return HTMLResponse(body)

    async def _portal_card(self, request: Request) -> Response:
        """Save ``portal_card`` as the customer's new default, as the portal does, and go
        back to the session's return_url."""
        session = self._served_session(request)
        if session is None:
            return _EXPIRED
        await run_in_threadpool(self.portal_saved, session["customer"])
        return RedirectResponse(session["return_url"] or "/", status_code=303)

    def _served_session(self, request: Request) -> dict[str, Any] | None:
        with self._lock:
            return self._objs.get(request.path_params["bps_id"])

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        reply = await run_in_threadpool(
            self._handle,
            request.method,
            request.url.path,
            request.url.query,
            body,
            dict(request.headers),
        )
        deliver = reply.emitted and self.auto_deliver and self.webhook_url is not None
        return Response(
            reply.body,
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
            background=BackgroundTask(self._drain, blocking=False) if deliver else None,
        )

    def _handle(
        self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]
    ) -> _Reply:
        pairs = parse_qsl(query, keep_blank_values=True)
        if method == "POST":
            pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        ctx = Ctx(
            method,
            path,
            so.decode_params(pairs),
            headers.get("idempotency-key") if method == "POST" else None,
            so.new_id("req", 14),
            headers.get("stripe-version"),
        )
        with self._lock:
            early = self._preflight(ctx, headers.get("authorization"))
        if isinstance(early, _Reply):
            return early
        handler, args = early
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            emitted_before = len(self.events)
            self._request = {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key}
            self._reply_shape = self._shape_for(ctx.stripe_version)
            try:
                status, payload, save = 200, handler(ctx, *args), True
            except ApiError as exc:
                status, payload, save = exc.status, {"error": exc.error}, exc.save
            except Exception:  # a peer bug: answer like Stripe's 500, never save it
                log.exception("stripe peer handler failed for %s %s", method, path)
                status, payload, save = (
                    500,
                    {"error": {"type": "api_error", "message": "An unknown error occurred."}},
                    False,
                )
            finally:
                self._request, self._reply_shape = None, None
            reply = self._respond(ctx, status, so.dumps(payload))
            self._settle_key(ctx, reply, save)
            reply.emitted = len(self.events) > emitted_before
        if self.reply_delay:
            time.sleep(self.reply_delay)
        return reply

    def _preflight(self, ctx: Ctx, auth: str | None) -> _Reply | tuple[Handler, tuple[str, ...]]:
        if not self._authorized(auth):
            return self._error_reply(ctx, 401, so.auth_error(auth))
        fault = self._take_fault(ctx)
        if fault is not None:
            return fault
        routed = self._match(ctx.method, ctx.path)
        if routed is None:
            return self._error_reply(ctx, 404, so.unrecognized_url(ctx.method, ctx.path))
        key = ctx.idempotency_key
        if key is None:
            return routed
        saved = self._idem.get(key)
        if (
            saved is not None
            and not saved.in_flight
            and self._now() - saved.created >= self.IDEMPOTENCY_TTL
        ):
            del self._idem[key]
            saved = None
        if saved is None:
            self._idem[key] = SavedKey(ctx.method, ctx.path, ctx.params, self._now())
            while len(self._idem) > self.MAX_IDEMPOTENCY_KEYS:
                self._idem.popitem(last=False)
            return routed
        if saved.in_flight:
            return self._error_reply(ctx, 409, so.idempotency_error(key, concurrent=True))
        if (saved.method, saved.path, saved.params) != (ctx.method, ctx.path, ctx.params):
            return self._error_reply(ctx, 400, so.idempotency_error(key, concurrent=False))
        return self._respond(
            ctx,
            saved.status,
            saved.body,
            replayed=True,
            extra={"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
        )

    def _settle_key(self, ctx: Ctx, reply: _Reply, save: bool) -> None:
        key = ctx.idempotency_key
        if key is None:
            return
        saved = self._idem.get(key)
        if saved is None or not saved.in_flight:  # evicted meanwhile: nothing to settle
            return
        if save:
            saved.in_flight, saved.status, saved.body = False, reply.status, reply.body
            saved.request_id = ctx.request_id
        else:
            del self._idem[key]

    def _authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, credential = (header or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                credential = base64.b64decode(credential).decode().partition(":")[0]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credential.strip().encode(), self.api_key.encode())

    def _take_fault(self, ctx: Ctx) -> _Reply | None:
        for fault in self._faults:
            if fault.method == ctx.method and ctx.path.startswith(fault.path_prefix):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                body = fault.body or {"error": so.fault_error(fault.status)}
                if "error" not in body:  # accept a bare error object too
                    body = {"error": body}
                extra = (
                    {}
                    if fault.should_retry is None
                    else {"Stripe-Should-Retry": "true" if fault.should_retry else "false"}
                )
                if fault.retry_after is not None:
                    extra["Retry-After"] = f"{fault.retry_after:g}"
                return self._respond(ctx, fault.status, so.dumps(body), extra=extra)
        return None

    def _error_reply(self, ctx: Ctx, status: int, error: dict[str, Any]) -> _Reply:
        return self._respond(ctx, status, so.dumps({"error": error}))

    def _respond(
        self,
        ctx: Ctx,
        status: int,
        body: bytes,
        *,
        replayed: bool = False,
        extra: dict[str, str] | None = None,
    ) -> _Reply:
        headers = {
            "Request-Id": ctx.request_id,
            "Stripe-Version": so.API_VERSIONS[self._shape_for(ctx.stripe_version)],
            **(extra or {}),
        }
        if ctx.idempotency_key:
            headers["Idempotency-Key"] = ctx.idempotency_key
        self.requests.append(
            RecordedRequest(
                ctx.method,
                ctx.path,
                ctx.params,
                ctx.idempotency_key,
                status,
                ctx.stripe_version,
                replayed,
                ctx.request_id,
            )
        )
        return _Reply(status, body, headers)
