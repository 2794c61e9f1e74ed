"""Card-update links: tokens that name nothing but a random id, keys that rotate, links that
expire and can be revoked, and a click that opens the portal or a page with a way forward."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.paths import REPO
from worker import clock
from worker.app import DunningCelery, create_app
from worker.billing import service as billing
from worker.billing.models import Invoice
from worker.cli import main
from worker.httpserver import serve_in_thread
from worker.links import tokens
from worker.links.models import UpdateLink
from worker.links.service import link_for_email
from worker.settings import LinkKey, Secret, SettingError, Settings, load_settings
from worker.sim.stripe_peer import CardSpec, StripePeer
from worker.webhooks.intake import build_intake

NEW = LinkKey("k2", Secret("n" * 40))
OLD = LinkKey("k1", Secret("o" * 40))
LIFETIME = timedelta(days=30)


def test_a_token_names_a_random_id_under_a_named_key() -> None:
    link_id = tokens.new_link_id()
    token = tokens.sign(NEW, link_id)
    assert token.startswith("k2.")
    assert tokens.link_id_of((NEW, OLD), token) == link_id
    assert tokens.new_link_id() != link_id


def test_links_signed_by_an_older_key_work_until_it_is_dropped() -> None:
    token = tokens.sign(OLD, tokens.new_link_id())
    tokens.link_id_of((NEW, OLD), token)  # rotated in front: still verifies
    with pytest.raises(tokens.BadLinkError):
        tokens.link_id_of((NEW,), token)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
        lambda t: ".".join([t.split(".")[0], tokens.new_link_id(), t.split(".")[2]]),  # other id
        lambda t: "k1" + t[2:],  # the other key's id
        lambda t: t.rsplit(".", 1)[0],  # no signature
        lambda t: t + ".x",  # an extra part
        lambda t: "",
    ],
)
def test_a_changed_token_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    token = tokens.sign(NEW, tokens.new_link_id())
    with pytest.raises(tokens.BadLinkError):
        tokens.link_id_of((NEW, OLD), mangle(token))


def test_link_keys_are_their_own_setting() -> None:
    settings = load_settings({"DUNNING_LINK_KEYS": f"k2:{'n' * 40}, k1:{'o' * 40}"})
    assert [k.kid for k in settings.link_keys] == ["k2", "k1"]
    assert settings.link_keys[0].secret.reveal() == "n" * 40
    assert "n" * 40 not in repr(settings)
    assert load_settings({}).link_keys == ()
    for bad in ("k2", f"k2:{'n' * 10}", f"bad kid!:{'n' * 40}", f"a:{'n' * 40},a:{'o' * 40}"):
        with pytest.raises(SettingError, match="DUNNING_LINK_KEYS"):
            load_settings({"DUNNING_LINK_KEYS": bad})


@dataclass
class Site:
    url: str
    peer: StripePeer
    app: DunningCelery
    customer: str  # the provider's id

    def link(self, *, invoice_status: str | None = "open", issued_for: str = "case:1:x") -> str:
        now = clock.now()
        with self.app.runtime.session() as session:
            customer = billing.get_or_create_customer(session, self.customer, at=now)
            session.flush()
            invoice = session.scalar(
                select(Invoice).where(Invoice.provider_id == f"in_{issued_for}")
            )
            if invoice is None and invoice_status is not None:
                invoice = Invoice(
                    provider_id=f"in_{issued_for}",
                    customer_id=customer.id,
                    status=invoice_status,
                    amount_due=4900,
                    currency="usd",
                    hosted_invoice_url="https://invoice.stripe.test/i/abc",
                    as_of=now,
                )
                session.add(invoice)
                session.flush()
            url = link_for_email(
                session,
                self.app.runtime.settings.link_keys,
                public_url=self.url,
                issued_for=issued_for,
                customer_id=customer.id,
                invoice_id=invoice.id if invoice else None,
                lifetime=LIFETIME,
                now=now,
            )
        assert url is not None
        return url


@pytest.fixture
def site(pg: str, redis_url: str, tmp_path: Path) -> Iterator[Site]:
    peer = StripePeer(api_key="sk_test_links")
    with peer.serve() as api_base:
        app = create_app(
            Settings(
                database_url=pg,
                broker_url=redis_url,
                config_path=REPO / "config" / "dunning.toml",
                stripe_api_key=Secret("sk_test_links"),
                stripe_webhook_secret=Secret("whsec_links"),
                stripe_api_base=api_base,
                link_keys=(NEW, OLD),
                data_dir=tmp_path,
            )
        )
        customer = peer.create_customer(email="c@example.com", name="C", card=CardSpec())
        with serve_in_thread(build_intake(app)) as url:
            yield Site(url, peer, app, customer)
        app.runtime.close()


def _portal_requests(peer: StripePeer) -> list[dict[str, object]]:
    return [r.params for r in peer.requests if r.path == "/v1/billing_portal/sessions"]


def test_the_link_opens_a_fresh_portal_session_on_each_click(site: Site) -> None:
    link = site.link()
    assert site.customer not in link and "in_" not in link  # no provider id in the URL
    assert site.link() == link  # the same email composed again carries the same link
    for _ in range(2):
        response = httpx.get(link, timeout=10)
        assert response.status_code == 303
        assert response.headers["location"].startswith(f"{site.peer.base_url}/p/session/bps_")
        assert response.headers["referrer-policy"] == "no-referrer"
    first, second = _portal_requests(site.peer)
    assert first["customer"] == site.customer
    assert first["flow_data"] == {"type": "payment_method_update"}
    public = site.app.runtime.settings.public_url
    assert first["return_url"] == f"{public}/u/{link.split('/u/')[1]}/done"
    assert second["customer"] == site.customer
    with site.app.runtime.session() as session:
        row = session.scalars(select(UpdateLink)).one()
        assert row.open_count == 2
        assert row.first_opened_at is not None
    done = httpx.get(f"{link}/done", timeout=10)
    assert done.status_code == 200
    assert "try the payment again" in done.text


def test_without_the_update_flow_a_plain_portal_session(site: Site) -> None:
    site.peer.portal = "no_flows"
    response = httpx.get(site.link(), timeout=10)
    assert response.status_code == 303
    assert "flow_data" not in _portal_requests(site.peer)[-1]


def test_with_the_portal_off_the_open_invoice_is_paid_on_its_hosted_page(site: Site) -> None:
    site.peer.portal = "off"
    response = httpx.get(site.link(), timeout=10)
    assert response.status_code == 303
    assert response.headers["location"] == "https://invoice.stripe.test/i/abc"
    # A card-expiring notice has no invoice: with no portal there is nothing to open.
    page = httpx.get(site.link(invoice_status=None, issued_for="cust:1:exp"), timeout=10)
    assert page.status_code == 503
    assert "try again in a few minutes" in page.text


def test_a_click_while_stripe_is_rate_limiting_us_shows_the_invoice_page_at_once(
    site: Site,
) -> None:
    """A 429 paused the fleet for longer than a customer should wait (a worker's call would
    wait those 5 s): the click gets the open invoice's hosted page at once, and Stripe's API
    is not called."""
    site.app.runtime.stripe_budget.pause(5)
    started = time.monotonic()
    response = httpx.get(site.link(), timeout=10)
    assert time.monotonic() - started < 2  # the click waits a second at most
    assert response.status_code == 303
    assert response.headers["location"] == "https://invoice.stripe.test/i/abc"
    assert _portal_requests(site.peer) == []


def test_an_expired_link_offers_the_invoice_page(
    site: Site, manual_clock: clock.ManualClock
) -> None:
    link = site.link()
    manual_clock.advance(LIFETIME + timedelta(seconds=1))
    page = httpx.get(link, timeout=10)
    assert page.status_code == 410
    assert "expired" in page.text
    assert 'href="https://invoice.stripe.test/i/abc"' in page.text
    assert _portal_requests(site.peer) == []


def test_a_link_for_a_paid_invoice_says_there_is_nothing_to_do(site: Site) -> None:
    page = httpx.get(site.link(invoice_status="paid"), timeout=10)
    assert page.status_code == 200
    assert "nothing more you need to do" in page.text
    assert _portal_requests(site.peer) == []


def test_a_foreign_or_tampered_token_opens_nothing(site: Site) -> None:
    link = site.link()
    for bad in (f"{site.url}/u/not-a-token", link[:-3] + "AAA", link.replace("/u/k2.", "/u/k1.")):
        page = httpx.get(bad, timeout=10)
        assert page.status_code == 400
        assert "most recent email" in page.text
    unknown = tokens.sign(NEW, tokens.new_link_id())  # well signed, names no row
    assert httpx.get(f"{site.url}/u/{unknown}", timeout=10).status_code == 400
    assert _portal_requests(site.peer) == []


def test_ops_revoke_every_live_link_of_a_customer(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = site.link(), site.link(issued_for="case:1:y")
    monkeypatch.setenv("DUNNING_DATABASE_URL", site.app.runtime.settings.database_url)
    monkeypatch.setenv("DUNNING_CONFIG", str(REPO / "config" / "dunning.toml"))
    result = CliRunner().invoke(main, ["links", "revoke", "--customer", site.customer])
    assert result.exit_code == 0, result.output
    assert "2 live link(s) revoked" in result.output
    for link in (first, second):
        page = httpx.get(link, timeout=10)
        assert page.status_code == 410
        assert "switched off" in page.text
        assert 'id="pay"' not in page.text  # revoked for a reason: no other way in either
    later = site.link(issued_for="case:1:z")  # a later email carries a new, working link
    assert httpx.get(later, timeout=10).status_code == 303
    unknown = CliRunner().invoke(main, ["links", "revoke", "--customer", "cus_nobody"])
    assert unknown.exit_code == 2
    assert "no customer" in unknown.output
