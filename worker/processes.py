"""``dunning run``: intake, worker and beat as child processes of one parent.

The parent starts the three, forwards SIGINT/SIGTERM to them, and exits when any child exits,
stopping the others: status 0 after a requested stop, 1 when a child died on its own.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType


def run_all(*, port: int) -> int:
    base = [sys.executable, "-m", "worker"]
    children = [
        subprocess.Popen([*base, "serve", "--port", str(port)]),  # noqa: S603 - our own CLI
        subprocess.Popen([*base, "worker"]),  # noqa: S603
        subprocess.Popen([*base, "beat"]),  # noqa: S603
    ]

    asked_to_stop = False

    def forward(signum: int) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal asked_to_stop
        asked_to_stop = True
        forward(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        forward(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    if asked_to_stop:  # children ending on the signal we forwarded is a clean stop
        clean = {0, -signal.SIGTERM, -signal.SIGINT}
        return next((c.returncode for c in children if c.returncode not in clean), 0)
    failed = next((c for c in children if c.returncode), None)
    return 1 if failed is not None else 0
