"""Every Stripe card decline code in the domain notes has a class in the shipped config."""

from __future__ import annotations

import logging
import re

import pytest

from tests.support.paths import SHARED, require_shared
from worker.billing.domain import Decline
from worker.config import DeclineClass, Policy
from worker.decline_codes import STRIPE_CARD_DECLINE_CODES
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
