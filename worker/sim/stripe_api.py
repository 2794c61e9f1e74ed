"""The simulated Stripe peer's REST resources: the route table and what each route does.

`ApiHandlers` extends `Billing`: retrieve and list (with Stripe's filters, pagination and
`expand[]`) for every resource the worker reads, and the writes it makes: invoice pay, void and
mark_uncollectible, subscription update and cancel, billing portal sessions. Handlers run under
the state lock and answer errors by raising `ApiError`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from worker.sim import stripe_objects as so
from worker.sim.stripe_billing import Billing
from worker.sim.stripe_objects import ApiError, invalid_request
from worker.sim.stripe_state import Ctx

Handler = Callable[..., dict[str, Any]]


def _truthy(value: Any) -> bool:
    return str(value).lower() == "true"


class ApiHandlers(Billing):
    """The REST layer of `StripePeer`: one handler per route, run under the state lock."""

    _routes: list[tuple[str, str, Handler]]  # built once, by StripePeer.__init__

    def _route_table(self) -> list[tuple[str, str, Handler]]:
        r = self._retrieve
        return [
            ("GET", "/v1/customers", self._list("customer", _matcher("email"))),
            ("GET", "/v1/customers/*", r("customer")),
            ("GET", "/v1/payment_methods/*", r("payment_method")),
            ("GET", "/v1/products/*", r("product")),
            ("GET", "/v1/prices/*", r("price")),
            ("GET", "/v1/subscriptions", self._list("subscription", self._match_subscription)),
            ("GET", "/v1/subscriptions/*", r("subscription")),
            ("POST", "/v1/subscriptions/*", self._update_subscription),
            ("DELETE", "/v1/subscriptions/*", self._delete_subscription),
            (
                "GET",
                "/v1/invoices",
                self._list("invoice", _matcher("customer", "subscription", "status")),
            ),
            ("GET", "/v1/invoices/*", r("invoice")),
            ("POST", "/v1/invoices/*/pay", self._pay),
            ("POST", "/v1/invoices/*/void", self._void),
            ("POST", "/v1/invoices/*/mark_uncollectible", self._mark_uncollectible),
            ("GET", "/v1/payment_intents/*", r("payment_intent")),
            ("GET", "/v1/charges", self._list("charge", _matcher("customer", "payment_intent"))),
            ("GET", "/v1/charges/*", r("charge")),
            (
                "GET",
                "/v1/invoice_payments",
                self._list("invoice_payment", self._match_invoice_payment),
            ),
            ("GET", "/v1/invoice_payments/*", r("invoice_payment")),
            ("GET", "/v1/events", self._list("event", self._match_event)),
            ("GET", "/v1/events/*", r("event")),
            ("POST", "/v1/billing_portal/sessions", self._portal_session),
        ]

    def _match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]] | None:
        parts = path.rstrip("/").split("/")
        for route_method, pattern, handler in self._routes:
            expected = pattern.split("/")
            if route_method != method or len(expected) != len(parts):
                continue
            pairs = list(zip(expected, parts, strict=True))
            if all(e in ("*", p) for e, p in pairs):
                return handler, tuple(p for e, p in pairs if e == "*")
        return None

    def _retrieve(self, kind: str) -> Handler:
        def handler(ctx: Ctx, object_id: str) -> dict[str, Any]:
            return self._render(self._fetch(kind, object_id), ctx)

        return handler

    def _list(self, kind: str, keep: Callable[[dict[str, Any], dict[str, Any]], bool]) -> Handler:
        def handler(ctx: Ctx) -> dict[str, Any]:
            if not self._visible(kind):
                raise ApiError(404, so.unrecognized_url(ctx.method, ctx.path), save=False)
            params = ctx.params
            items = [self._objs[i] for i in reversed(self._by_type[kind])]
            items = [o for o in items if keep(o, params) and _created_in(o, params.get("created"))]
            ids = [o["id"] for o in items]
            if params.get("starting_after") in ids:
                items = items[ids.index(params["starting_after"]) + 1 :]
            elif params.get("ending_before") in ids:
                items = items[: ids.index(params["ending_before"])]
            limit = max(1, min(100, int(params.get("limit") or 10)))
            page = items[-limit:] if "ending_before" in params else items[:limit]
            body = {
                "object": "list",
                "data": [self._out(o) for o in page],
                "has_more": len(items) > limit,
                "url": ctx.path,
            }
            return so.expand(body, so.expand_paths(params), self._lookup)

        return handler

    @staticmethod
    def _match_subscription(sub: dict[str, Any], params: dict[str, Any]) -> bool:
        status = params.get("status")
        if status is None and sub["status"] == "canceled":
            return False  # Stripe lists non-canceled subscriptions by default
        return _matcher("customer")(sub, params) and status in (None, "all", sub["status"])

    @staticmethod
    def _match_invoice_payment(inpay: dict[str, Any], params: dict[str, Any]) -> bool:
        payment = params.get("payment") or {}
        wanted_pi = payment.get("payment_intent") if isinstance(payment, dict) else None
        return _matcher("invoice", "status")(inpay, params) and wanted_pi in (
            None,
            inpay["payment"]["payment_intent"],
        )

    @staticmethod
    def _match_event(event: dict[str, Any], params: dict[str, Any]) -> bool:
        wanted = params.get("types") or ([params["type"]] if "type" in params else [])
        return not wanted or any(
            event["type"] == t or (t.endswith(".*") and event["type"].startswith(t[:-1]))
            for t in wanted
        )

    def _pay(self, ctx: Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(
            ctx,
            {
                "payment_method",
                "off_session",
                "forgive",
                "paid_out_of_band",
                "source",
                "mandate",
                "expand",
            },
        )
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] == "paid":
            raise invalid_request("Invoice is already paid", save=True)
        if inv["status"] != "open" and inv["status"] != "uncollectible":
            raise invalid_request(
                f"This invoice can no longer be paid because it is {inv['status']}.", save=True
            )
        if _truthy(ctx.params.get("paid_out_of_band")):
            self._mark_paid_out_of_band(inv)
            return self._render(inv, ctx)
        pm_id = ctx.params.get("payment_method") or self._default_pm(inv)
        pm = self._fetch("payment_method", pm_id, param="payment_method")
        if pm["customer"] != inv["customer"]:
            raise invalid_request(
                f"The PaymentMethod {pm_id} does not belong to the Customer {inv['customer']}.",
                param="payment_method",
            )
        outcome = self._attempt(inv, pm_id, automatic=False)
        if outcome in ("paid", "processing"):  # a bank debit: 200, the invoice still open
            return self._render(inv, ctx)
        pi = self._objs[inv["payment_intent"]]
        error = {
            **pi["last_payment_error"],
            "payment_intent": self._out(pi),
            "request_log_url": f"https://dashboard.stripe.com/test/logs/{ctx.request_id}",
        }
        if outcome == "action_required":  # Stripe answers 400, not 402, for off-session 3DS
            code = "invoice_payment_intent_requires_action"
            raise ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": code,
                    "doc_url": so.doc_url(code),
                    "message": "The invoice payment requires additional action. Retrieve the "
                    "invoice's PaymentIntent to complete the payment.",
                    "payment_intent": error["payment_intent"],
                    "request_log_url": error["request_log_url"],
                },
            )
        raise ApiError(402, error)

    def _void(self, ctx: Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"expand"})
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] not in ("open", "uncollectible"):
            raise invalid_request(
                f"You can only void an open or uncollectible invoice; this "
                f"invoice is {inv['status']}.",
                save=True,
            )
        now = self._now()
        inv.update(status="void", auto_advance=False)
        inv["status_transitions"]["voided_at"] = now
        self._emit("invoice.voided", inv)
        pi = self._objs.get(inv["payment_intent"] or "")
        if pi is not None:
            pi.update(status="canceled", canceled_at=now, cancellation_reason="void_invoice")
            inpay = self._objs[inv["_payment"]]
            inpay["status"] = "canceled"
            inpay["status_transitions"]["canceled_at"] = now
            self._emit("payment_intent.canceled", pi)
        return self._render(inv, ctx)

    def _mark_uncollectible(self, ctx: Ctx, invoice_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"expand"})
        inv = self._fetch("invoice", invoice_id)
        if inv["status"] != "open":
            raise invalid_request(
                f"You can only mark an open invoice as uncollectible; this "
                f"invoice is {inv['status']}.",
                save=True,
            )
        self._mark_uncollectible_now(inv)
        return self._render(inv, ctx)

    def _update_subscription(self, ctx: Ctx, sub_id: str) -> dict[str, Any]:
        params = ctx.params
        self._check_params(
            ctx,
            {
                "metadata",
                "pause_collection",
                "cancel_at_period_end",
                "default_payment_method",
                "description",
                "expand",
                "cancellation_details",
                "proration_behavior",
            },
        )
        sub = self._fetch("subscription", sub_id)
        if sub["status"] == "canceled" and set(params) - {
            "metadata",
            "cancellation_details",
            "expand",
        }:
            raise invalid_request(
                "A canceled subscription can only update its cancellation_details and metadata."
            )
        changes = self._subscription_changes(sub, params)
        before = self._view(sub)
        sub.update(changes)
        self._emit_update("customer.subscription.updated", sub, before)
        return self._render(sub, ctx)

    def _subscription_changes(self, sub: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if "metadata" in params:
            meta = {} if params["metadata"] == "" else {**sub["metadata"], **params["metadata"]}
            changes["metadata"] = {k: v for k, v in meta.items() if v != ""}
        if "pause_collection" in params:
            pause = params["pause_collection"]
            if pause != "" and (
                not isinstance(pause, dict)
                or pause.get("behavior") not in ("keep_as_draft", "mark_uncollectible", "void")
            ):
                raise invalid_request(
                    "Invalid pause_collection[behavior].", param="pause_collection[behavior]"
                )
            changes["pause_collection"] = (
                None
                if pause == ""
                else {
                    "behavior": pause["behavior"],
                    "resumes_at": int(pause["resumes_at"]) if pause.get("resumes_at") else None,
                }
            )
        if "cancel_at_period_end" in params:
            at_end = _truthy(params["cancel_at_period_end"])
            changes["cancel_at_period_end"] = at_end
            changes["cancel_at"] = sub["current_period_end"] if at_end else None
        if "default_payment_method" in params:
            pm_id = params["default_payment_method"] or None
            if pm_id is not None:
                self._fetch("payment_method", pm_id, param="default_payment_method")
            changes["default_payment_method"] = pm_id
        if "description" in params:
            changes["description"] = params["description"] or None
        if isinstance(params.get("cancellation_details"), dict):
            details = params["cancellation_details"]
            changes["cancellation_details"] = {
                **sub["cancellation_details"],
                **{k: details[k] or None for k in ("comment", "feedback") if k in details},
            }
        return changes

    def _delete_subscription(self, ctx: Ctx, sub_id: str) -> dict[str, Any]:
        self._check_params(ctx, {"cancellation_details", "invoice_now", "prorate", "expand"})
        sub = self._fetch("subscription", sub_id)
        if sub["status"] == "canceled":
            raise invalid_request(f"The subscription {sub_id} has already been canceled.")
        details = ctx.params.get("cancellation_details") or {}
        self._cancel(
            sub,
            "cancellation_requested",
            details.get("comment") or None,
            details.get("feedback") or None,
        )
        return self._render(sub, ctx)

    def _portal_session(self, ctx: Ctx) -> dict[str, Any]:
        self._check_params(
            ctx,
            {
                "customer",
                "return_url",
                "flow_data",
                "locale",
                "configuration",
                "on_behalf_of",
                "expand",
            },
        )
        if not ctx.params.get("customer"):
            raise invalid_request(
                "Missing required param: customer.", param="customer", code="parameter_missing"
            )
        cust = self._fetch("customer", ctx.params["customer"], param="customer")
        if self.portal == "off":
            raise invalid_request(
                "You can't create a portal session in test mode until you save your customer "
                "portal settings in test mode at "
                "https://dashboard.stripe.com/test/settings/billing/portal."
            )
        flow = ctx.params.get("flow_data") or {}
        flow_type = flow.get("type") if isinstance(flow, dict) else None
        allowed = (
            "payment_method_update",
            "subscription_cancel",
            "subscription_update",
            "subscription_update_confirm",
        )
        if flow and flow_type not in allowed:
            raise invalid_request(
                f"Invalid flow_data[type]: must be one of {', '.join(allowed)}",
                param="flow_data[type]",
            )
        if flow_type == "payment_method_update" and self.portal == "no_flows":
            raise invalid_request(
                "You cannot create a portal session with flow_data.type 'payment_method_update' "
                "because payment method updates are disabled in this portal configuration.",
                param="flow_data[type]",
            )
        session = self._store(
            so.portal_session(
                bps_id=so.new_id("bps"),
                customer_id=cust["id"],
                created=self._now(),
                return_url=ctx.params.get("return_url"),
                flow_type=flow_type,
                locale=ctx.params.get("locale"),
                base_url=self.base_url,
            )
        )
        return self._render(session, ctx)


def _created_in(obj: dict[str, Any], bounds: Any) -> bool:
    """Stripe's `created` list filter: a timestamp, or `created[gt|gte|lt|lte]`."""
    if bounds is None:
        return True
    if not isinstance(bounds, dict):
        return bool(obj["created"] == int(bounds))
    tests = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
    return all(tests[op](obj["created"], int(v)) for op, v in bounds.items() if op in tests)


def _matcher(*names: str) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    """A list filter: every named query param, when given, must equal the object's field."""

    def keep(obj: dict[str, Any], params: dict[str, Any]) -> bool:
        return all(params.get(n) in (None, obj.get(n)) for n in names)

    return keep
