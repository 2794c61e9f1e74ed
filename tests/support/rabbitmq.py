"""A RabbitMQ virtual host of its own for one test (the machine's RabbitMQ, 127.0.0.1:5672,
guest/guest), removed afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

AMQP = "amqp://guest:guest@127.0.0.1:5672"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: RabbitMQ is a test service here (scripts/services)")
    vhost = f"dunning_test_{os.getpid()}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)
