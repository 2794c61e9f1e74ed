"""A typed reader over a raw Stripe payload, shared by the Stripe parsers.

Owns: ``Node``, which wraps one JSON object with its path from the root and reads its fields by
name (strings, integers, numbers, flags, timestamps, nested and expandable objects, Stripe list
objects). Every missing or mistyped field becomes ``EventParseError`` with a message naming the
exact path (``invoice.lines.data[0].parent.type``); nothing else escapes.

Does not own: what any field means (``worker.billing.normalise``, ``worker.billing.declines``).
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.billing.domain import EventParseError

MAX_AMOUNT = 2**31 - 1  # amounts are INTEGER columns


def storable(text: str) -> bool:
    """Text a database can hold: no NUL (PostgreSQL refuses it), no unpaired surrogate (not
    encodable as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case Mapping():
            return "object"
        case list() | tuple():
            return "array"
        case _:
            return type(value).__name__


class Node:
    """A JSON object plus its path from the root, so every error names the exact field."""

    __slots__ = ("path", "raw")

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise EventParseError(f"{path}: expected an object, got {_describe(raw)}")
        self.raw: Mapping[str, Any] = raw
        self.path = path

    def __bool__(self) -> bool:
        """False for an empty object, which is what ``child`` gives for an absent one."""
        return bool(self.raw)

    def _wrong(self, key: str, expected: str, value: object) -> EventParseError:
        return EventParseError(f"{self.path}.{key}: expected {expected}, got {_describe(value)}")

    def _need(self, key: str) -> Any:
        value = self.raw.get(key)
        if value is None or value == "":
            raise EventParseError(f"{self.path}.{key}: required, missing")
        return value

    def need_text(self, key: str) -> str:
        value = self._need(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        if not storable(value):
            raise EventParseError(f"{self.path}.{key}: contains a NUL or an unpaired surrogate")
        return value

    def text(self, key: str) -> str | None:
        """An optional string field; "" counts as absent."""
        return None if self.raw.get(key) in (None, "") else self.need_text(key)

    def need_integer(self, key: str) -> int:
        value = self._need(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        if not -(2**63) <= value < 2**63:
            raise EventParseError(f"{self.path}.{key}: {len(str(value))}-digit integer, too large")
        return value

    def need_amount(self, key: str) -> int:
        """An amount in minor units: never negative, and at most what a database integer
        holds (Stripe's own ceiling is 8 digits)."""
        value = self.need_integer(key)
        if not 0 <= value <= MAX_AMOUNT:
            raise EventParseError(f"{self.path}.{key}: amount {value} out of range")
        return value

    def amount(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else self.need_amount(key)

    def integer(self, key: str) -> int | None:
        return None if self.raw.get(key) is None else self.need_integer(key)

    def number(self, key: str) -> Decimal | None:
        """An optional JSON number (integer or decimal), exactly."""
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number", value)
        return Decimal(str(value))

    def flag(self, key: str) -> bool:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return bool(value)

    def need_time(self, key: str) -> datetime:
        """A unix timestamp field as an aware UTC datetime."""
        seconds = self.need_integer(key)  # outside the try: EventParseError is a ValueError
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise EventParseError(f"{self.path}.{key}: timestamp out of range") from None

    def time(self, key: str) -> datetime | None:
        return None if self.raw.get(key) is None else self.need_time(key)

    def child(self, key: str) -> Node:
        """A nested object; an empty one when the field is absent or null."""
        value = self.raw.get(key)
        return Node({} if value is None else value, f"{self.path}.{key}")

    def need_child(self, key: str) -> Node:
        return Node(self._need(key), f"{self.path}.{key}")

    def expanded(self, key: str) -> Node | None:
        """The object when an expandable field is expanded; None when it is an id or null."""
        value = self.raw.get(key)
        if value is None or isinstance(value, str):
            return None
        return Node(value, f"{self.path}.{key}")

    def need_ref(self, key: str) -> str:
        """The id of an expandable field, whether it holds the id or the expanded object."""
        value = self._need(key)
        if isinstance(value, Mapping):
            return Node(value, f"{self.path}.{key}").need_text("id")
        if not isinstance(value, str):
            raise self._wrong(key, "an id or an object", value)
        if not storable(value):
            raise EventParseError(f"{self.path}.{key}: contains a NUL or an unpaired surrogate")
        return value

    def ref(self, key: str) -> str | None:
        return None if self.raw.get(key) in (None, "") else self.need_ref(key)

    def listing(self, key: str) -> list[Node]:
        """The entries of a Stripe list object ``{"object": "list", "data": [...]}``."""
        data = self.child(key).raw.get("data")
        if data is None:
            return []
        if not isinstance(data, list):
            raise EventParseError(
                f"{self.path}.{key}.data: expected an array, got {_describe(data)}"
            )
        return [Node(entry, f"{self.path}.{key}.data[{i}]") for i, entry in enumerate(data)]

    def expect_object(self, allowed: frozenset[str]) -> None:
        stated = self.text("object")
        if stated is not None and stated not in allowed:
            wanted = " or ".join(sorted(allowed))
            raise EventParseError(f"{self.path}.object: expected {wanted}, got {stated!r}")
