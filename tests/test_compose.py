"""docker-compose.yml as a user runs it (`cp config/worker.env.example .env`, fill in the
Stripe keys, `docker compose up`): every process starts with valid settings. No Docker engine
here, so the file is read as Compose reads it: anchors merged, `.env` loaded, `environment`
over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO
from worker.settings import load_settings

DUNNING = ("migrate", "intake", "worker", "beat")


def _env_file(path: Path, **filled: str) -> dict[str, str]:
    """KEY=value lines as Compose reads them (comments and blank lines skipped)."""
    found = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return {**found, **filled}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    return loaded


def test_no_service_passes_a_setting_as_an_empty_string() -> None:
    """`${X:-}` hands the container X="" when .env leaves X out, and the settings refuse an
    empty value; optional settings come from env_file instead."""
    services = _compose()["services"]
    for name in DUNNING:
        environment = services[name]["environment"]
        assert all(str(value).strip() for value in environment.values()), name
        assert not [v for v in environment.values() if ":-}" in str(v)], name
        assert services[name]["env_file"] == ".env", name


def test_every_process_starts_with_the_example_env_filled_in() -> None:
    services = _compose()["services"]
    dotenv = _env_file(
        REPO / "config" / "worker.env.example",
        STRIPE_API_KEY="sk_live_example",
        STRIPE_WEBHOOK_SECRET="whsec_example",
    )
    for name in DUNNING:
        environment = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = load_settings({**dotenv, **environment})  # environment wins, as in Compose
        assert settings.database_url.startswith("postgresql+psycopg://postgres@postgres:5432/")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.smtp_url is None  # left out of .env: the outbox default
