"""Signed card-update links: only our tokens, only while fresh, to a fresh portal session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.paths import REPO, START
from worker import clock
from worker.app import create_app
from worker.httpserver import serve_in_thread
from worker.links import (
    LINK_VALIDITY,
    BadLinkError,
    ExpiredLinkError,
    sign_link,
    update_card_url,
    verify_link,
)
from worker.settings import Secret, Settings
from worker.sim.stripe_peer import CardSpec, StripePeer
from worker.webhooks.intake import build_intake

SECRET = "whsec_links"


def test_a_token_names_its_customer_until_it_expires() -> None:
    token = sign_link(SECRET, "cus_123", now=START)
    assert verify_link(SECRET, token, now=START + LINK_VALIDITY - timedelta(seconds=1)) == (
        "cus_123"
    )
    with pytest.raises(ExpiredLinkError):
        verify_link(SECRET, token, now=START + LINK_VALIDITY + timedelta(seconds=1))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
        lambda t: "Y3VzXzk5OXw5OTk5OTk5OTk5" + t[t.index(".") :],  # another customer, same mac
        lambda t: t.split(".")[0],  # no signature
    ],
)
def test_a_changed_token_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    token = sign_link(SECRET, "cus_123", now=START)
    with pytest.raises(BadLinkError):
        verify_link(SECRET, mangle(token), now=START)
    with pytest.raises(BadLinkError):
        verify_link("whsec_other", token, now=START)


def test_without_a_secret_the_email_falls_back() -> None:
    assert update_card_url("http://x", None, "cus_1", now=START, fallback="http://inv") == (
        "http://inv"
    )
    assert update_card_url("http://x", SECRET, "cus_1", now=START).startswith("http://x/u/")


@pytest.fixture
def site(pg: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, StripePeer]]:
    peer = StripePeer(api_key="sk_test_links")
    with peer.serve() as api_base:
        app = create_app(
            Settings(
                database_url=pg,
                broker_url=redis_url,
                config_path=REPO / "config" / "dunning.toml",
                stripe_api_key=Secret("sk_test_links"),
                stripe_webhook_secret=Secret(SECRET),
                stripe_api_base=api_base,
                data_dir=tmp_path,
            )
        )
        with serve_in_thread(build_intake(app)) as url:
            yield url, peer
        app.runtime.close()


def test_the_link_opens_a_fresh_portal_session(site: tuple[str, StripePeer]) -> None:
    url, peer = site
    customer = peer.create_customer(email="c@example.com", name="C", card=CardSpec())
    link = update_card_url(url, SECRET, customer, now=clock.now())
    response = httpx.get(link, timeout=10)
    assert response.status_code == 303
    assert response.headers["location"].startswith("https://billing.stripe.test/")
    (created,) = [r for r in peer.requests if r.path == "/v1/billing_portal/sessions"]
    assert created.params["customer"] == customer
    assert created.params["flow_data"]["type"] == "payment_method_update"
    assert httpx.get(f"{url}/u/not-a-token", timeout=10).status_code == 400
    old = update_card_url(url, SECRET, customer, now=clock.now() - LINK_VALIDITY * 2)
    assert httpx.get(old, timeout=10).status_code == 410
