"""On randomised MRR histories, for every period, segment and currency:

    ending = starting + new + reactivation + expansion - contraction - churn

and the report's starting and ending MRR equal a brute-force sum of every subscription's MRR
at the period's edges (an oracle written independently of the engine)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.ledger.models import EndCause
from worker.ledger.movements import Change
from worker.ledger.periods import periods
from worker.reports.retention import retention_rows

ORIGIN = datetime(2025, 1, 1, tzinfo=UTC)
FIRST, LAST = datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)


@st.composite
def histories(draw: st.DrawFn) -> list[Change]:
    changes = []
    subscription = 0
    for customer in range(draw(st.integers(1, 6))):
        currency = draw(st.sampled_from(["usd", "eur"]))
        for _ in range(draw(st.integers(1, 3))):
            subscription += 1
            days = sorted(draw(st.lists(st.integers(0, 400), min_size=1, max_size=6)))
            for day in days:
                ended = draw(st.booleans()) and draw(st.booleans())
                discount_days = draw(st.none() | st.integers(1, 90))
                changes.append(
                    Change(
                        customer_id=customer,
                        subscription_id=subscription,
                        effective_at=ORIGIN + timedelta(days=day, hours=draw(st.integers(0, 23))),
                        mrr=0 if ended else draw(st.sampled_from([0, 999, 5_000, 12_345])),
                        discount_ends_at=(
                            None
                            if ended or discount_days is None
                            else ORIGIN + timedelta(days=day + discount_days)
                        ),
                        mrr_after_discount=None if ended else draw(st.sampled_from([0, 7_000])),
                        ended=ended,
                        end_cause=draw(st.sampled_from(list(EndCause))) if ended else None,
                        currency=currency,
                        plan=draw(st.sampled_from(["basic", "pro"])),
                        interval="month",
                    )
                )
    changes.sort(key=lambda c: (c.customer_id, c.subscription_id, c.effective_at))
    return changes


def mrr_just_before(changes: list[Change], at: datetime) -> dict[tuple[str, int], int]:
    """Brute force: each subscription's latest change strictly before ``at``."""
    latest: dict[int, Change] = {}
    for change in changes:
        if change.effective_at < at:
            latest[change.subscription_id] = change  # sorted: later ones win
    totals: dict[tuple[str, int], int] = {}
    for change in latest.values():
        ended = change.discount_ends_at is not None and change.discount_ends_at < at
        value = (change.mrr_after_discount or 0) if ended else change.mrr
        key = (change.currency, 0)
        totals[key] = totals.get(key, 0) + value
    return totals


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.sampled_from(["month", "quarter", "ttm"]),
    st.sampled_from([None, "plan", "currency", "cohort"]),
)
def test_the_identity_holds_for_every_row(
    changes: list[Change], by: str, segment: str | None
) -> None:
    spans = periods(FIRST, LAST, by)
    rows = retention_rows(iter(changes), spans, segment)
    for row in rows:
        movements = [
            row.new,
            row.reactivation,
            row.expansion,
            row.contraction_voluntary,
            row.contraction_involuntary,
            row.churn_voluntary,
            row.churn_involuntary,
        ]
        assert all(amount >= 0 for amount in movements)
        assert row.ending_mrr == (
            row.starting_mrr
            + row.new
            + row.reactivation
            + row.expansion
            - row.contraction
            - row.churn
        )
    for span in spans:
        for edge, field in ((span.start, "starting_mrr"), (span.end, "ending_mrr")):
            expected = mrr_just_before(changes, edge)
            for currency in ("usd", "eur"):
                reported = sum(
                    getattr(r, field)
                    for r in rows
                    if r.period == span.label and r.currency == currency
                )
                assert reported == expected.get((currency, 0), 0), (span.label, field)


@settings(max_examples=60, deadline=None)
@given(histories())
def test_months_chain_ending_into_starting(changes: list[Change]) -> None:
    rows = retention_rows(iter(changes), periods(FIRST, LAST, "month"), None)
    by_key = {(r.period_start, r.currency): r for r in rows}
    for (start, currency), row in by_key.items():
        following = by_key.get((row.period_end, currency))
        if following is not None:
            assert following.starting_mrr == row.ending_mrr, (start, currency)
