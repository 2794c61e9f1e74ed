"""Every Stripe card decline code in the domain notes has a class in the shipped config."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import stripe

from tests.support.paths import SHARED, require_shared
from worker.billing.domain import Decline
from worker.config import DeclineClass, Policy
from worker.decline_codes import STRIPE_CARD_DECLINE_CODES, STRIPE_PAYMENT_ERROR_CODES
from worker.dunning import rules

RULES = SHARED / "domain" / "retry-rules.md"


def domain_decline_codes() -> list[str]:
    """The codes of the table in §1.4 (rows that start with a backticked code)."""
    text = require_shared(RULES).read_text(encoding="utf-8")
    section = text[text.index("### 1.4") : text.index("## 2.")]
    return re.findall(r"^\| `([a-z_]+)`", section, flags=re.MULTILINE)


def test_every_domain_code_is_classified(policy: Policy) -> None:
    codes = domain_decline_codes()
    assert len(codes) > 40  # the table was found and read
    assert set(codes) == set(STRIPE_CARD_DECLINE_CODES)  # config check knows the same list
    table = policy.classes.table()
    assert [code for code in codes if code not in table] == []


def test_an_unknown_code_is_opaque_soft_and_logged(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.dunning.rules"):
        cls = rules.classify(Decline(decline_code="brand_new_code_2027"), policy)
    assert cls is DeclineClass.SOFT
    assert "brand_new_code_2027" in caplog.text


def stripe_payment_error_codes() -> set[str]:
    """Every error ``code`` the installed stripe library knows a PaymentIntent's
    ``last_payment_error`` can carry (its generated ``Literal``): Stripe's current list."""
    source = Path(stripe.__file__).with_name("_payment_intent.py").read_text(encoding="utf-8")
    at = source.index('"payment_intent_authentication_failure"')
    literal = source[source.rindex("Literal[", 0, at) : source.index("]", at)]
    return set(re.findall(r'"([a-z0-9_]+)"', literal))


def test_payment_error_codes_are_current_and_classified(policy: Policy) -> None:
    """The error codes an invoice payment can fail with and no decline_code (3-D Secure
    failed, a mandate revoked, a bank account closed...) each have a class, and each is one
    Stripe still sends."""
    known = stripe_payment_error_codes()
    assert len(known) > 100  # the Literal was found and read
    assert set(STRIPE_PAYMENT_ERROR_CODES) <= known
    table = policy.classes.table()
    assert [code for code in STRIPE_PAYMENT_ERROR_CODES if code not in table] == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("payment_intent_authentication_failure", DeclineClass.NEEDS_CUSTOMER),
        ("payment_intent_action_required", DeclineClass.NEEDS_CUSTOMER),
        ("debit_not_authorized", DeclineClass.STOP),
        ("payment_method_unactivated", DeclineClass.HARD),
        ("card_decline_rate_limit_exceeded", DeclineClass.FUNDS),
    ],
)
def test_error_codes_without_a_decline_code(
    policy: Policy, code: str, expected: DeclineClass
) -> None:
    assert rules.classify(Decline(code=code), policy) is expected
