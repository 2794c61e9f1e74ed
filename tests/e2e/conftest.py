"""The whole pipeline on real components: PostgreSQL, Redis, the intake over HTTP, a Celery
worker thread (not eager mode), an aiosmtpd server and the Stripe-compatible peer reached
through the official ``stripe`` library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from tests.support.paths import REPO
from tests.support.processes import free_port
from tests.support.smtp import Recorder, smtp_server
from tests.support.stack import API_KEY, WEBHOOK_SECRET, Stack
from worker.app import create_app
from worker.httpserver import serve_in_thread
from worker.settings import DEFAULT_PUBLIC_URL, LinkKey, Secret, Settings
from worker.sim.stripe_peer import StripePeer
from worker.webhooks.intake import build_intake

LINK_KEY = LinkKey("e2e", Secret("e2e-link-key-" + "x" * 32))


def e2e_settings(
    *,
    database_url: str,
    broker_url: str,
    smtp_port: int,
    api_base: str,
    data_dir: Path,
    public_url: str = DEFAULT_PUBLIC_URL,
) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        config_path=REPO / "config" / "dunning.toml",
        smtp_url=Secret(f"smtp://127.0.0.1:{smtp_port}"),
        stripe_api_key=Secret(API_KEY),
        stripe_webhook_secret=Secret(WEBHOOK_SECRET),
        stripe_api_base=api_base,
        public_url=public_url,
        link_keys=(LINK_KEY,),
        data_dir=data_dir,
    )


@pytest.fixture
def peer() -> Iterator[tuple[StripePeer, str]]:
    stripe_peer = StripePeer(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET)
    with stripe_peer.serve() as base_url:
        yield stripe_peer, base_url
    stripe_peer.close()


@pytest.fixture
def mail() -> Iterator[tuple[Recorder, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def stack_no_worker(
    pg: str,
    redis_url: str,
    mail: tuple[Recorder, int],
    peer: tuple[StripePeer, str],
    tmp_path: Path,
) -> Iterator[Stack]:
    """Intake, peer, SMTP and the scheduler; the test brings its own worker."""
    stripe_peer, api_base = peer
    recorder, smtp_port = mail
    port = free_port()  # known before the app, so email links point at this intake
    settings = e2e_settings(
        database_url=pg,
        broker_url=redis_url,
        smtp_port=smtp_port,
        api_base=api_base,
        data_dir=tmp_path / ".dunning",
        public_url=f"http://127.0.0.1:{port}",
    )
    app = create_app(settings)
    with serve_in_thread(build_intake(app), port=port) as intake_url:
        stripe_peer.webhook_url = f"{intake_url}/webhooks/stripe"
        yield Stack(app, settings, stripe_peer, intake_url, recorder)
    app.runtime.close()


@pytest.fixture
def stack(stack_no_worker: Stack) -> Iterator[Stack]:
    """The whole pipeline with a Celery worker thread consuming from Redis."""
    with start_worker(
        stack_no_worker.app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=10,
    ):
        yield stack_no_worker
