"""The one-click link in a dunning email, clicked in a real headless Chromium: a fresh portal
session with the payment-method update flow, a new card saved there, and the open invoice paid
at once through the prompt retry that a card change triggers."""

from __future__ import annotations

import re

from playwright.sync_api import Browser

from tests.support.stack import Stack, wait_for
from worker import clock
from worker.dunning.state import DunningState
from worker.dunning.views import show_case
from worker.sim.driver import in_flight, settle
from worker.sim.stripe_peer import EXPIRED_CARD, CardSpec

LINK = re.compile(r"http://127\.0\.0\.1:\d+/u/[A-Za-z0-9_.-]+")


def test_the_email_link_updates_the_card_and_pays_at_once(
    stack: Stack,
    manual_clock: clock.ManualClock,
    browser: Browser,
) -> None:
    peer = stack.peer
    customer = peer.create_customer(
        email="jane.doe@example.com", name="Jane Doe", card=CardSpec(outcomes=[EXPIRED_CARD])
    )
    sub = peer.create_subscription(customer_id=customer, unit_amount=4900)
    invoice_id, paid = peer.bill(sub)
    assert not paid
    assert settle(stack.app, peer), in_flight(stack.app)
    (email,) = wait_for(lambda: stack.mail_with(":email:first"), what="the first email")
    text = email.get_body(("plain",)).get_content()
    html = email.get_body(("html",)).get_content()
    (link,) = set(LINK.findall(text))
    assert link.startswith(stack.intake_url)
    assert f'href="{link}"' in html
    assert customer not in link and invoice_id not in link

    page = browser.new_page()
    try:
        page.goto(link)
        assert page.url.startswith(f"{peer.base_url}/p/session/bps_")
        portal = page.locator("main")
        assert portal.get_attribute("data-flow") == "payment_method_update"
        assert portal.get_attribute("data-customer") == customer
        page.click("#save")
        page.wait_for_url(f"{link}/done")
        assert "try the payment again" in page.content()
    finally:
        page.close()

    assert settle(stack.app, peer), in_flight(stack.app)
    (case,) = stack.cases()
    assert case.state is DunningState.RECOVERED
    assert peer.invoice(invoice_id)["status"] == "paid"
    with stack.app.runtime.session() as session:
        detail = show_case(session, case.id)
    assert detail is not None
    assert detail["recovered_method"] == "card_update"
