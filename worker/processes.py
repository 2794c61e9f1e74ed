"""``dunning run``: intake, worker and beat as child processes of one parent.

The parent starts the three, forwards SIGINT/SIGTERM to them, and exits when any child exits
(with that child's status), stopping the others.
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

    def stop(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        stop(signal.SIGTERM, None)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    return next((c.returncode for c in children if c.returncode), 0)
