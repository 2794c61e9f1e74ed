from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.paths import START
from tests.support.pipeline import KEY
from worker.clock import ManualClock
from worker.sim.stripe_peer import StripePeer


@pytest.fixture
def peer(manual_clock: ManualClock) -> Iterator[tuple[StripePeer, str]]:
    """A Stripe-compatible account on loopback, on the test's clock, and its API base URL."""
    manual_clock.set(START)
    account = StripePeer(api_key=KEY, webhook_secret="whsec_peer", clock=manual_clock.now)
    with account.serve() as url:
        yield account, url
    account.close()
