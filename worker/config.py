"""The ops policy file (``config/dunning.toml``): schema, loading, and readable errors.

Owns validation only. Problems are reported as ``file:line: key.path: what is wrong`` so ops
can fix them without reading code. What the policy *means* lives in ``worker.dunning.rules``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.decline_codes import STRIPE_CARD_DECLINE_CODES, STRIPE_PAYMENT_ERROR_CODES

T = TypeVar("T")


class DeclineClass(StrEnum):
    SOON = "soon"
    FUNDS = "funds"
    SOFT = "soft"
    NEEDS_CUSTOMER = "needs_customer"
    HARD = "hard"
    STOP = "stop"
    FRAUD = "fraud"


class RetryMode(StrEnum):
    """Who retries a failed payment: we do (``own``), or the provider's Smart Retries do and we
    only email and account (``observe``)."""

    OWN = "own"
    OBSERVE = "observe"


RETRYABLE_CLASSES = frozenset({DeclineClass.SOON, DeclineClass.FUNDS, DeclineClass.SOFT})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Hours = Annotated[float, Field(gt=0)]


class Offsets(_Strict):
    soon: list[Hours] = [1, 4, 24, 72]
    funds: list[Hours] = [24, 72, 120, 168, 240]
    soft: list[Hours] = [24, 72, 168, 288]


class Retries(_Strict):
    mode: RetryMode = RetryMode.OWN
    window_days: int = Field(14, ge=1, le=60)
    max_retries: int = Field(8, ge=0, le=8)
    min_gap_hours: float = Field(1, ge=0)
    # Dun invoices that belong to no subscription (one-off charges) like any other.
    one_off_invoices: bool = True
    # Never retry this close to the provider's own next attempt (Smart Retries left on).
    provider_retry_gap_hours: float = Field(4, ge=0)
    offsets_hours: Offsets = Offsets()
    # One retry on another saved card of the customer: never; after the default card is
    # declined as needing a new card or runs out of network budget; or also after it failed
    # backup_after_failures times on the invoice.
    backup_methods: Literal["never", "after_hard", "after_n"] = "after_hard"
    backup_after_failures: int = Field(3, ge=1, le=8)


class VisaLimits(_Strict):
    """Visa's reattempt ceiling; also applied to Amex, Discover and unknown brands."""

    max_declines_30d: int = Field(15, ge=1, le=20)


class MastercardLimits(_Strict):
    max_declines_24h: int = Field(10, ge=1, le=10)
    max_same_amount_declines_30d: int = Field(35, ge=1, le=35)


class Networks(_Strict):
    visa: VisaLimits = VisaLimits()
    mastercard: MastercardLimits = MastercardLimits()


class Classes(_Strict):
    soon: list[str] = []
    funds: list[str] = []
    soft: list[str] = []
    needs_customer: list[str] = []
    hard: list[str] = []
    stop: list[str] = []
    fraud: list[str] = []

    @model_validator(mode="after")
    def _no_code_twice(self) -> Classes:
        seen: dict[str, str] = {}
        for name, codes in self.model_dump().items():
            for code in codes:
                if code in seen:
                    msg = f"{code!r} is listed in both {seen[code]} and {name}"
                    raise ValueError(msg)
                seen[code] = name
        return self

    def table(self) -> dict[str, DeclineClass]:
        return _derived(self, "table", self._table)

    def _table(self) -> dict[str, DeclineClass]:
        return {
            code: DeclineClass(name) for name, codes in self.model_dump().items() for code in codes
        }


class QuietHours(_Strict):
    start: int = Field(21, ge=0, le=23)
    end: int = Field(8, ge=0, le=23)


class Emails(_Strict):
    reminder_days: list[Annotated[int, Field(ge=1)]] = [3, 7]
    final_notice_days_before_end: int = Field(2, ge=0)
    quiet_hours: QuietHours = QuietHours()
    default_timezone: str = "UTC"
    default_locale: str = "en_US"
    from_address: str = "billing@example.com"
    company_name: str = "Example SaaS"
    support_email: str = "support@example.com"
    # An email this late (workers, SMTP or the database were down) is skipped with a note,
    # not sent: after an outage, customers get no burst of stale reminders.
    skip_overdue_after_hours: float = Field(12, gt=0)
    # At most this many dunning emails per customer in any rolling 7 days, across all their
    # invoices (several invoices due together share one email).
    max_per_customer_7d: int = Field(3, ge=1, le=20)
    # How long the one-click card-update link in an email keeps working.
    link_lifetime_days: int = Field(30, ge=1, le=365)

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            msg = f"unknown IANA timezone {value!r}"
            raise ValueError(msg) from None
        return value


PaydayRule = Annotated[
    str,
    Field(
        pattern=r"^(monday|tuesday|wednesday|thursday|friday|"
        r"last_business_day|[1-9]|[12][0-9]|3[01])$"
    ),
]


class Paydays(_Strict):
    """Funds declines: after the fixed offsets, retry on likely paydays in the window."""

    calendar: list[PaydayRule] = ["friday", "1", "15", "last_business_day"]
    local_hour: int = Field(10, ge=0, le=23)  # in the customer's timezone
    max_retries: int = Field(3, ge=0, le=8)


class CardExpiry(_Strict):
    # Notices before a card expires (the end of its expiry month), in days: one per card
    # and step, the nearest step reached; none once the card changed or was renewed.
    notice_days_before: list[Annotated[int, Field(ge=1, le=120)]] = [30, 7]
    # Brands whose network account updater usually renews cards in time: no notice.
    skip_brands: list[str] = []

    @field_validator("skip_brands")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [brand.strip().lower() for brand in value]


class Access(_Strict):
    # What the customer's app is told to do meanwhile, in days after the case opened: full
    # access with a banner (grace) from the start, then limited, then blocked.
    limited_after_days: float = Field(7, ge=0, le=60)
    blocked_after_days: float = Field(14, ge=0, le=60)

    @model_validator(mode="after")
    def _in_order(self) -> Access:
        if self.blocked_after_days < self.limited_after_days:
            msg = "blocked_after_days must not come before limited_after_days"
            raise ValueError(msg)
        return self


class FinalAction(_Strict):
    action: Literal["cancel_subscription", "mark_uncollectible", "leave_past_due"] = (
        "cancel_subscription"
    )


@dataclass(frozen=True)
class SegmentFacts:
    """What a segment can match on, taken from the failed invoice and its subscription."""

    currency: str | None = None
    amount: int | None = None  # minor units
    interval: str | None = None  # day | week | month | year
    plan: str | None = None  # the Stripe price id


class Segment(_Strict):
    """Overrides for some cases. Conditions left out match anything."""

    name: str
    currency: str | None = None
    interval: Literal["day", "week", "month", "year"] | None = None
    plan: str | None = None
    amount_min: int | None = Field(None, ge=0)
    amount_max: int | None = Field(None, ge=0)
    window_days: int | None = Field(None, ge=1, le=60)
    max_retries: int | None = Field(None, ge=0, le=8)
    offsets_hours: dict[Literal["soon", "funds", "soft"], list[Hours]] | None = None
    final_action: Literal["cancel_subscription", "mark_uncollectible", "leave_past_due"] | None = (
        None
    )

    def matches(self, facts: SegmentFacts) -> bool:
        amount = facts.amount
        return (
            (self.currency is None or (facts.currency or "").lower() == self.currency.lower())
            and (self.interval is None or facts.interval == self.interval)
            and (self.plan is None or facts.plan == self.plan)
            and (self.amount_min is None or (amount is not None and amount >= self.amount_min))
            and (self.amount_max is None or (amount is not None and amount <= self.amount_max))
        )


class Policy(_Strict):
    retries: Retries = Retries()
    paydays: Paydays = Paydays()
    networks: Networks = Networks()
    classes: Classes = Classes()
    emails: Emails = Emails()
    card_expiry: CardExpiry = CardExpiry()
    access: Access = Access()
    final_action: FinalAction = FinalAction()
    # The FIRST segment (in file order) whose conditions all match applies; it replaces only
    # the settings it names. No match: the settings above.
    segments: list[Segment] = []

    def for_segment(self, facts: SegmentFacts) -> Policy:
        segment = next((s for s in self.segments if s.matches(facts)), None)
        if segment is None:
            return self
        retries: dict[str, Any] = {}
        if segment.window_days is not None:
            retries["window_days"] = segment.window_days
        if segment.max_retries is not None:
            retries["max_retries"] = segment.max_retries
        if segment.offsets_hours:
            retries["offsets_hours"] = self.retries.offsets_hours.model_copy(
                update={str(name): hours for name, hours in segment.offsets_hours.items()}
            )
        update: dict[str, Any] = {"retries": self.retries.model_copy(update=retries)}
        if segment.final_action is not None:
            update["final_action"] = FinalAction(action=segment.final_action)
        return self.model_copy(update=update)

    @model_validator(mode="after")
    def _segments_fit(self) -> Policy:
        for segment in self.segments:
            window = segment.window_days or self.retries.window_days
            for name, offsets in (segment.offsets_hours or {}).items():
                if offsets != sorted(set(offsets)) or (offsets and offsets[-1] > window * 24):
                    msg = (
                        f"segments: {segment.name!r}: offsets_hours.{name} must increase "
                        f"and stay inside its {window}-day window"
                    )
                    raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _fits_window(self) -> Policy:
        window_h = self.retries.window_days * 24
        for name, offsets in self.retries.offsets_hours.model_dump().items():
            if offsets != sorted(set(offsets)):
                msg = f"retries.offsets_hours.{name} must be strictly increasing"
                raise ValueError(msg)
            if offsets and offsets[-1] > window_h:
                msg = (
                    f"retries.offsets_hours.{name} reaches {offsets[-1]:g} h, past the "
                    f"{self.retries.window_days}-day window"
                )
                raise ValueError(msg)
        return self

    @property
    def version(self) -> str:
        """A short digest recorded on each case: which policy it started with."""
        return _derived(self, "version", self._digest)

    def _digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# What a frozen model derives from its fields, computed once per instance (a policy's digest
# and decline table are read on every event). Kept beside the model, not in it: model_copy
# copies an instance's __dict__, and a copy with other fields must not inherit these.
_DERIVED: dict[tuple[int, str], tuple[weakref.ref[BaseModel], Any]] = {}


def _derived(model: BaseModel, name: str, compute: Callable[[], T]) -> T:
    key = (id(model), name)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0]() is model:
        return cast(T, hit[1])
    value = compute()
    _DERIVED[key] = (weakref.ref(model, lambda _ref: _DERIVED.pop(key, None)), value)
    return value


class ConfigError(ValueError):
    """The policy file is invalid; ``problems`` are ready-to-print lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _lineno_from_message(str(exc))
        raise ConfigError([f"{path}:{line}: TOML syntax: {exc}"]) from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            key = ".".join(loc) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{path}:{_find_line(text, loc)}: {key}: {message}")
        raise ConfigError(problems) from None
    problems = [
        f"{path}:{_find_line(text, key.split('.'))}: {key}: {message}"
        for key, message in semantic_problems(policy)
    ]
    if problems:
        raise ConfigError(problems)
    return policy


def semantic_problems(policy: Policy) -> list[tuple[str, str]]:
    """What types cannot say: every known decline code and payment error code classified,
    schedules the card networks allow. Each problem is (key path, what is wrong)."""
    problems = []
    table = policy.classes.table()
    known = dict.fromkeys((*STRIPE_CARD_DECLINE_CODES, *STRIPE_PAYMENT_ERROR_CODES))
    missing = [code for code in known if code not in table]
    if missing:
        problems.append(("classes", f"no class for {', '.join(missing)}"))
    gap_h = policy.retries.min_gap_hours
    per_day = policy.networks.mastercard.max_declines_24h
    per_month = min(
        policy.networks.visa.max_declines_30d,
        policy.networks.mastercard.max_same_amount_declines_30d,
    )
    for name, offsets in policy.retries.offsets_hours.model_dump().items():
        key = f"retries.offsets_hours.{name}"
        # The failure itself counts too: 1 + retries within any day / 30 days.
        busiest_day = max(
            (1 + sum(1 for o in offsets if start <= o < start + 24) for start in [0.0, *offsets]),
            default=1,
        )
        if busiest_day > per_day:
            problems.append(
                (
                    key,
                    f"{busiest_day} attempts within 24 h; Mastercard allows "
                    f"{per_day} declines per card per day",
                )
            )
        if 1 + min(len(offsets), policy.retries.max_retries) > per_month:
            problems.append(
                (key, f"more attempts than the {per_month} a card may decline in 30 days")
            )
        closest = min((b - a for a, b in itertools.pairwise([0.0, *offsets])), default=None)
        if closest is not None and closest < gap_h:
            problems.append(
                (
                    key,
                    f"two attempts {closest:g} h apart, closer than "
                    f"retries.min_gap_hours = {gap_h:g}",
                )
            )
    return problems


def _lineno_from_message(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 1


def _find_line(text: str, loc: list[str]) -> int:
    """Best-effort line of a key path: its [table] header, then the key inside it."""
    lines = text.splitlines()
    start, table = 0, []
    for depth in range(len(loc), 0, -1):  # the longest table prefix that has a header
        header = re.compile(r"^\s*\[\s*" + re.escape(".".join(loc[:depth])) + r"\s*\]")
        found = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
        if found is not None:
            start, table = found, loc[:depth]
            break
    rest = loc[len(table) :]
    if not rest:
        return start + 1
    key = re.compile(r"^\s*" + re.escape(rest[0]) + r"\s*=")
    for i in range(start, len(lines)):
        if i > start and lines[i].lstrip().startswith("[") and table:
            break
        if key.match(lines[i]):
            return i + 1
    return start + 1
