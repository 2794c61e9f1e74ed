"""Webhook events of the simulated Stripe peer: emitting, signing and delivering them.

`Webhooks` extends `PeerState`: `_emit` stores an event (in the account's API shape, with the
API request that caused it) and queues it; deliveries POST pending events to `webhook_url`,
signed like Stripe's, in order, keeping non-2xx ones pending. Delivery never holds the state
lock while posting, and signature times use the wall clock (receivers check them against theirs).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import httpx

from worker.sim import stripe_objects as so
from worker.sim.stripe_state import PeerState

log = logging.getLogger(__name__)


class Webhooks(PeerState):
    """The events layer of `StripePeer`: emit under the state lock, deliver outside it."""

    def _emit(
        self, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> None:
        evt = so.event(
            evt_id=so.new_id("evt"),
            type_=type_,
            obj=self._view(obj),
            api_version=so.API_VERSIONS[self.api_shape],
            created=self._now(),
            previous=previous,
            request=self._request,
            pending_webhooks=1 if self.webhook_url else 0,
        )
        self._store(evt)
        self.events.append(evt)
        self._pending[evt["id"]] = None

    def _emit_update(self, type_: str, obj: dict[str, Any], before: dict[str, Any]) -> None:
        previous = so.diff_previous(before, self._view(obj))
        if previous:
            self._emit(type_, obj, previous)

    def signed_payload(self, event: dict[str, Any]) -> tuple[bytes, str]:
        body = so.dumps(event)
        timestamp = int(time.time())
        mac = hmac.new(self.webhook_secret.encode(), f"{timestamp}.".encode() + body, "sha256")
        return body, f"t={timestamp},v1={mac.hexdigest()}"

    def deliver_pending(self) -> int:
        """POST every pending event to webhook_url in order; non-2xx answers stay pending."""
        return self._drain(blocking=True)

    def redeliver(self, event_id: str) -> int:
        with self._lock:
            event = self._events_only(event_id)
        status = self._post_event(event)
        if 200 <= status < 300:
            with self._lock:
                self._pending.pop(event_id, None)
        return status

    def pending_events(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def take_pending(self) -> list[dict[str, Any]]:
        """The undelivered events, in order, for a caller that delivers them itself (late,
        twice, shuffled); they are no longer pending here."""
        with self._lock:
            events = [self._objs[event_id] for event_id in self._pending]
            self._pending.clear()
            return events

    def _events_only(self, event_id: str) -> dict[str, Any]:
        event = self._objs.get(event_id)
        if event is None or event.get("object") != "event":
            raise KeyError(event_id)
        return event

    def _after_control(self) -> None:
        if self.auto_deliver:
            self._drain(blocking=False)

    def _drain(self, *, blocking: bool) -> int:
        # A non-blocking caller leaves its events to whoever holds the delivery lock; the holder
        # releases it under the state lock only after seeing no untried pending event, so no
        # event can be left behind.
        if self.webhook_url is None or not self._delivery_lock.acquire(blocking=blocking):
            return 0
        delivered, tried, held = 0, set(), True
        try:
            while True:
                with self._lock:
                    batch = [self._objs[e] for e in self._pending if e not in tried]
                    if not batch:
                        self._delivery_lock.release()
                        held = False
                        return delivered
                for event in batch:
                    tried.add(event["id"])
                    if 200 <= self._post_event(event) < 300:
                        with self._lock:
                            self._pending.pop(event["id"], None)
                        delivered += 1
        finally:
            if held:
                self._delivery_lock.release()

    def close(self) -> None:
        """Close the webhook HTTP client (a later delivery opens a new one)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def _post_event(self, event: dict[str, Any]) -> int:
        url = self.webhook_url
        if url is None:
            return 0
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=10)
            http = self._http
        body, signature = self.signed_payload(event)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            return http.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("webhook delivery of %s failed: %s", event["id"], exc)
            return 0
