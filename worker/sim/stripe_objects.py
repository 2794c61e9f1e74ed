"""Stripe-shaped objects and Stripe's wire format for the simulated Stripe peer.

This module is the one import for everything about *what Stripe objects look like* and *how
Stripe's v1 wire format is read and written*; none of it holds state. `worker.sim.stripe_peer`
owns the state machine. The parts live in their own modules and are re-exported here:

* `worker.sim.stripe_wire`: `Shape`/`API_VERSIONS` and `view(obj, shape)`, ids and intervals,
  `decode_params` (bracket notation), `expand` (`expand[]`), `diff_previous`, `dumps`.
* `worker.sim.stripe_errors`: `ApiError` and the error bodies Stripe answers with.
* Builders, returning plain dicts in a *superset* shape that carries the fields of both API
  shapes (`view` renders one):
  `worker.sim.stripe_customers` (`customer`, `card_details`, `payment_method`),
  `worker.sim.stripe_subscriptions` (`product`, `price_and_plan`, `coupon`, `discount`,
  `subscription`, `set_subscription_period`),
  `worker.sim.stripe_invoices` (`invoice`, `payment_intent`, `invoice_payment`, `charge`,
  `charge_outcome`) and `worker.sim.stripe_events` (`event`, `portal_session`).

Field names follow the fixtures in /work/shared/fixtures/stripe (stripe/openapi fixtures3,
dj-stripe and pay-rails payloads).
"""

from __future__ import annotations

from worker.sim.stripe_customers import card_details, customer, payment_method
from worker.sim.stripe_errors import (
    ApiError,
    auth_error,
    decline_message,
    doc_url,
    fault_error,
    idempotency_error,
    invalid_request,
    resource_missing,
    unrecognized_url,
)
from worker.sim.stripe_events import event, portal_session
from worker.sim.stripe_invoices import (
    charge,
    charge_outcome,
    invoice,
    invoice_payment,
    payment_intent,
)
from worker.sim.stripe_subscriptions import (
    coupon,
    discount,
    price_and_plan,
    product,
    set_subscription_period,
    subscription,
)
from worker.sim.stripe_wire import (
    API_VERSIONS,
    Shape,
    add_interval,
    decode_params,
    diff_previous,
    dumps,
    expand,
    expand_paths,
    new_fingerprint,
    new_id,
    view,
)

__all__ = [
    "API_VERSIONS",
    "ApiError",
    "Shape",
    "add_interval",
    "auth_error",
    "card_details",
    "charge",
    "charge_outcome",
    "coupon",
    "customer",
    "decline_message",
    "decode_params",
    "diff_previous",
    "discount",
    "doc_url",
    "dumps",
    "event",
    "expand",
    "expand_paths",
    "fault_error",
    "idempotency_error",
    "invalid_request",
    "invoice",
    "invoice_payment",
    "new_fingerprint",
    "new_id",
    "payment_intent",
    "payment_method",
    "portal_session",
    "price_and_plan",
    "product",
    "resource_missing",
    "set_subscription_period",
    "subscription",
    "unrecognized_url",
    "view",
]
