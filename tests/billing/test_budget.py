"""The fleet-wide Stripe budget: several processes calling the Stripe-compatible peer through
the gateway stay under the configured rates together (counted at the peer), a 429 pauses
every process, a call whose token would come too late is not made. On Redis, PostgreSQL and
SQLite."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from prometheus_client import REGISTRY

from tests.support.budget import Hammer, budget_of, hammer
from tests.support.processes import free_port
from worker.billing.budget import DatabaseBudget, OverBudgetError, Rates, RedisBudget
from worker.billing.stripe_client import StripeGateway, TransientProviderError, kind_of
from worker.db import make_engine
from worker.runtime import Runtime
from worker.settings import Settings
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, CardSpec, RecordedRequest, StripePeer

KEY = "sk_test_budget"
PROCESSES = 4


@dataclass
class Account:
    peer: StripePeer
    base: str
    customer: str
    invoice: str


@pytest.fixture
def account() -> Iterator[Account]:
    peer = StripePeer(api_key=KEY)
    with peer.serve() as base:
        customer = peer.create_customer(
            email="b@example.com", name="B", card=CardSpec(outcomes=[INSUFFICIENT_FUNDS])
        )
        invoice, _ = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=900))
        yield Account(peer, base, customer, invoice)


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
def store(request: pytest.FixtureRequest) -> str:
    """Where the buckets live: Redis (the broker), or the database (embedded broker)."""
    fixture = {"redis": "redis_url", "postgresql": "pg", "sqlite": "sqlite_url"}[request.param]
    return str(request.getfixturevalue(fixture))


def _fleet(*jobs: Hammer) -> tuple[float, list[list[float]]]:
    """Run a process per job side by side; the monotonic time they were let go, and each
    one's call end times."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    readies = [ctx.Event() for _ in jobs]
    procs = [
        ctx.Process(target=hammer, args=(job, ready, go, out))
        for job, ready in zip(jobs, readies, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        for ready in readies:
            assert ready.wait(timeout=60), "a hammer process did not start"
        released = time.monotonic()
        go.set()
        results = [out.get(timeout=max(j.seconds for j in jobs) + 60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [detail for status, detail in results if status == "error"]
    assert not errors, errors[0]
    return released, [detail for _, detail in results]


def _answered(peer: StripePeer, method: str, prefix: str) -> list[RecordedRequest]:
    return [r for r in peer.requests if r.method == method and r.path.startswith(prefix)]


def test_many_processes_stay_under_the_rates_together(account: Account, store: str) -> None:
    rates = Rates(read=20, write=10)
    read = Hammer(store, account.base, KEY, rates, account.invoice, account.customer, seconds=2)
    write = replace(read, calls="write")
    released, calls = _fleet(read, read, write, write)
    assert all(calls), "every process made calls"
    reads = _answered(account.peer, "GET", "/v1/invoices/")
    writes = _answered(account.peer, "POST", "/v1/billing_portal/sessions")
    for kind, answered in (("read", reads), ("write", writes)):
        rate, capacity = rates.of(kind), rates.capacity(kind)
        span = max(r.at for r in answered) - released
        # Tokens are only taken after the release, from a full bucket: at most its capacity
        # plus what refilled by the last answer.
        assert len(answered) <= capacity + rate * span, (kind, len(answered), span)
        # ... and the budget is spent, not starved: near the rate over the run.
        assert len(answered) >= 0.75 * rate * read.seconds, (kind, len(answered))


def test_a_429_pauses_every_process(account: Account, redis_url: str) -> None:
    """The peer answers one read with 429 and Retry-After: 1.5 s; no process calls Stripe
    again before that is over, and all of them go on afterwards."""
    account.peer.inject_fault(
        method="GET", path_prefix="/v1/invoices/", status=429, after=20, retry_after=1.5
    )
    rates = Rates(read=20, write=20)
    job = Hammer(redis_url, account.base, KEY, rates, account.invoice, account.customer, 4)
    _, calls = _fleet(*[job] * PROCESSES)
    limited = [r for r in account.peer.requests if r.status == 429]
    assert len(limited) == 1
    at = limited[0].at
    during = [r.at - at for r in account.peer.requests if at + 0.3 < r.at < at + 1.45]
    assert during == [], "calls made while the fleet was paused"
    for ends in calls:  # each process worked before the 429 and after the pause
        assert min(ends) < at < at + 1.5 < max(ends)


def test_a_429_without_retry_after_pauses_for_the_back_off(account: Account, db_url: str) -> None:
    budget = DatabaseBudget(make_engine(db_url), Rates())
    gateway = StripeGateway(KEY, api_base=account.base, budget=budget, wait=lambda _: 0)
    account.peer.inject_fault(method="GET", path_prefix="/v1/invoices/", status=429)
    assert gateway.invoice_status(account.invoice) == "open"  # retried after the pause
    first, second = _answered(account.peer, "GET", "/v1/invoices/")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.45  # the first back-off: 0.5 s, fleet-wide
    # A pause another process set (another engine, as another host has) holds this one.
    DatabaseBudget(make_engine(db_url), Rates()).pause(0.6)
    started = time.monotonic()
    assert gateway.invoice_status(account.invoice) == "open"
    assert time.monotonic() - started >= 0.5


def test_a_token_too_late_refuses_at_once_and_consumes_nothing(store: str) -> None:
    budget = budget_of(store, Rates(read=1, write=50))
    assert budget.take("read", max_wait_s=5) < 0.2  # a full bucket: no wait
    started = time.monotonic()
    with pytest.raises(OverBudgetError, match="next token in"):
        budget.take("read", max_wait_s=0.3)
    assert time.monotonic() - started < 0.25  # refused without sleeping
    # The refused call took nothing: the next token comes a second after the first take,
    # not two.
    waited = budget.take("read", max_wait_s=5)
    assert 0.4 < waited < 1.3
    # the write bucket is another one
    assert budget.take("write", max_wait_s=5) < 0.2
    budget.close()


def test_a_pause_longer_than_the_deadline_refuses_the_call(
    account: Account, redis_url: str
) -> None:
    budget = RedisBudget(redis_url, Rates())
    gateway = StripeGateway(KEY, api_base=account.base, budget=budget, budget_wait_s=0.5)
    refused = REGISTRY.get_sample_value("dunning_stripe_budget_refused_total", {"kind": "write"})
    budget.pause(30)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="not called"):
        gateway.cancel_subscription("sub_x", idempotency_key="k")
    assert time.monotonic() - started < 0.4
    assert account.peer.requests == []
    after = REGISTRY.get_sample_value("dunning_stripe_budget_refused_total", {"kind": "write"})
    assert (after or 0) - (refused or 0) == 1
    budget.close()


def test_an_unreachable_budget_is_a_transient_error(account: Account) -> None:
    budget = RedisBudget(f"redis://127.0.0.1:{free_port()}/0", Rates())
    gateway = StripeGateway(KEY, api_base=account.base, budget=budget)
    with pytest.raises(TransientProviderError, match="budget unavailable"):
        gateway.invoice_status(account.invoice)
    assert account.peer.requests == []
    budget.pause(1)  # best effort: logged, not raised


def test_the_runtime_keeps_the_budget_with_the_broker(redis_url: str, sqlite_url: str) -> None:
    with_redis = Runtime(Settings(database_url=sqlite_url, broker_url=redis_url))
    embedded = Runtime(Settings(database_url=sqlite_url, stripe_read_rps=25))
    assert isinstance(with_redis.stripe_budget, RedisBudget)
    assert isinstance(embedded.stripe_budget, DatabaseBudget)
    assert embedded.stripe_budget.rates == Rates(read=25, write=100)
    with_redis.close()
    embedded.close()


def test_reads_and_writes_are_told_apart() -> None:
    reads = ["invoices.retrieve", "invoice_payments.list", "customers.list"]
    writes = [
        "invoices.pay",
        "subscriptions.cancel",
        "billing_portal.sessions.create",
        "invoices.mark_uncollectible",
    ]
    assert [kind_of(op) for op in reads] == ["read"] * 3
    assert [kind_of(op) for op in writes] == ["write"] * 4
