"""Builders for Stripe events and billing portal sessions (the simulated Stripe peer).

Stateless. Emitting, signing and delivering events is `worker.sim.stripe_webhooks`' job.
"""

from __future__ import annotations

from typing import Any


def portal_session(
    *,
    bps_id: str,
    customer_id: str,
    created: int,
    return_url: str | None,
    flow_type: str | None,
    locale: str | None,
    base_url: str | None,
) -> dict[str, Any]:
    flow = None
    if flow_type:
        flow = {
            "type": flow_type,
            "after_completion": {
                "type": "portal_homepage",
                "hosted_confirmation": None,
                "redirect": None,
            },
        }
    return {
        "id": bps_id,
        "object": "billing_portal.session",
        "configuration": "bpc_dunningsimdefault",
        "created": created,
        "customer": customer_id,
        "flow": flow,
        "livemode": False,
        "locale": locale,
        "on_behalf_of": None,
        "return_url": return_url,
        "url": f"{base_url or 'https://billing.stripe.test'}/p/session/{bps_id}",
    }


def event(
    *,
    evt_id: str,
    type_: str,
    obj: dict[str, Any],
    api_version: str,
    created: int,
    previous: dict[str, Any] | None,
    request: dict[str, Any] | None,
    pending_webhooks: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous:
        data["previous_attributes"] = previous
    return {
        "id": evt_id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": request or {"id": None, "idempotency_key": None},
        "type": type_,
    }
