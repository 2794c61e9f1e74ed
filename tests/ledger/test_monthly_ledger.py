"""The monthly ledger (``mrr_movements``, what the fast monthly report sums) equals the
report engine run over the whole MRR history, as of every moment: facts recorded in a random
order, late ones landing in the past, each append followed by the ledger's own refresh.
Both databases, real tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Subscription
from worker.db import make_engine, read_only_session
from worker.ledger import history
from worker.ledger.models import EndCause, MrrChange
from worker.ledger.movements import changes_as_of
from worker.ledger.periods import periods
from worker.migrate import upgrade
from worker.models import Base
from worker.reports.retention import monthly_rows, retention_rows

ORIGIN = datetime(2025, 1, 1, tzinfo=UTC)
RECORDED = datetime(2026, 1, 1, tzinfo=UTC)
SPANS = periods(datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), "month")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('ledger')) / 'ledger.db'}"
        upgrade(url)
    made = make_engine(url)
    yield made
    made.dispose()


@st.composite
def facts(draw: st.DrawFn) -> list[dict[str, object]]:
    """Changes for up to 4 customers and 6 subscriptions, in the order they are learned."""
    rows = []
    for sub in range(draw(st.integers(1, 6))):
        customer = draw(st.integers(0, 3))
        currency = "eur" if customer == 3 else "usd"
        for source in range(draw(st.integers(1, 4))):
            ended = draw(st.integers(0, 4)) == 0
            discount = draw(st.none() | st.integers(5, 80))
            day = draw(st.integers(0, 420))
            rows.append(
                {
                    "customer": customer,
                    "sub": sub,
                    "currency": currency,
                    "effective_at": ORIGIN + timedelta(days=day, hours=draw(st.integers(0, 23))),
                    "mrr": 0 if ended else draw(st.sampled_from([0, 1_999, 5_000, 30_000])),
                    "discount_ends_at": (
                        None
                        if ended or discount is None
                        else ORIGIN + timedelta(days=day + discount)
                    ),
                    "mrr_after_discount": None if ended or discount is None else 6_000,
                    "ended": ended,
                    "end_cause": draw(st.sampled_from(list(EndCause))) if ended else None,
                    "source": f"evt_{sub}_{source}",
                }
            )
    return draw(st.permutations(rows))


def _reset(session: Session) -> None:
    """Empty every table (the PostgreSQL database is shared with the session's other tests)."""
    for table in reversed(Base.metadata.sorted_tables):
        session.execute(delete(table))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts(), st.sampled_from([None, "currency", "cohort"]))
def test_the_monthly_ledger_equals_the_engine_as_of_every_moment(
    engine: Engine, learned: list[dict[str, object]], segment: str | None
) -> None:
    moments = []
    with Session(engine) as session:
        _reset(session)
        customers = {i: Customer(provider_id=f"cus_{i}", updated_at=ORIGIN) for i in range(4)}
        session.add_all(customers.values())
        session.flush()
        subs: dict[object, Subscription] = {}
        for i, fact in enumerate(learned):
            sub = subs.get(fact["sub"])
            if sub is None:
                sub = subs[fact["sub"]] = Subscription(
                    provider_id=f"sub_{fact['sub']}",
                    customer_id=customers[fact["customer"]].id,  # type: ignore[index]
                    status="active",
                    as_of=ORIGIN,
                )
                session.add(sub)
                session.flush()
            recorded_at = RECORDED + timedelta(hours=i)
            fields = {k: v for k, v in fact.items() if k not in {"customer", "sub"}}
            history.append(
                session,
                MrrChange(
                    subscription_id=sub.id,
                    customer_id=sub.customer_id,
                    recorded_at=recorded_at,
                    **fields,
                ),
            )
            moments.append(recorded_at)
        session.commit()
    for as_of in [
        RECORDED - timedelta(hours=1),
        *moments[:: max(len(moments) // 3, 1)],
        moments[-1],
    ]:
        with read_only_session(engine) as session:
            fast = monthly_rows(session, SPANS, segment, as_of)
            exact = retention_rows(changes_as_of(session, as_of), SPANS, segment)
        assert [r.as_dict() for r in fast] == [r.as_dict() for r in exact], as_of
