"""``dunning events replay FILE``: recorded payloads through the same store + handlers.

No signature check (the file is trusted input from ops). Events are processed in file order,
in-process, each in its own transaction; the actions they plan run later through the
scheduler like any others. An event whose handler fails is counted as ``failed`` and stays in
the inbox, pending, with the reason (the sweeper tries it again); the rest of the file goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker import clock
from worker.runtime import Runtime
from worker.webhooks.inbox import BadEventError, note_error, parse_envelope, store_event
from worker.webhooks.models import InboxStatus
from worker.webhooks.service import process_stored_event

log = logging.getLogger(__name__)


class ReplayFileError(ValueError):
    pass


def read_payloads(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line or position, raw JSON) for a JSON object, a JSON array, or JSONL."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReplayFileError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
        for index, item in enumerate(items, start=1):
            yield index, json.dumps(item).encode()
        return
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        yield 1, text.encode()
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayFileError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
        yield lineno, line.encode()


def replay_file(runtime: Runtime, path: Path) -> dict[str, Any]:
    counts: dict[str, int] = {"duplicate": 0}
    payloads = list(read_payloads(path))  # validate the whole file before touching anything
    for where, body in payloads:
        try:
            parse_envelope(body)
        except BadEventError as exc:
            raise ReplayFileError(f"{path}:{where}: {exc}") from None
    for where, body in payloads:
        with runtime.session() as session:
            stored = store_event(session, provider="stripe", body=body, now=clock.now())
        if stored.inbox_id is None:
            counts["duplicate"] += 1
            continue
        try:
            status = process_stored_event(runtime, stored.inbox_id) or InboxStatus.PROCESSED
        except Exception as exc:  # one bad event never stops the rest of the file
            first_line = next(iter(str(exc).strip().splitlines()), "")
            reason = f"{type(exc).__name__}: {first_line}"
            log.warning("%s:%s: event %s failed: %s", path, where, stored.event_id, reason)
            with runtime.session() as session:  # kept pending with the reason: swept again
                note_error(session, stored.inbox_id, error=reason)
            counts["failed"] = counts.get("failed", 0) + 1
            continue
        counts[status.value] = counts.get(status.value, 0) + 1
    return {"events": len(payloads), **counts}
