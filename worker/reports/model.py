"""What a report holds, whatever its format. Amounts are integers in minor units; ratios
are exact fractions rendered as percent strings with two decimals, rounded half-even."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from worker.ledger.models import MrrMovementKind, RecoveryMethod
from worker.ledger.movements import Movements, MrrAmounts

SEGMENTS = ("plan", "currency", "interval", "cohort")

# The CSV columns, in order (README, "Reports"): fixed, whatever the data.
MOVEMENTS = tuple(kind.value for kind in MrrMovementKind)  # new .. churn_involuntary
RATIOS = ("nrr", "grr", "involuntary_churn_rate", "nrr_without_involuntary")
RETENTION_COLUMNS = (
    "period",
    "period_start",
    "period_end",
    "segment",
    "currency",
    "starting_mrr",
    *MOVEMENTS,
    "ending_mrr",
    *RATIOS,
)
RECOVERY_METHODS = tuple(method.value for method in RecoveryMethod)  # retry .. backup_method
RECOVERY_COLUMNS = (
    "period",
    "period_start",
    "period_end",
    "segment",
    "currency",
    "at_risk_count",
    "at_risk_amount",
    "recovered_count",
    "recovered_amount",
    *(f"recovered_by_{m}_{what}" for m in RECOVERY_METHODS for what in ("count", "amount")),
    "recovery_rate_count",
    "recovery_rate_amount",
    "mrr_saved",
    "churned_count",
    "churned_mrr",
    "median_days_to_recover",
    "p90_days_to_recover",
)


def percent(numerator: int, denominator: int) -> str | None:
    """``"41.88"`` for 67,000 / 160,000: exact, rounded half-even once, to two decimals of a
    percent. None when there is nothing to divide by."""
    if denominator == 0:
        return None
    return _two_decimals(Fraction(numerator * 100, denominator))


def days(value: Fraction | None) -> str | None:
    return None if value is None else _two_decimals(value)


def _two_decimals(value: Fraction) -> str:
    hundredths = round(value * 100)  # round() on a Fraction is exact and half-even
    return str(Decimal(hundredths).scaleb(-2).quantize(Decimal("0.01")))


@dataclass
class ReportRow:
    """Where a row belongs: one period x segment x currency."""

    period: str
    period_start: datetime
    period_end: datetime
    segment: str | None
    currency: str

    def key_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "segment": self.segment,
            "currency": self.currency,
        }


@dataclass
class RetentionRow(ReportRow, MrrAmounts):
    @classmethod
    def of(cls, m: Movements) -> RetentionRow:
        period = m.period
        return cls(period.label, period.start, period.end, m.segment, m.currency, **m.amounts())

    @property
    def contraction(self) -> int:
        return self.contraction_voluntary + self.contraction_involuntary

    @property
    def churn(self) -> int:
        return self.churn_voluntary + self.churn_involuntary

    @property
    def involuntary_loss(self) -> int:
        return self.churn_involuntary + self.contraction_involuntary

    @property
    def cohort_ending(self) -> int:
        """Sum of MRR at the end over the customers who had MRR at the start."""
        return self.starting_mrr + self.expansion - self.contraction - self.churn

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key_dict(),
            "starting_mrr": self.starting_mrr,
            "new": self.new,
            "reactivation": self.reactivation,
            "expansion": self.expansion,
            "contraction_voluntary": self.contraction_voluntary,
            "contraction_involuntary": self.contraction_involuntary,
            "churn_voluntary": self.churn_voluntary,
            "churn_involuntary": self.churn_involuntary,
            "ending_mrr": self.ending_mrr,
            "nrr": percent(self.cohort_ending, self.starting_mrr),
            "grr": percent(self.starting_mrr - self.contraction - self.churn, self.starting_mrr),
            "involuntary_churn_rate": percent(self.involuntary_loss, self.starting_mrr),
            "nrr_without_involuntary": percent(
                self.cohort_ending + self.involuntary_loss, self.starting_mrr
            ),
        }


@dataclass
class RecoveryRow(ReportRow):
    at_risk_count: int = 0
    at_risk_amount: int = 0
    recovered_count: int = 0
    recovered_amount: int = 0
    by_method: dict[str, list[int]] = field(default_factory=dict)  # method: [count, amount]
    mrr_saved: int = 0
    churned_count: int = 0
    churned_mrr: int = 0
    days_to_recover: list[Fraction] = field(default_factory=list)

    def quantile(self, q: Fraction) -> Fraction | None:
        """The nearest-rank quantile; the median of an even count is the mean of the two."""
        values = sorted(self.days_to_recover)
        if not values:
            return None
        if q == Fraction(1, 2):
            mid = len(values) // 2
            return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        rank = max(-(-q.numerator * len(values) // q.denominator), 1)  # ceil(q * n)
        return values[rank - 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key_dict(),
            "at_risk_count": self.at_risk_count,
            "at_risk_amount": self.at_risk_amount,
            "recovered_count": self.recovered_count,
            "recovered_amount": self.recovered_amount,
            "recovered_by_method": {
                method: {"count": count, "amount": amount}
                for method, (count, amount) in sorted(self.by_method.items())
            },
            "recovery_rate_count": percent(self.recovered_count, self.at_risk_count),
            "recovery_rate_amount": percent(self.recovered_amount, self.at_risk_amount),
            "mrr_saved": self.mrr_saved,
            "churned_count": self.churned_count,
            "churned_mrr": self.churned_mrr,
            "median_days_to_recover": days(self.quantile(Fraction(1, 2))),
            "p90_days_to_recover": days(self.quantile(Fraction(9, 10))),
        }

    def csv_dict(self) -> dict[str, Any]:
        flat = self.as_dict()
        methods = flat.pop("recovered_by_method")
        for method in RECOVERY_METHODS:
            found = methods.get(method, {"count": 0, "amount": 0})
            flat[f"recovered_by_{method}_count"] = found["count"]
            flat[f"recovered_by_{method}_amount"] = found["amount"]
        return flat


@dataclass
class Report:
    kind: str  # retention | recovery
    as_of: datetime
    by: str
    segment: str | None
    first: str  # YYYY-MM
    last: str
    rows: list[RetentionRow] | list[RecoveryRow]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "report": self.kind,
            "as_of": self.as_of.isoformat(),
            "from": self.first,
            "to": self.last,
            "by": self.by,
            "segment": self.segment,
            "notes": self.notes,
            "rows": [row.as_dict() for row in self.rows],
        }


@dataclass(frozen=True)
class Headline:
    """The figures a summary opens with, for one currency over the whole range (README,
    "Finance reports"): recovery and NRR read off the range taken as one period (the numbers
    ``--by range`` reports, to the cent); the involuntary share of churn summed over its
    months (the numbers ``--by month`` reports)."""

    currency: str
    retention: RetentionRow | None
    recovery: RecoveryRow | None
    # The currency's monthly retention rows over the range: the involuntary share of churn
    # counts every loss in it, month by month (a customer who joined and left within the
    # range is no part of the range row, but their loss was real).
    months: tuple[RetentionRow, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        rec = self.recovery.as_dict() if self.recovery else {}
        ret = self.retention.as_dict() if self.retention else {}
        lost = sum(row.churn + row.contraction for row in self.months)
        involuntary = sum(row.involuntary_loss for row in self.months)
        return {
            "currency": self.currency,
            "recovered_amount": rec.get("recovered_amount", 0),
            "recovered_count": rec.get("recovered_count", 0),
            "at_risk_amount": rec.get("at_risk_amount", 0),
            "at_risk_count": rec.get("at_risk_count", 0),
            "recovery_rate_amount": rec.get("recovery_rate_amount"),
            "mrr_saved": rec.get("mrr_saved", 0),
            "lost_mrr": lost,
            "involuntary_loss": involuntary,
            "involuntary_share_of_churn": percent(involuntary, lost),
            "starting_mrr": ret.get("starting_mrr", 0),
            "retained_mrr": self.retention.cohort_ending if self.retention else 0,
            "ending_mrr": ret.get("ending_mrr", 0),
            "nrr": ret.get("nrr"),
            "nrr_without_involuntary": ret.get("nrr_without_involuntary"),
        }


@dataclass
class Summary:
    """Both reports per period, and both over the whole range as one period (``by`` =
    ``range``): what ``dunning report summary`` shows, headline figures first."""

    retention: Report
    recovery: Report
    retention_range: Report
    recovery_range: Report
    retention_by_month: Report  # ``retention`` itself when it is by month

    def headlines(self) -> list[Headline]:
        """One per currency that had MRR or cases in the range, by currency code (the range
        reports are not segmented: one row per currency)."""
        retention = {
            r.currency: r for r in self.retention_range.rows if isinstance(r, RetentionRow)
        }
        recovery = {r.currency: r for r in self.recovery_range.rows if isinstance(r, RecoveryRow)}
        monthly = [r for r in self.retention_by_month.rows if isinstance(r, RetentionRow)]
        return [
            Headline(
                c,
                retention.get(c),
                recovery.get(c),
                tuple(row for row in monthly if row.currency == c),
            )
            for c in sorted(retention.keys() | recovery.keys())
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "report": "summary",
            "as_of": self.retention.as_of.isoformat(),
            "from": self.retention.first,
            "to": self.retention.last,
            "by": self.retention.by,
            "headline": [h.as_dict() for h in self.headlines()],
            "retention": self.retention.as_dict(),
            "recovery": self.recovery.as_dict(),
            "retention_range": self.retention_range.as_dict(),
            "recovery_range": self.recovery_range.as_dict(),
        }
