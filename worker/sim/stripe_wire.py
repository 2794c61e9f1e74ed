"""Stripe's v1 wire format for the simulated Stripe peer; stateless.

* `Shape` and `API_VERSIONS`: the two API shapes the peer speaks. `view(obj, shape)` renders a
  deep copy of a stored (superset-shaped) object in one of them: "basil" (2025-03-31.basil:
  invoice.parent, no invoice.payment_intent/charge/paid) or "acacia" (2024-06-20:
  invoice.payment_intent/charge/subscription/paid, no parent). Keys that start with "_" are
  internal to the peer and never rendered.
* ids (`new_id`, `new_fingerprint`) and billing-period arithmetic (`add_interval`).
* `decode_params` reads form/query bodies in Stripe's bracket notation (`a[b][0]=x`, `expand[]`).
* `expand` applies `expand[]` paths; `diff_previous` computes an event's `previous_attributes`;
  `dumps` writes a JSON body.
"""

from __future__ import annotations

import copy
import json
import secrets
import string
from calendar import monthrange
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from worker.sim.stripe_errors import invalid_request

Shape = Literal["basil", "acacia"]
API_VERSIONS: dict[str, str] = {"basil": "2025-03-31.basil", "acacia": "2024-06-20"}

_ALNUM = string.ascii_letters + string.digits

# Fields that exist in only one API shape, by object type.
_ONLY_ACACIA: dict[str, tuple[str, ...]] = {
    "invoice": (
        "payment_intent",
        "charge",
        "paid",
        "paid_out_of_band",
        "subscription",
        "subscription_details",
    ),
    "payment_intent": ("invoice",),
    "charge": ("invoice",),
    "subscription": ("current_period_start", "current_period_end", "plan", "quantity"),
    "line_item": ("subscription", "subscription_item", "type", "price", "plan", "proration"),
}
_ONLY_BASIL: dict[str, tuple[str, ...]] = {
    "invoice": ("parent",),
    "subscription_item": ("current_period_start", "current_period_end"),
    "line_item": ("parent", "pricing"),
}


# ---------------------------------------------------------------------------------------------
# ids and time


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALNUM) for _ in range(length))}"


def new_fingerprint() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(16))


def add_interval(anchor: int, interval: str, count: int) -> int:
    """`anchor` (unix seconds) plus `count` intervals; months clamp to the month's last day."""
    start = datetime.fromtimestamp(anchor, tz=UTC)
    if interval in ("day", "week"):
        return anchor + count * (86400 if interval == "day" else 7 * 86400)
    months = count * (12 if interval == "year" else 1)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown interval {interval!r}")
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, monthrange(year, month0 + 1)[1])
    return int(start.replace(year=year, month=month0 + 1, day=day).timestamp())


# ---------------------------------------------------------------------------------------------
# wire helpers


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode Stripe bracket notation: `a[b][0]=x&a[b][1]=y&e[]=z` -> {a: {b: [x, y]}, e: [z]}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        tokens = _split_key(key)
        node = root
        for token in tokens[:-1]:
            name = token or str(len(node))
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        last = tokens[-1] or str(len(node))
        node[last] = value
    return _listify(root)


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    tokens = [head]
    while rest:
        inner, _, rest = rest.partition("]")
        tokens.append(inner)
        rest = rest[1:] if rest.startswith("[") else ""
    return tokens


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def expand_paths(params: dict[str, Any]) -> list[str]:
    raw = params.get("expand", [])
    return [raw] if isinstance(raw, str) else [str(p) for p in raw]


def expand(
    obj: dict[str, Any], paths: list[str], lookup: Callable[[str], dict[str, Any] | None]
) -> dict[str, Any]:
    """Replace ids named by `paths` (e.g. "data.payment.payment_intent") with rendered objects."""
    for path in paths:
        _expand(obj, path.split("."), lookup, path)
    return obj


def _expand(
    node: Any, segs: list[str], lookup: Callable[[str], dict[str, Any] | None], path: str
) -> None:
    if isinstance(node, list):
        for item in node:
            _expand(item, segs, lookup, path)
        return
    head, rest = segs[0], segs[1:]
    if not isinstance(node, dict) or head not in node:
        raise invalid_request(f"This property cannot be expanded ({path}).", param="expand")
    value = node[head]
    if isinstance(value, list):  # a list of ids, e.g. subscription.discounts
        node[head] = value = [_resolve(v, lookup, path) for v in value]
    elif isinstance(value, str):
        node[head] = value = _resolve(value, lookup, path)
    if rest and value is not None:
        _expand(value, rest, lookup, path)


def _resolve(value: Any, lookup: Callable[[str], dict[str, Any] | None], path: str) -> Any:
    if not isinstance(value, str):
        return value
    target = lookup(value)
    if target is None:
        raise invalid_request(f"This property cannot be expanded ({path}).", param="expand")
    return target


def view(obj: Any, shape: Shape) -> Any:
    """Deep copy of `obj` rendered in `shape`, without internal ("_") keys."""
    if isinstance(obj, list):
        return [view(item, shape) for item in obj]
    if not isinstance(obj, dict):
        return copy.copy(obj)
    kind = obj.get("object")
    drop = (
        (_ONLY_BASIL if shape == "acacia" else _ONLY_ACACIA).get(kind, ())
        if isinstance(kind, str)
        else ()
    )
    return {k: view(v, shape) for k, v in obj.items() if not k.startswith("_") and k not in drop}


def diff_previous(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Stripe's `previous_attributes`: old values of changed keys, recursing into sub-hashes."""
    out: dict[str, Any] = {}
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and "object" not in before:
            out[key] = diff_previous(before, after)
        else:
            out[key] = before
    return out


def dumps(obj: Any) -> bytes:
    """A JSON body as the peer writes it, for API answers and webhook payloads."""
    return json.dumps(obj, indent=2).encode()
