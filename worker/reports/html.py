"""The HTML report: one self-contained page (inline CSS and SVG, no script, nothing to fetch)
that can be mailed as an attachment and opened offline.

Python computes every chart's geometry here as plain shapes (:class:`Shape` in a :class:`Chart`);
the template ``templates/reports/report.html.j2`` only lays them out, with autoescape on because
segment names (plans, cohorts) are user data. Amounts are never added across currencies: charts
come in blocks, one per (currency, segment) pair in the order the rows first name them, at most
:data:`MAX_BLOCKS`; the table lists every row. Each coordinate is a ratio of integers (amounts,
counts, hundredths of a percent, days) scaled into a fixed pixel range, so no input can put NaN
or Infinity into the SVG, however large or negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from math import floor
from typing import Any

import jinja2
from babel.numbers import format_compact_currency

from worker.money import format_money, major_units
from worker.reports.model import (
    RECOVERY_COLUMNS,
    RECOVERY_METHODS,
    RETENTION_COLUMNS,
    RecoveryRow,
    Report,
    RetentionRow,
    days,
)
from worker.resources import bundled

MAX_BLOCKS = 12  # chart blocks on one page; past that a note says how many were left out
MAX_DAYS = 60  # the histogram's last bin holds every recovery that took this many days or more
MISSING = "\N{EN DASH}"

_PERCENT = {"nrr", "grr", "involuntary_churn_rate", "nrr_without_involuntary"}
_PERCENT |= {"recovery_rate_count", "recovery_rate_amount"}
_TEXT = frozenset({"period", "period_start", "period_end", "segment", "currency"})

_GRID, _INK, _MUTED = "#e5e7eb", "#1f2937", "#6b7280"


@dataclass(frozen=True)
class Shape:
    """One SVG element: ``text`` is a <text>'s content, for any other tag its <title> tooltip."""

    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass(frozen=True)
class Swatch:
    """A legend entry; involuntary losses are dashed as well as coloured."""

    label: str
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    name: str  # the root's data-chart attribute
    title: str  # <title> and aria-label
    width: int
    height: int
    shapes: list[Shape]
    legend: list[Swatch]
    caption: str = ""


_START_END = Swatch("starting / ending MRR", "#64748b")
_MOVES = (
    Swatch("new", "#16a34a"),
    Swatch("reactivation", "#0d9488"),
    Swatch("expansion", "#2563eb"),
    Swatch("contraction, voluntary", "#f59e0b"),
    Swatch("contraction, involuntary", "#b45309", dashed=True),
    Swatch("churn, voluntary", "#ef4444"),
    Swatch("churn, involuntary", "#7f1d1d", dashed=True),
)
_RATES = (
    ("nrr", Swatch("NRR", "#2563eb")),
    ("grr", Swatch("GRR", "#16a34a")),
    ("nrr_without_involuntary", Swatch("NRR without involuntary loss", "#9333ea", dashed=True)),
)
_AT_RISK = Swatch("at risk", "#cbd5e1")
_METHODS = {
    m: Swatch(m.replace("_", " "), colour)
    for m, colour in zip(
        RECOVERY_METHODS,
        ("#2563eb", "#16a34a", "#0891b2", "#9333ea", "#0d9488", "#ca8a04"),
        strict=True,
    )
}
_UNATTRIBUTED = Swatch("no method recorded", "#94a3b8")
_CASES = Swatch("recovered cases", "#60a5fa")


def to_html(report: Report) -> str:
    """The report as one HTML page: title, as-of time, notes, charts, then every row."""
    columns = RETENTION_COLUMNS if report.kind == "retention" else RECOVERY_COLUMNS
    rows = []
    for row in report.rows:
        flat = row.csv_dict() if isinstance(row, RecoveryRow) else row.as_dict()
        rows.append([_cell(c, flat[c], row.currency) for c in columns])
    blocks, not_charted = chart_blocks(report)
    return template("reports/report.html.j2").render(
        title=_title(report),
        as_of=f"{report.as_of:%Y-%m-%d %H:%M:%S %Z}",
        as_of_iso=report.as_of.isoformat(),
        notes=report.notes,
        columns=[(c.replace("_", " "), c not in _TEXT) for c in columns],
        rows=rows,
        blocks=blocks,
        not_charted=not_charted,
    )


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(bundled("templates", "reports/report.html.j2")),
        autoescape=True,  # plan and cohort names are user data
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def template(name: str) -> jinja2.Template:
    """A page template under ``templates/``, autoescaped."""
    return _environment().get_template(name)


def _title(report: Report) -> str:
    span = report.first if report.first == report.last else f"{report.first} to {report.last}"
    by = {"ttm": "trailing twelve months", "range": "as one period"}.get(report.by)
    by = by or f"by {report.by}"
    per = f", per {report.segment}" if report.segment else ""
    return f"{report.kind.capitalize()} report, {span}, {by}{per}"


def _cell(column: str, value: Any, currency: str) -> str:
    """One table cell. A row's dict holds amounts in minor units and counts (``*_count``) as
    ints; percents, days to recover and dates as strings."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return str(value) if column.endswith("_count") else format_money(value, currency)
    if column in _PERCENT:
        return f"{value}%"
    if column in {"period_start", "period_end"}:
        return value[:10]  # periods start and end at midnight UTC
    return str(value)


def chart_blocks(report: Report) -> tuple[list[tuple[str, list[Chart]]], int]:
    """The chart blocks (heading, charts), and how many (currency, segment) pairs were left
    out past the cap."""
    groups: dict[tuple[str, str | None], list[RetentionRow | RecoveryRow]] = {}
    for row in report.rows:
        groups.setdefault((row.currency, row.segment), []).append(row)
    blocks = []
    for (currency, segment), rows in list(groups.items())[:MAX_BLOCKS]:
        rows.sort(key=lambda r: r.period_start)
        label = currency.upper() if segment is None else f"{currency.upper()}, {segment}"
        retention = [r for r in rows if isinstance(r, RetentionRow)]
        recovery = [r for r in rows if isinstance(r, RecoveryRow)]
        charts = (
            [_waterfall(retention, currency, label), _rates(retention, label)]
            if retention
            else [_funnel(recovery, currency, label), _histogram(recovery, report.by, label)]
        )
        blocks.append((label, charts))
    return blocks, len(groups) - len(blocks)


# --- geometry -------------------------------------------------------------------------------


def _ticks(lo: int, hi: int) -> list[int]:
    """Round values from ``lo`` or below to ``hi`` or above, at least one step apart: about five
    steps of 1, 2 or 5 times a power of ten. Exact on integers of any size."""
    rough = max((hi - lo) // 5, 1)
    power = 10 ** (len(str(rough)) - 1)
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    first, last = lo // step * step, -(-hi // step) * step
    return list(range(first, max(last, first + step) + 1, step))


@dataclass(frozen=True)
class _Axis:
    """Maps values ``lo`` .. ``hi`` (``lo < hi``) linearly onto pixels ``start`` .. ``end``,
    clamping values outside (a median past the histogram's last bin)."""

    lo: int
    hi: int
    start: float
    end: float

    def __call__(self, value: int | Fraction) -> float:
        share = min(max(Fraction(value - self.lo, self.hi - self.lo), Fraction(0)), Fraction(1))
        return self.start + float(share) * (self.end - self.start)


@dataclass(frozen=True)
class _Frame:
    """A chart's canvas and the plot area inside it: tick labels go left of the plot, period
    labels and the horizontal axis title below it."""

    width: int
    height: int
    left: int = 76
    top: int = 16
    margin_right: int = 16
    margin_bottom: int = 48

    @property
    def right(self) -> int:
        return self.width - self.margin_right

    @property
    def bottom(self) -> int:
        return self.height - self.margin_bottom

    def value_axis(
        self, lo: int, hi: int, *, label: Callable[[int], str], title: str
    ) -> tuple[_Axis, list[Shape]]:
        """A vertical axis over at least ``lo`` .. ``hi``: gridlines, tick labels, title."""
        ticks = _ticks(lo, hi)
        y = _Axis(ticks[0], ticks[-1], self.bottom, self.top)
        shapes = [_line(self.left, y(t), self.right, y(t)) for t in ticks]
        shapes += [_text(self.left - 6, y(t) + 4, label(t), "end") for t in ticks]
        shapes.append(_text(14, (self.top + self.bottom) / 2, title, vertical=True))
        return y, shapes

    def below(self, x: float, text: str) -> Shape:
        """A label under the plot at ``x`` (a period, a tick)."""
        return _text(x, self.height - 30, text)

    def x_title(self, text: str) -> Shape:
        return _text((self.left + self.right) / 2, self.height - 8, text)

    def note(self, text: str) -> Shape:
        """A message in the middle of the plot, for when there is nothing to draw."""
        return _text((self.left + self.right) / 2, (self.top + self.bottom) / 2, text)


def _n(value: float) -> str:
    return f"{value:.1f}"


def _rect(x: float, y0: float, y1: float, width: float, *, fill: Swatch, tip: str) -> Shape:
    """A bar from ``y0`` to ``y1`` (either order)."""
    attrs = {"x": _n(x), "y": _n(min(y0, y1)), "width": _n(width), "height": _n(abs(y1 - y0))}
    attrs["fill"] = fill.colour
    if fill.dashed:
        attrs |= {"stroke": _INK, "stroke-dasharray": "3 2"}
    return Shape("rect", attrs, tip)


def _line(x1: float, y1: float, x2: float, y2: float, *, colour: str = _GRID) -> Shape:
    """A gridline, or in any other colour a dashed marker (100 %, median, p90)."""
    attrs = {"x1": _n(x1), "y1": _n(y1), "x2": _n(x2), "y2": _n(y2), "stroke": colour}
    return Shape("line", attrs | ({"stroke-dasharray": "4 3"} if colour != _GRID else {}))


def _text(
    x: float, y: float, text: str, anchor: str = "middle", *, vertical: bool = False
) -> Shape:
    attrs = {"x": _n(x), "y": _n(y), "text-anchor": anchor}
    if vertical:
        attrs["transform"] = f"rotate(-90 {_n(x)} {_n(y)})"
    return Shape("text", attrs, text)


def _short_money(currency: str) -> Callable[[int], str]:
    """Tick labels: ``€1.2K`` for 123,456 cents."""
    return lambda amount: format_compact_currency(
        major_units(amount, currency), currency.upper(), locale="en_US", fraction_digits=1
    )


def _percent_label(hundredths: int) -> str:
    return f"{Decimal(hundredths).scaleb(-2).normalize():f}%"


# --- charts ---------------------------------------------------------------------------------


def _waterfall(rows: list[RetentionRow], currency: str, label: str) -> Chart:
    """Per period: starting MRR, each movement as a bar floating from the running level, and
    ending MRR (drawn as reported, so a gap to the running level shows an inconsistency)."""
    bar, per = 9, len(_MOVES) + 2
    cluster = per * (bar + 1) + 16
    frame = _Frame(max(76 + len(rows) * cluster + 16, 360), 300)
    bars: list[tuple[int, int, int, Swatch, str]] = []  # period index, from, to, style, tooltip
    for i, row in enumerate(rows):
        bars.append((i, 0, row.starting_mrr, _START_END, "starting MRR"))
        level = row.starting_mrr
        deltas = [row.new, row.reactivation, row.expansion, -row.contraction_voluntary]
        deltas += [-row.contraction_involuntary, -row.churn_voluntary, -row.churn_involuntary]
        for swatch, delta in zip(_MOVES, deltas, strict=True):
            bars.append((i, level, level + delta, swatch, swatch.label))
            level += delta
        bars.append((i, 0, row.ending_mrr, _START_END, "ending MRR"))
    ends = [end for _, start, stop, _, _ in bars for end in (start, stop)]
    y, shapes = frame.value_axis(
        min(ends), max(ends), label=_short_money(currency), title=f"MRR ({currency.upper()})"
    )
    for n, (i, start, stop, swatch, what) in enumerate(bars):
        x = frame.left + i * cluster + 8 + (n % per) * (bar + 1)
        tip = f"{rows[i].period}: {what} {format_money(stop - start, currency)}"
        shapes.append(_rect(x, y(start), y(stop), bar, fill=swatch, tip=tip))
    shapes += [frame.below(frame.left + (i + 0.5) * cluster, r.period) for i, r in enumerate(rows)]
    shapes.append(frame.x_title("period"))
    title = f"MRR waterfall, {label}"
    legend = [_START_END, *_MOVES]
    return Chart("mrr-waterfall", title, frame.width, frame.height, shapes, legend)


def _rates(rows: list[RetentionRow], label: str) -> Chart:
    """NRR, GRR and NRR without involuntary loss per period, as lines with points; a period
    without starting MRR has no rates and breaks the lines. A dashed line marks 100 %."""
    step = 72
    frame = _Frame(max(76 + len(rows) * step + 16, 360), 260)
    flat = [r.as_dict() for r in rows]  # percents as strings: "41.88" becomes 4188 hundredths
    series = [
        (swatch, [None if d[key] is None else int(Decimal(d[key]) * 100) for d in flat])
        for key, swatch in _RATES
    ]
    known = [v for _, values in series for v in values if v is not None]
    lo, hi = min([*known, 10000]), max([*known, 10000])
    pad = max(1000 - (hi - lo), 0) // 2  # at least ten points: flat lines stay flat
    y, shapes = frame.value_axis(
        lo - pad, hi + pad, label=_percent_label, title="% of starting MRR"
    )
    shapes.append(_line(frame.left, y(10000), frame.right, y(10000), colour=_MUTED))

    def x(i: int) -> float:
        return frame.left + (i + 0.5) * step

    for swatch, values in series:
        runs: list[list[tuple[int, int]]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append((i, v))
                attrs = {"cx": _n(x(i)), "cy": _n(y(v)), "r": "3.5", "fill": swatch.colour}
                tip = f"{rows[i].period}: {swatch.label} {_percent_label(v)}"
                shapes.append(Shape("circle", attrs, tip))
        for run in (r for r in runs if len(r) > 1):
            points = " ".join(f"{_n(x(i))},{_n(y(v))}" for i, v in run)
            attrs = {"points": points, "fill": "none", "stroke": swatch.colour}
            attrs |= {"stroke-width": "2"} | ({"stroke-dasharray": "5 3"} if swatch.dashed else {})
            shapes.insert(0, Shape("polyline", attrs))  # under the points
    if not known:
        shapes.append(frame.note("no starting MRR: rates undefined"))
    shapes += [frame.below(x(i), r.period) for i, r in enumerate(rows)]
    shapes.append(frame.x_title("period"))
    legend = [swatch for _, swatch in _RATES]
    return Chart("nrr-grr", f"NRR and GRR, {label}", frame.width, frame.height, shapes, legend)


def _funnel(rows: list[RecoveryRow], currency: str, label: str) -> Chart:
    """Per period, the amount at risk and under it the amount recovered, split by method."""
    row_height = 40
    frame = _Frame(730, 16 + len(rows) * row_height + 48, left=90, margin_right=130)
    parts = [_recovered_parts(row) for row in rows]
    recovered = [sum(amount for _, _, amount in p) for p in parts]
    ticks = _ticks(0, max([0, *(r.at_risk_amount for r in rows), *recovered]))
    x = _Axis(ticks[0], ticks[-1], frame.left, frame.right)
    shapes = [_line(x(t), frame.top, x(t), frame.bottom) for t in ticks]
    shapes += [frame.below(x(t), _short_money(currency)(t)) for t in ticks]
    for i, row in enumerate(rows):
        y = frame.top + i * row_height
        shapes.append(_text(frame.left - 8, y + 18, row.period, "end"))
        at_risk = format_money(row.at_risk_amount, currency)
        tip = f"{row.period}: {row.at_risk_count} at risk, {at_risk}"
        width = x(row.at_risk_amount) - frame.left
        shapes.append(_rect(frame.left, y + 2, y + 15, width, fill=_AT_RISK, tip=tip))
        start = 0
        for swatch, count, amount in parts[i]:
            tip = f"{row.period}: recovered by {swatch.label}, {format_money(amount, currency)}"
            tip += f" ({count} cases)" if count else ""
            width = x(start + amount) - x(start)
            shapes.append(_rect(x(start), y + 17, y + 30, width, fill=swatch, tip=tip))
            start += amount
        rate = row.as_dict()["recovery_rate_amount"]
        text = f"{rate}% recovered" if rate else MISSING
        shapes.append(_text(frame.right + 8, y + 27, text, "start"))
    shapes.append(frame.x_title(f"amount ({currency.upper()})"))
    shapes.append(_text(14, (frame.top + frame.bottom) / 2, "period", vertical=True))
    legend = [_AT_RISK, *_METHODS.values(), _UNATTRIBUTED]
    title = f"Recovery funnel, {label}"
    return Chart("recovery-funnel", title, frame.width, frame.height, shapes, legend)


def _recovered_parts(row: RecoveryRow) -> list[tuple[Swatch, int, int]]:
    """The recovered amount by method (known methods first), then what no method accounts for:
    (style, count, amount), positive amounts only, the segments of a stacked bar."""
    methods = [*RECOVERY_METHODS, *sorted(set(row.by_method) - set(RECOVERY_METHODS))]
    parts = [
        (_METHODS.get(m) or Swatch(m, _UNATTRIBUTED.colour), count, amount)
        for m in methods
        for count, amount in [row.by_method.get(m, [0, 0])]
    ]
    attributed = sum(amount for _, _, amount in parts)
    parts.append((_UNATTRIBUTED, 0, row.recovered_amount - attributed))
    return [part for part in parts if part[2] > 0]


def _histogram(rows: list[RecoveryRow], by: str, label: str) -> Chart:
    """Recovered cases per whole day to recover, with the median and p90 marked. Trailing
    windows overlap, so with ``ttm`` only the last window counts (each case once)."""
    source = rows[-1:] if by == "ttm" else rows
    # A row holding every case of the block, for the row's own quantile definition.
    pooled = replace(rows[-1], days_to_recover=[d for r in source for d in r.days_to_recover])
    whole = [min(max(floor(d), 0), MAX_DAYS) for d in pooled.days_to_recover]
    bins = [whole.count(day) for day in range(max(whole, default=0) + 1)]
    frame = _Frame(max(76 + len(bins) * 14 + 76, 360), 260, top=40, margin_right=76)
    y, shapes = frame.value_axis(0, max(bins), label=str, title="recovered cases")
    x = _Axis(0, len(bins), frame.left, frame.right)
    ticks = _ticks(0, len(bins))
    for day, count in enumerate(bins):
        capped = day == MAX_DAYS
        tip = f"{day} days or more" if capped else f"{day} to {day + 1} days"
        tip += f": {count} cases"
        shapes.append(_rect(x(day) + 1, y(0), y(count), x(1) - x(0) - 2, fill=_CASES, tip=tip))
        if day % (ticks[1] - ticks[0]) == 0 or capped:
            shapes.append(
                frame.below(x(day) + (x(1) - x(0)) / 2, f"{day}+" if capped else str(day))
            )
    marks = (("median", Fraction(1, 2)), ("p90", Fraction(9, 10)))
    for n, (name, q) in enumerate(marks):
        value = pooled.quantile(q)
        if value is not None:
            at = x(value)
            shapes.append(_line(at, 8 + n * 14, at, frame.bottom, colour=_INK))
            text = f"{name} {days(value)} d"
            on_left = at < (frame.left + frame.right) / 2  # the label goes on the roomier side
            shapes.append(
                _text(at + (4 if on_left else -4), 16 + n * 14, text, "start" if on_left else "end")
            )
    if not whole:
        shapes.append(frame.note("no recovered case in this range"))
    shapes.append(frame.x_title("days to recover (whole days)"))
    caption = f"{len(whole)} recovered cases"
    if by == "ttm":
        caption += f", in the last window only ({rows[-1].period}): trailing windows overlap"
    title = f"Days to recover, {label}"
    return Chart("time-to-recover", title, frame.width, frame.height, shapes, [], caption)
