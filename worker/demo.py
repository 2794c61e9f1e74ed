"""``dunning demo``: the real pipeline against a simulated billing system, over a month.

Everything is the production path on the embedded defaults: the Stripe-compatible peer sends
signed webhooks over HTTP to the intake, a Celery worker (embedded broker) processes them and
runs the actions the scheduler claims from SQLite, the daily card-expiry scan runs each
simulated morning, and emails (in each customer's language, with one-click card-update links)
land in an outbox folder. Only
time is simulated: one :class:`~worker.clock.ManualClock` jumps from one interesting moment
(a renewal, a customer's move, a due action) to the next, and the demo waits for the pipeline
to go quiet at each.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from celery.contrib.testing.worker import start_worker
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from worker import clock
from worker.app import DunningCelery, create_app
from worker.config import load_policy
from worker.dunning import expiring
from worker.dunning.views import RecoverySummary, recovery_summary
from worker.httpserver import serve_in_thread
from worker.migrate import upgrade
from worker.money import format_money
from worker.reports.build import build_report
from worker.reports.render import render
from worker.runtime import Runtime
from worker.settings import EMBEDDED_BROKER_URL, LinkKey, Secret, Settings, default_config_path
from worker.sim.driver import next_due, settle
from worker.sim.population import Customer, make_population
from worker.sim.stripe_peer import SUCCEED, CardSpec, StripePeer
from worker.webhooks.intake import build_intake

MONTH = timedelta(days=30)
console = Console()


class _Timeline:
    """Scripted customer moves, in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: datetime, move: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), move))

    def next_time(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: datetime) -> None:
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)[2]()


def run_demo(*, customers: int, seed: int, out: Path) -> None:
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    manual = clock.ManualClock(start)
    api_key, secret = "sk_test_demo", f"whsec_{secrets.token_hex(16)}"
    policy = load_policy(default_config_path())
    database_url = f"sqlite:///{out / 'dunning.db'}"
    upgrade(database_url)
    began = time.monotonic()
    with clock.use_clock(manual):
        peer = StripePeer(api_key=api_key, webhook_secret=secret)
        with peer.serve() as api_base:
            port = _free_port()  # known first: the emails' links point at this intake
            settings = Settings(
                database_url=database_url,
                broker_url=EMBEDDED_BROKER_URL,
                config_path=default_config_path(),
                stripe_api_key=Secret(api_key),
                stripe_webhook_secret=Secret(secret),
                stripe_api_base=api_base,
                public_url=f"http://127.0.0.1:{port}",
                link_keys=(LinkKey("demo", Secret(secrets.token_urlsafe(32))),),
                data_dir=out,
            )
            app = create_app(settings, Runtime(settings, policy=policy))
            with serve_in_thread(build_intake(app), port=port) as intake_url:
                peer.webhook_url = f"{intake_url}/webhooks/stripe"
                with start_worker(
                    app,
                    pool="threads",
                    concurrency=4,
                    perform_ping_check=False,
                    loglevel="ERROR",
                    shutdown_timeout=10,
                ):
                    _simulate(app, peer, manual, make_population(customers, seed=seed), start)
            with app.runtime.session() as session:
                summary = recovery_summary(session, default_locale=policy.emails.default_locale)
            reports = _reports(app.runtime.engine, start, manual.now(), out)
            app.runtime.close()
        peer.close()
    _print_summary(summary, out, time.monotonic() - began)
    for text in reports:
        console.print(text, end="", highlight=False, markup=False)
    console.print(f"The same as one HTML page: {out / 'report.html'}", soft_wrap=True)


def _simulate(
    app: DunningCelery,
    peer: StripePeer,
    manual: clock.ManualClock,
    population: list[Customer],
    start: datetime,
) -> None:
    timeline = _Timeline()
    for person in population:
        cus = peer.create_customer(
            email=person.email,
            name=person.name,
            card=person.card,
            timezone=person.timezone,
            locale=person.locale,
        )
        if person.backup is not None:
            peer.attach_card(cus, person.backup)
        sub = peer.create_subscription(
            customer_id=cus, unit_amount=person.amount, currency=person.currency
        )
        for move in person.early_moves:
            timeline.at(start + move.after, _card_move(peer, move.kind, cus))
        timeline.at(
            start + person.bill_after,
            _renewal(peer, timeline, manual, person=person, cus=cus, sub=sub),
        )
    end = start + MONTH
    for day in range(MONTH.days):  # the beat's daily scan, each simulated morning
        timeline.at(start + timedelta(days=day, hours=-3), _card_scan(app, manual))
    with Progress(
        TextColumn("[bold]simulated month"),
        BarColumn(),
        TextColumn("day {task.completed:>4.1f}/30"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("month", total=30)
        while True:
            if not settle(app, peer):
                console.print("[yellow]warning: the pipeline did not go quiet in time")
            when = min(filter(None, [timeline.next_time(), next_due(app), end]))
            if when >= end:
                break
            manual.set(max(when, manual.now()))
            timeline.run_due(manual.now())
            progress.update(bar, completed=(manual.now() - start) / timedelta(days=1))
        manual.set(end)
        progress.update(bar, completed=30)


def _renewal(
    peer: StripePeer,
    timeline: _Timeline,
    manual: clock.ManualClock,
    *,
    person: Customer,
    cus: str,
    sub: str,
) -> Callable[[], None]:
    def renew() -> None:
        invoice_id, paid = peer.bill(sub)
        if paid:
            return
        failed_at = manual.now()
        for move in person.moves:
            timeline.at(failed_at + move.after, _move(peer, move.kind, cus, invoice_id))

    return renew


def _move(peer: StripePeer, kind: str, cus: str, invoice_id: str) -> Callable[[], None]:
    def act() -> None:
        if peer.invoice(invoice_id)["status"] != "open":
            return  # already settled (or cancelled) by the time the customer acts
        if kind == "customer_pays":
            peer.customer_pays_on_hosted_page(invoice_id)
        else:
            _card_move(peer, kind, cus)()

    return act


def _card_move(peer: StripePeer, kind: str, cus: str) -> Callable[[], None]:
    def act() -> None:
        card = CardSpec(last4="0005", exp_year=2031, outcomes=[SUCCEED])
        via: Literal["network_updater", "customer"] = (
            "network_updater" if kind == "network_updater" else "customer"
        )
        peer.update_card(cus, card, via=via)

    return act


def _card_scan(app: DunningCelery, manual: clock.ManualClock) -> Callable[[], None]:
    def scan() -> None:
        expiring.scan(app.runtime, now=manual.now(), requests_per_second=1000)

    return scan


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reports(engine: Engine, start: datetime, end: datetime, out: Path) -> list[str]:
    """The finance reports over the simulated weeks, as ``dunning report`` prints them; the
    retention report also written as HTML."""
    first, last = f"{start:%Y-%m}", f"{end:%Y-%m}"
    retention = build_report(engine, "retention", first=first, last=last, as_of=end)
    recovery = build_report(engine, "recovery", first=first, last=last, as_of=end)
    (out / "report.html").write_text(render(retention, "html"), encoding="utf-8")
    return [render(retention, "table"), render(recovery, "table")]


def _amounts(by_currency: dict[str, int]) -> str:
    return ", ".join(format_money(v, c) for c, v in sorted(by_currency.items())) or "-"


def _print_summary(summary: RecoverySummary, out: Path, seconds: float) -> None:
    table = Table(title="Recovery summary (simulated month)", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("failed invoices", str(summary.failed))
    table.add_row("at risk", _amounts(summary.at_risk))
    table.add_row("recovered", f"{summary.recovered} ({summary.recovery_rate:.0%})")
    table.add_row("recovered amount", _amounts(summary.recovered_amount))
    table.add_row("recovered by", _counts(summary.by_method))
    table.add_row("final states", _counts(summary.by_state))
    table.add_row("involuntary churn (MRR)", _amounts(summary.involuntary_churn_mrr))
    table.add_row("emails sent", f"{summary.emails_sent} → {out / 'outbox'}")
    table.add_row("emails by language", _counts(summary.emails_by_language))
    table.add_row("card-expiry notices sent", str(summary.card_notices_sent))
    console.print(table)
    console.print(f"Took {seconds:.0f} s. Look around the cases:", soft_wrap=True)
    console.print(
        f"  DUNNING_DATABASE_URL=sqlite:///{out / 'dunning.db'} dunning cases list",
        soft_wrap=True,
        highlight=False,
    )


def _counts(by_key: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(by_key.items())) or "-"
