"""Where the tests find the repository and the project's shared notes, and one clear failure
when ``shared/`` (cloned beside this checkout: /work/main and /work/shared) is missing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday afternoon, UTC


def require_shared(path: Path) -> Path:
    """``path`` under ``shared/``, or a failure that says what is missing and how to fix it.
    These tests check the code against the project's domain notes and real payloads: a
    missing copy must not pass as "skipped"."""
    if not path.exists():
        pytest.fail(
            f"{path} is missing: these tests read the project's shared/ folder, expected "
            f"beside this checkout at {SHARED} (clone or copy it there)"
        )
    return path
