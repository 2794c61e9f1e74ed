"""Running the ``dunning`` command and finding free ports, for tests that use processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any dunning or Stripe setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
    return {**env, **extra}


def dunning(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop(procs: Iterable[subprocess.Popen[bytes]], *, timeout: float) -> None:
    """SIGTERM to every process first (they shut down side by side), then wait for each;
    one that outstays ``timeout`` is killed."""
    procs = list(procs)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
