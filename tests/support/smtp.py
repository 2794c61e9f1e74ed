"""A real SMTP server for tests: aiosmtpd on loopback, recording what it accepts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.processes import free_port


class Recorder:
    """An aiosmtpd handler that accepts mail, except for a few scripted recipients."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        # Scripted faults: hold DATA until this is set; store the message and drop the
        # connection before answering (the client never sees the 250).
        self.hold: threading.Event | None = None
        self.drop_before_answer = False

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("nobody"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.startswith("busy"):
            return "451 4.3.0 Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait, 30)
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        if self.drop_before_answer:
            server.transport.close()
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server(**options: Any) -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()
