"""The chaos suite's short profile (``bench/chaos.py``): the real processes on a private
PostgreSQL and Redis, with duplicated and shuffled deliveries, a worker killed during
charges, PostgreSQL stopped under traffic, hostile requests, and two of every process. The
full profile (Redis outage, Stripe and SMTP storms, longer runs) is run by hand; its latest
output is in bench/README.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import REPO


@pytest.mark.timeout(600)
def test_the_short_chaos_profile_passes() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--profile", "short"],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "6/6 scenarios passed" in run.stdout
