"""``dunning backfill``: mirror the provider's billing history from before we were installed.

Owns: paging through the provider's customers, subscriptions and invoices; feeding each object
through the parsers and upserts that events use (``worker.billing.normalise`` and ``.service``);
rebuilding each subscription's MRR history with deterministic sources (``worker.ledger.history``);
the resumable cursor (:mod:`worker.backfill.models`) and a progress bar.

Does not own: the CLI (it prints :meth:`BackfillSummary.lines`), the MRR rules, or dunning. A
backfill calls no event handler, so it never opens a case, sends an email or retries a payment:
an invoice that is open today is mirrored, and left to the provider's next event.

Choices:

* **Resume.** A page is fetched first; then its rows and its resource's cursor (last id, counts,
  finished) commit in one transaction. A run stopped anywhere (crash, Ctrl-C, a provider error
  that outlived the retries) re-run with the same ``since`` continues after the last committed
  page. After a finished run, or with another ``since``, a run starts over; that is safe because
  every write is idempotent (upserts; MRR rows are unique per subscription and source), which is
  also why a second full run adds nothing. Two concurrent runs stay correct for the same reason
  (the loser of a race stops with an IntegrityError and resumes when re-run).
* **since.** Customers and invoices are listed with ``created[gte]=since``. Subscriptions are
  listed in full (``status=all``): one created years before ``since`` may still be billing, and
  the MRR at ``since`` needs it; those that ended before ``since`` are skipped. The owner of such
  a subscription, if created before ``since``, is mirrored by id only (the upserts create it)
  and gets its details from its invoices and its next events.
* **Effective times.** The provider keeps only a subscription's current state, so its history is
  rebuilt as that state from ``start_date`` (0 MRR until ``trial_end`` when it had a trial);
  an ended one also gets, from its start, the state before the end (same items and discounts,
  status active) and then its end at ``ended_at``, with the cause events would give it
  (``cancellation_details.reason == "payment_failed"`` is involuntary). Rows from real events
  (any other source) win: no backfilled state is placed at or after the earliest of them, and no
  end is added when one of them already ended the subscription. Sources are
  ``backfill:{subscription id}:start | trial-end | end``.
* **Rate limits.** Requests go through the StripeGateway's tenacity choke point (429, 409, 5xx
  and connection errors retried, ``Stripe-Should-Retry`` and ``Retry-After`` honoured) and a
  client-side limiter, 10 requests/s by default: under Stripe's 25/s per endpoint and test
  mode's 25/s in all, leaving room for the running worker. Retries wait their turn too. Each
  request also takes its token from the fleet-wide budget the workers share
  (:mod:`worker.billing.budget`), waiting up to a minute for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, NamedTuple

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session

from worker import clock
from worker.backfill.models import BackfillCursor, BackfillResource
from worker.billing import normalise
from worker.billing import service as billing
from worker.billing.domain import EventParseError, SubscriptionFacts
from worker.billing.models import Subscription
from worker.billing.ratelimit import RateLimiter
from worker.billing.stripe_client import StripeGateway
from worker.dunning import cases
from worker.ledger import history
from worker.ledger.models import MrrChange
from worker.runtime import Runtime
from worker.settings import SettingError

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 100  # Stripe's largest `limit`
# A command, not a task under a time limit: it may wait longer for the fleet's budget.
BUDGET_WAIT_S: Final = 60.0
REQUESTS_PER_SECOND: Final = 10.0
ATTEMPTS: Final = 6  # per request: a backfill would rather wait than stop (though it resumes)
SOURCE_PREFIX: Final = "backfill:"
# MRR is net of discounts: expand them, and their coupons (API 2025-09-30 on, a discount names
# its coupon in `source.coupon`). Items embed their prices: nothing to expand there.
EXPAND_SUBSCRIPTIONS: Final = ("data.discounts.source.coupon",)
START, TRIAL_END, END = "start", "trial-end", "end"


@dataclass
class ResourceSummary:
    objects: int = 0  # listed by this run
    pages: int = 0
    skipped: int = 0  # unreadable, or (subscriptions) ended before --since
    failed: int = 0  # its rows could not be written (see BackfillSummary.failed)
    resumed_after: str | None = None  # where the interrupted run this one continues stopped
    done_before: bool = False  # that run had finished this resource already


@dataclass
class BackfillSummary:
    since: datetime | None
    resources: dict[BackfillResource, ResourceSummary] = field(default_factory=dict)
    mrr_changes: int = 0  # rows this run added to mrr_changes
    failed: list[str] = field(default_factory=list)  # "<resource> <id>: <why>", logged too
    seconds: float = 0.0

    @property
    def resumed(self) -> bool:
        return any(r.resumed_after or r.done_before for r in self.resources.values())

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        window = f"since {self.since:%Y-%m-%d %H:%M} UTC" if self.since else "all history"
        out = [
            f"backfill of {window}{', resumed' if self.resumed else ''}: "
            f"{self.mrr_changes} MRR change(s) recorded in {self.seconds:.1f} s"
        ]
        for resource, done in self.resources.items():
            note = (
                "done by the interrupted run"
                if done.done_before
                else f"{done.objects} in {done.pages} page(s), {done.skipped} skipped"
            )
            if done.failed:
                note += f", {done.failed} failed"
            after = f" (resumed after {done.resumed_after})" if done.resumed_after else ""
            out.append(f"  {resource}: {note}{after}")
        return out


def run_backfill(
    runtime: Runtime,
    *,
    since: datetime | None,
    now: datetime,
    progress: bool = True,
    page_size: int = PAGE_SIZE,
    requests_per_second: float = REQUESTS_PER_SECOND,
) -> BackfillSummary:
    """Mirror customers, subscriptions (with their MRR history) and invoices from the provider,
    resuming an interrupted run with the same ``since``. ``now`` stamps the rows (``as_of``,
    ``recorded_at``). Provider errors that outlive the retries propagate
    (``TransientProviderError`` / ``ProviderError``); everything committed before stays, and
    running again resumes."""
    key = runtime.settings.stripe_api_key
    if key is None:
        msg = "STRIPE_API_KEY: required, not set (a backfill reads the provider's history)"
        raise SettingError(msg)
    if since is not None and since.tzinfo is None:
        msg = "since must be timezone-aware (UTC)"
        raise ValueError(msg)
    if not 1 <= page_size <= PAGE_SIZE:
        msg = f"page size must be within 1..{PAGE_SIZE}, got {page_size}"
        raise ValueError(msg)
    limiter = RateLimiter(requests_per_second)
    gateway = StripeGateway(
        key.reveal(),
        api_base=runtime.settings.stripe_api_base,
        attempts=ATTEMPTS,
        timeout_s=runtime.settings.stripe_timeout_s,
        budget=runtime.stripe_budget,
        budget_wait_s=BUDGET_WAIT_S,
    )
    started = time.monotonic()
    with runtime.session() as session:
        summary = BackfillSummary(since=since, resources=_start_or_resume(session, since, now))
    console = Console(stderr=True)
    columns = (
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description:<14}"),
        TextColumn("{task.completed:>9,.0f} objects"),
        TextColumn("{task.fields[pages]:>6} pages"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not (progress and console.is_terminal)) as bar:
        for resource, done in summary.resources.items():
            if not done.done_before:
                _page_through(
                    runtime,
                    gateway,
                    resource,
                    summary,
                    bar,
                    limiter=limiter,
                    page_size=page_size,
                    now=now,
                )
                log.info("backfill %s: %d objects, %d pages", resource, done.objects, done.pages)
    summary.seconds = time.monotonic() - started
    return summary


def _page_through(
    runtime: Runtime,
    gateway: StripeGateway,
    resource: BackfillResource,
    summary: BackfillSummary,
    bar: Progress,
    *,
    limiter: RateLimiter,
    page_size: int,
    now: datetime,
) -> None:
    """Fetch a page, then commit its rows with the cursor, until the provider has no more."""
    done = summary.resources[resource]
    task = bar.add_task(resource.value, total=None, pages=0)
    after, finished = done.resumed_after, False
    while not finished:
        page = gateway.list_page(
            resource,
            _params(resource, summary.since, page_size, after),
            before_each_attempt=limiter.wait,
        )
        after = page.objects[-1]["id"] if page.objects else after
        finished = not (page.has_more and page.objects)
        with runtime.session() as session:
            for obj in page.objects:
                _apply_alone(session, resource, obj, summary, now=now)
            _advance(session, resource, after, len(page.objects), finished=finished)
        done.pages += 1
        done.objects += len(page.objects)
        bar.update(task, advance=len(page.objects), pages=done.pages)
    bar.update(task, total=done.objects)  # finished: the spinner and the clock stop


def _start_or_resume(
    session: Session, since: datetime | None, now: datetime
) -> dict[BackfillResource, ResourceSummary]:
    """Continue the interrupted run when it had the same ``since``; otherwise (no run yet, a
    finished one, another ``since``) reset every cursor for a new run."""
    cursors = {c.resource: c for c in session.scalars(select(BackfillCursor).with_for_update())}
    interrupted = len(cursors) == len(BackfillResource) and not all(
        c.finished for c in cursors.values()
    )
    if interrupted and all(c.since == since for c in cursors.values()):
        first = cursors[BackfillResource.CUSTOMERS]
        log.info("backfill: resuming the run started at %s", first.started_at)
        return {
            r: ResourceSummary(resumed_after=cursors[r].last_id, done_before=cursors[r].finished)
            for r in BackfillResource
        }
    if interrupted:
        log.warning("backfill: the interrupted run had another --since; starting over")
    for resource in BackfillResource:
        cursor = cursors.get(resource) or BackfillCursor(resource=resource)
        session.add(cursor)
        cursor.since, cursor.last_id, cursor.finished = since, None, False
        cursor.pages = cursor.objects = 0
        cursor.started_at, cursor.updated_at = now, clock.now()
    return {r: ResourceSummary() for r in BackfillResource}


def _params(
    resource: BackfillResource, since: datetime | None, page_size: int, after: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": page_size}
    if after is not None:
        params["starting_after"] = after
    if resource is BackfillResource.SUBSCRIPTIONS:
        params |= {"status": "all", "expand": list(EXPAND_SUBSCRIPTIONS)}  # since: see above
    elif since is not None:
        params["created"] = {"gte": int(since.timestamp())}
    return params


def _advance(
    session: Session,
    resource: BackfillResource,
    last_id: str | None,
    objects: int,
    *,
    finished: bool,
) -> None:
    cursor = session.get_one(BackfillCursor, resource, with_for_update=True)
    cursor.last_id, cursor.finished = last_id, finished
    cursor.pages += 1
    cursor.objects += objects
    cursor.updated_at = clock.now()


def _apply_alone(
    session: Session,
    resource: BackfillResource,
    obj: dict[str, Any],
    summary: BackfillSummary,
    *,
    now: datetime,
) -> None:
    """:func:`_apply` in a savepoint: an object whose rows cannot be written (a value no
    column holds, a bug on odd data) fails alone, logged and counted, and the page goes on.
    Any other database error stops the run, to resume from the last committed page."""
    try:
        with session.begin_nested():
            _apply(session, resource, obj, summary, now=now)
    except DBAPIError as exc:
        if not isinstance(exc, DataError):
            raise  # the database, not this object: stop here and resume later
        _failed(summary, resource, obj, exc)
    except Exception as exc:  # anything else this one object raises stays with it
        _failed(summary, resource, obj, exc)


def _failed(
    summary: BackfillSummary, resource: BackfillResource, obj: dict[str, Any], exc: Exception
) -> None:
    first_line = next(iter(str(exc).strip().splitlines()), "")
    why = f"{resource} {obj.get('id')}: {type(exc).__name__}: {first_line}"
    log.warning("backfill: %s", why)
    summary.resources[resource].failed += 1
    summary.failed.append(why)


def _apply(
    session: Session,
    resource: BackfillResource,
    obj: dict[str, Any],
    summary: BackfillSummary,
    *,
    now: datetime,
) -> None:
    """One listed object through the event code paths. Every branch parses before it writes,
    so an unreadable object is skipped whole."""
    done = summary.resources[resource]
    try:
        match resource:
            case BackfillResource.CUSTOMERS:
                billing.upsert_customer(session, normalise.customer_facts(obj), at=now)
            case BackfillResource.SUBSCRIPTIONS:
                facts = normalise.subscription_facts(obj)
                trial_end = normalise.subscription_trial_end(obj)
                if summary.since and facts.ended_at and facts.ended_at < summary.since:
                    done.skipped += 1
                    return
                sub = billing.upsert_subscription(session, facts, at=now)
                summary.mrr_changes += record_history(
                    session, sub, facts, trial_end=trial_end, now=now
                )
            case BackfillResource.INVOICES:
                billing.upsert_invoice(session, normalise.invoice_facts(obj), at=now)
    except EventParseError as exc:
        log.warning("backfill: %s %s skipped: %s", resource, obj.get("id"), exc)
        done.skipped += 1


class PlannedState(NamedTuple):
    label: str  # START | TRIAL_END | END: the end of the row's source
    at: datetime
    facts: SubscriptionFacts  # the subscription as it was from ``at`` on


def backfill_states(facts: SubscriptionFacts, *, trial_end: datetime | None) -> list[PlannedState]:
    """The states a subscription went through, as far as its current object tells (see the
    module docstring, "Effective times")."""
    start = facts.start_date
    if start is None:
        return []  # normalise falls back to `created`: only a malformed object has neither
    ended_at = facts.ended_at
    before_end = facts
    if ended_at is not None:  # never paid when it expired incomplete
        paying = "incomplete" if facts.status == "incomplete_expired" else "active"
        before_end = replace(facts, status=paying, ended_at=None)
    plan = []
    if trial_end is not None and trial_end > start:
        plan.append(PlannedState(START, start, replace(before_end, status="trialing")))
        if facts.status != "trialing" and (ended_at is None or trial_end < ended_at):
            plan.append(PlannedState(TRIAL_END, trial_end, before_end))
    else:
        plan.append(PlannedState(START, start, before_end))
    if ended_at is not None:
        plan.append(PlannedState(END, ended_at, facts))
    return plan


def record_history(
    session: Session,
    sub: Subscription,
    facts: SubscriptionFacts,
    *,
    trial_end: datetime | None,
    now: datetime,
) -> int:
    """Record :func:`backfill_states` where real events have not spoken yet; the rows added."""
    first_real, real_ended = session.execute(
        select(func.min(MrrChange.effective_at), func.count().filter(MrrChange.ended)).where(
            MrrChange.subscription_id == sub.id, ~MrrChange.source.startswith(SOURCE_PREFIX)
        )
    ).one()
    added = 0
    for state in backfill_states(facts, trial_end=trial_end):
        if state.label == END and real_ended:
            continue
        if state.label != END and first_real is not None and state.at >= first_real:
            continue
        row = history.record_state(
            session,
            sub,
            state.facts,
            effective_at=state.at,
            source=f"{SOURCE_PREFIX}{facts.id}:{state.label}",
            now=now,
            ended_by_us=cases.ended_by_final_action(session, sub.id, state.facts, at=state.at),
        )
        added += row is not None
    return added
