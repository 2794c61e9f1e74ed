"""``dunning demo``: the real pipeline against a simulated Stripe account with a history.

The account (:mod:`worker.sim.account`) has billed for thirteen months before the worker is
installed: customers signed up, bought and dropped add-ons, cancelled, came back, and some
renewals failed and were collected by Stripe's own retries or ended the subscription for
non-payment, in several currencies. That past is played on the Stripe-compatible peer first,
with no webhook endpoint, so none of it reaches the worker as events. Then the worker is
installed as a real one is: migrations, intake and worker started, the webhook endpoint added
(Stripe sends it only newer events), and ``dunning backfill`` (:func:`run_backfill`) reads the
account's customers, subscriptions (ended ones too) and invoices over Stripe's HTTP API. The
past changes MRR only in ways a backfill can see (subscriptions starting and ending; see
:mod:`worker.sim.account` for why in-place changes wait for the live month).

Then the live month runs the production path on the embedded defaults: the peer sends signed
webhooks over HTTP to the intake, a Celery worker (embedded broker) processes them and runs
the actions the scheduler claims from SQLite, the daily card-expiry scan runs each simulated
morning, and emails (in each customer's language, with one-click card-update links) land in an
outbox folder. Existing customers renew (some fail: :mod:`worker.sim.population`), others sign
up, cancel, buy or drop an add-on, change seats. Only time is simulated: one
:class:`~worker.clock.ManualClock` jumps from one interesting moment (a renewal, a customer's
move, a due action) to the next, and the demo waits for the pipeline to go quiet at each.

The reports cover the twelve months before the live month and the live month itself; the
summary's involuntary churn and MRR saved are the live month's figures from those reports.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from celery.contrib.testing.worker import start_worker
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from worker import clock
from worker.app import DunningCelery, create_app
from worker.backfill.service import BackfillSummary, run_backfill
from worker.config import load_policy
from worker.dunning import expiring
from worker.dunning.views import RecoverySummary, recovery_summary
from worker.httpserver import serve_in_thread
from worker.migrate import upgrade
from worker.money import format_money
from worker.reports.build import build_summary
from worker.reports.model import RecoveryRow, Report, RetentionRow, Summary
from worker.reports.render import render, render_summary
from worker.runtime import Runtime
from worker.settings import EMBEDDED_BROKER_URL, LinkKey, Secret, Settings, default_config_path
from worker.sim.account import Account, Change, Ids, months, plan_account, play_past, tier
from worker.sim.driver import Timeline, next_due, settle
from worker.sim.population import Move, make_population
from worker.sim.stripe_peer import SUCCEED, CardSpec, StripePeer
from worker.webhooks.intake import build_intake

LIVE_START = datetime(2026, 3, 1, 9, tzinfo=UTC)
MONTH = timedelta(days=30)  # the live month
HISTORY_MONTHS = 12  # reported before the live month
console = Console()


def run_demo(*, customers: int, seed: int, out: Path) -> None:
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    account = plan_account(make_population(customers, seed=seed), seed=seed, live_start=LIVE_START)
    manual = clock.ManualClock(account.first_month)
    api_key, secret = "sk_test_demo", f"whsec_{secrets.token_hex(16)}"
    policy = load_policy(default_config_path())
    database_url = f"sqlite:///{out / 'dunning.db'}"
    upgrade(database_url)
    began = time.monotonic()
    with clock.use_clock(manual):
        peer = StripePeer(api_key=api_key, webhook_secret=secret)
        ids = play_past(peer, manual, account)  # before the worker exists
        manual.set(LIVE_START)
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
                peer.connect_endpoint(f"{intake_url}/webhooks/stripe")
                with start_worker(
                    app,
                    pool="threads",
                    concurrency=4,
                    perform_ping_check=False,
                    loglevel="ERROR",
                    shutdown_timeout=10,
                ):
                    history = run_backfill(app.runtime, since=None, now=LIVE_START, progress=False)
                    _print_history(account, history)
                    _simulate(app, peer, manual, account, ids)
            with app.runtime.session() as session:
                summary = recovery_summary(session, default_locale=policy.emails.default_locale)
            retention, recovery = _reports(app.runtime.engine, manual.now(), out)
            recent = _recent(app.runtime.engine, manual.now())
            app.runtime.close()
        peer.close()
    _print_summary(summary, retention, recovery, out, time.monotonic() - began)
    console.print(
        f"\nThe last three months, as `dunning report summary --from {recent.retention.first} "
        f"--to {recent.retention.last}` prints them:",
        soft_wrap=True,
        highlight=False,
    )
    console.print(render_summary(recent, "table"), end="", highlight=False, markup=False)
    console.print(
        f"The whole year on one page for finance: {out / 'report.html'}; as JSON: "
        f"{out / 'report.json'} (also {out / 'retention.json'}, {out / 'recovery.json'})",
        soft_wrap=True,
    )


def _print_history(account: Account, history: BackfillSummary) -> None:
    first = account.first_month
    billed = (LIVE_START.year - first.year) * 12 + LIVE_START.month - first.month
    console.print(
        f"The simulated Stripe account billed {len(account.members)} customers for {billed} "
        "months before the worker was installed; the history loaded with `dunning backfill`:",
        soft_wrap=True,
    )
    for line in history.lines():
        console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)
    if history.failed:
        console.print(f"[yellow]warning: {len(history.failed)} object(s) failed to backfill")


def _simulate(
    app: DunningCelery,
    peer: StripePeer,
    manual: clock.ManualClock,
    account: Account,
    ids: dict[str, Ids],
) -> None:
    start = account.live_start
    end = start + MONTH
    timeline = Timeline()
    for change in account.changes:  # first: a cancellation at a renewal moment replaces it
        timeline.at(change.at, _change(peer, account, ids, change))
    for member in account.members:
        person, got = member.person, ids[member.person.email]
        if member.live:
            peer.script_card(got.customer, person.outcomes)  # the live month's bank answers
            if person.backup is not None:  # saved now: see worker.sim.account
                peer.attach_card(got.customer, person.backup)
            for move in person.early_moves:
                timeline.at(start + move.after, _card_move(peer, move.kind, got.customer))
        for label, sub in got.subs.items():
            when = peer.next_renewal(sub)
            if when is not None and when < end:
                moves = person.moves if member.live and label == "main" else []
                timeline.at(
                    when, _renewal(peer, timeline, manual, moves=moves, cus=got.customer, sub=sub)
                )
    for day in range(MONTH.days):  # the beat's daily scan, each simulated morning
        timeline.at(start + timedelta(days=day, hours=-3), _card_scan(app, manual))
    with Progress(
        TextColumn("[bold]live month"),
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
    timeline: Timeline,
    manual: clock.ManualClock,
    *,
    moves: list[Move],
    cus: str,
    sub: str,
) -> Callable[[], None]:
    def renew() -> None:
        if peer.next_renewal(sub) is None:
            return  # cancelled earlier in the month
        invoice_id, paid = peer.bill(sub)
        if paid:
            return
        failed_at = manual.now()
        for move in moves:
            timeline.at(failed_at + move.after, _move(peer, move.kind, cus, invoice_id))

    return renew


def _change(
    peer: StripePeer, account: Account, ids: dict[str, Ids], change: Change
) -> Callable[[], None]:
    def act() -> None:
        match change.kind:
            case "signup":
                person = next(p for p in account.newcomers if p.email == change.email)
                cus = peer.create_customer(
                    email=person.email,
                    name=person.name,
                    card=person.card,
                    timezone=person.timezone,
                    locale=person.locale,
                )
                sub = peer.create_subscription(
                    customer_id=cus,
                    unit_amount=person.amount,
                    currency=person.currency,
                    product_name=tier(person),
                )
                ids[person.email] = Ids(cus, {"main": sub})
            case "cancel":
                for sub in ids[change.email].subs.values():
                    if peer.next_renewal(sub) is not None:
                        peer.cancel_subscription(sub)
            case "buy_addon":
                got = ids[change.email]
                currency = peer.get(got.subs["main"])["currency"]
                got.subs["addon"] = peer.create_subscription(
                    customer_id=got.customer,
                    unit_amount=change.amount,
                    currency=currency,
                    product_name="Add-on",
                )
            case "cancel_addon":
                peer.cancel_subscription(ids[change.email].subs["addon"])
            case "seats":
                peer.change_quantity(ids[change.email].subs["main"], change.quantity)

    return act


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


def _reports(engine: Engine, as_of: datetime, out: Path) -> tuple[Report, Report]:
    """The finance reports over the twelve months before the live month and the live month, as
    ``dunning report summary --by month`` builds them: the one-page HTML report for finance
    (headline figures over the year, charts, tables) and its JSON, and each report as JSON."""
    first, last = f"{months(LIVE_START, -HISTORY_MONTHS):%Y-%m}", f"{LIVE_START:%Y-%m}"
    summary = build_summary(engine, first=first, last=last, as_of=as_of)
    (out / "report.html").write_text(render_summary(summary, "html"), encoding="utf-8")
    (out / "report.json").write_text(render_summary(summary, "json"), encoding="utf-8")
    (out / "retention.json").write_text(render(summary.retention, "json"), encoding="utf-8")
    (out / "recovery.json").write_text(render(summary.recovery, "json"), encoding="utf-8")
    return summary.retention, summary.recovery


def _recent(engine: Engine, as_of: datetime) -> Summary:
    """The three months up to the live one, for the terminal (the year is in the page)."""
    first, last = f"{months(LIVE_START, -2):%Y-%m}", f"{LIVE_START:%Y-%m}"
    return build_summary(engine, first=first, last=last, as_of=as_of)


def live_rows(report: Report) -> dict[str, Any]:
    """The report's rows for the live month, by currency."""
    return {
        row.currency: row
        for row in report.rows
        if row.period == f"{LIVE_START:%Y-%m}" and row.segment is None
    }


def _amounts(by_currency: dict[str, int]) -> str:
    shown = {c: v for c, v in sorted(by_currency.items()) if v}
    return ", ".join(format_money(v, c) for c, v in shown.items()) or "-"


def _print_summary(
    summary: RecoverySummary, retention: Report, recovery: Report, out: Path, seconds: float
) -> None:
    kept: dict[str, RetentionRow] = live_rows(retention)
    won: dict[str, RecoveryRow] = live_rows(recovery)
    figures = {
        "starting_mrr": {c: row.starting_mrr for c, row in kept.items()},
        "involuntary_churn_mrr": {c: row.involuntary_loss for c, row in kept.items()},
        "mrr_saved": {c: row.mrr_saved for c, row in won.items()},
        "nrr": {c: row.as_dict()["nrr"] for c, row in kept.items()},
        "nrr_without_involuntary": {
            c: row.as_dict()["nrr_without_involuntary"] for c, row in kept.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    table = Table(title=f"Recovery summary (live month, {LIVE_START:%B %Y})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("MRR at the start", _amounts(figures["starting_mrr"]))
    table.add_row("failed invoices", str(summary.failed))
    table.add_row("at risk", _amounts(summary.at_risk))
    table.add_row("recovered", f"{summary.recovered} ({summary.recovery_rate:.0%})")
    table.add_row("recovered amount", _amounts(summary.recovered_amount))
    table.add_row("recovered by", _counts(summary.by_method))
    table.add_row("final states", _counts(summary.by_state))
    table.add_row("MRR saved", _amounts(figures["mrr_saved"]))
    table.add_row("involuntary churn (MRR)", _amounts(figures["involuntary_churn_mrr"]))
    table.add_row(
        "NRR (without involuntary churn)",
        ", ".join(
            f"{c.upper()} {nrr}% ({figures['nrr_without_involuntary'][c]}%)"
            for c, nrr in sorted(figures["nrr"].items())
            if nrr is not None
        )
        or "-",
    )
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
