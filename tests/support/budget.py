"""A worker process that hammers Stripe through the gateway and the fleet's budget, for the
fleet-budget tests (started with multiprocessing's spawn: nothing inherited but arguments)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from worker.billing.budget import DatabaseBudget, Rates, RedisBudget, StripeBudget
from worker.billing.stripe_client import StripeGateway
from worker.db import make_engine


@dataclass(frozen=True)
class Hammer:
    store: str  # a redis:// URL, or a database URL
    api_base: str
    api_key: str
    rates: Rates
    invoice: str  # read: GET /v1/invoices/{invoice}
    customer: str  # write: POST /v1/billing_portal/sessions
    seconds: float
    calls: str = "read"  # what this process calls: "read" or "write"


def budget_of(store: str, rates: Rates) -> StripeBudget:
    if store.startswith("redis"):
        return RedisBudget(store, rates)
    return DatabaseBudget(make_engine(store), rates)


def hammer(job: Hammer, ready: Any, go: Any, out: Any) -> None:
    """Signal ``ready``, wait for ``go``, then call Stripe as fast as the budget lets for
    ``job.seconds`` (reads or writes, as ``job.calls`` says); put the monotonic end time of
    every call on ``out``, or the error that stopped this process."""
    try:
        budget = budget_of(job.store, job.rates)
        gateway = StripeGateway(
            job.api_key, api_base=job.api_base, budget=budget, wait=lambda _state: 0
        )
        ready.set()
        if not go.wait(timeout=60):
            out.put(("error", "never told to go"))
            return
        done: list[float] = []
        end = time.monotonic() + job.seconds
        while time.monotonic() < end:
            if job.calls == "read":
                gateway.invoice_status(job.invoice)
            else:
                gateway.portal_url(job.customer, return_url="https://app.example/back")
            done.append(time.monotonic())
        budget.close()
        out.put(("done", done))
    except Exception:  # reported to the test, which fails with it
        out.put(("error", traceback.format_exc()))
