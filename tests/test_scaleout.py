"""Scale-out (``bench/scaleout.py``, short profile): two hosts (network namespaces, each its
own address) run a worker and a beat each against one PostgreSQL and one Redis; a backlog of
failed payments is processed with nothing done twice and work on both hosts. The full
profile (10,000 events) and its figures are in bench/README.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support.paths import REPO


@pytest.mark.timeout(600)
def test_two_hosts_share_a_backlog_and_nothing_happens_twice() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces (CI has both)")
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scaleout.py"), "--profile", "short", "--json"],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(run.stdout)
    assert result["checks"] == dict.fromkeys(result["checks"], True)
    assert set(result["tasks_by_host"]) == {"host1", "host2"}
    assert result["one_host_events_per_s"] > 0 and result["two_hosts_events_per_s"] > 0
