"""The state of the simulated Stripe account and the helpers that read and store it.

`PeerState` is the bottom layer of `worker.sim.stripe_peer.StripePeer`: its options, the stored
objects (by id and by type), card scripts, charge-attempt counts, events and pending deliveries,
the HTTP wire's records (requests, faults, idempotency keys) and the one lock that guards them
all. Its helpers store and look up objects and render them in the account's or the request's API
shape. `Ctx` is one API request as the handlers see it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from worker.sim import stripe_objects as so
from worker.sim.stripe_objects import Shape, invalid_request, resource_missing
from worker.sim.stripe_specs import CardScript, CardSpec


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int
    stripe_version: str | None = None
    replayed: bool = False
    request_id: str = ""
    at: float = field(default_factory=time.monotonic)  # when answered (monotonic seconds)


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    remaining: int
    should_retry: bool | None
    body: dict[str, Any] | None
    after: int = 0  # matching requests still to let through first
    retry_after: float | None = None


@dataclass
class SavedKey:  # one idempotency key
    method: str
    path: str
    params: dict[str, Any]
    created: int
    in_flight: bool = True
    status: int = 0
    body: bytes = b""
    request_id: str = ""


@dataclass
class Ctx:  # one API request
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_id: str
    stripe_version: str | None


_KIND_LABEL = {"payment_method": "PaymentMethod"}


class PeerState:
    """The bottom layer of `StripePeer` (instantiate that): state, lock and object lookups."""

    def __init__(
        self,
        *,
        webhook_url: str | None,
        webhook_secret: str,
        clock: Callable[[], datetime],
        api_shape: Shape,
        api_key: str | None,
        honor_stripe_version: bool,
    ) -> None:
        self.webhook_url = webhook_url
        self.honor_stripe_version = honor_stripe_version
        self.webhook_secret = webhook_secret
        self.clock = clock
        self.api_shape: Shape = api_shape
        self.api_key = api_key
        self.auto_deliver = False
        # The account's customer portal: "flows" (payment-method update flow on), "no_flows"
        # (portal on, that feature off: a session with the flow is refused), "off" (never
        # saved: every session is refused, as in a new account).
        self.portal: Literal["flows", "no_flows", "off"] = "flows"
        self.portal_card = CardSpec()  # what a customer enters on the served portal page
        self.base_url: str | None = None  # set while serving: portal session URLs point here
        self.latency = 0.0  # seconds slept (outside the lock) by every routed API request
        # Seconds slept after a request took effect, before answering: a client killed in
        # this gap has charged the card without hearing so (crash-recovery tests).
        self.reply_delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._delivery_lock = threading.Lock()
        self._objs: dict[str, dict[str, Any]] = {}
        self._by_type: defaultdict[str, list[str]] = defaultdict(list)
        self._scripts: dict[str, CardScript] = {}
        self._attempts: Counter[str] = Counter()
        self._pending: dict[str, None] = {}
        self._faults: list[Fault] = []
        self._idem: OrderedDict[str, SavedKey] = OrderedDict()
        self._request: dict[str, Any] | None = None  # set while an API handler runs
        self._reply_shape: Shape | None = None  # set while an API handler runs
        self._http: httpx.Client | None = None  # webhook deliveries

    def _now(self) -> int:
        moment = self.clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._objs[obj["id"]] = obj
        self._by_type[obj["object"]].append(obj["id"])
        return obj

    def _view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` in the account's shape: events, previous_attributes, inspection helpers."""
        rendered: dict[str, Any] = so.view(obj, self.api_shape)
        return rendered

    def _out(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` in the shape of the API request being answered."""
        rendered: dict[str, Any] = so.view(obj, self._reply_shape or self.api_shape)
        return rendered

    def _shape_for(self, stripe_version: str | None) -> Shape:
        if not self.honor_stripe_version or not stripe_version:
            return self.api_shape
        return "basil" if stripe_version[:10] >= "2025-03-31" else "acacia"

    def _visible(self, kind: str) -> bool:
        return kind != "invoice_payment" or (self._reply_shape or self.api_shape) == "basil"

    def _lookup(self, object_id: str) -> dict[str, Any] | None:
        obj = self._objs.get(object_id)
        return self._out(obj) if obj is not None and self._visible(obj["object"]) else None

    def _render(self, obj: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return so.expand(self._out(obj), so.expand_paths(ctx.params), self._lookup)

    def _fetch(self, kind: str, object_id: str, *, param: str = "id") -> dict[str, Any]:
        obj = self._objs.get(object_id)
        if obj is None or obj["object"] != kind or not self._visible(kind):
            raise resource_missing(_KIND_LABEL.get(kind, kind), object_id, param)
        return obj

    def _require(self, kind: str, object_id: str) -> dict[str, Any]:
        obj = self._objs.get(object_id)
        if obj is None or obj["object"] != kind:
            raise KeyError(f"no such {kind}: {object_id}")
        return obj

    @staticmethod
    def _check_params(ctx: Ctx, allowed: set[str]) -> None:
        for name in ctx.params:
            if name not in allowed:
                raise invalid_request(
                    f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
                )
