"""Settings (DESIGN §4): embedded defaults, one clear line per bad variable, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import clean_env, dunning
from worker.settings import Secret, SettingError, load_settings


def test_no_environment_gives_the_embedded_defaults() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite:///.dunning/dunning.db"
    assert settings.broker_url == "filesystem://"
    assert settings.smtp_url is None
    assert settings.outbox_dir == Path(".dunning/outbox")
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.stripe_api_key is None


def test_production_values() -> None:
    settings = load_settings(
        {
            "DUNNING_DATABASE_URL": "postgresql://dunning@db/dunning",
            "DUNNING_BROKER_URL": "redis://redis:6379/0",
            "DUNNING_SMTP_URL": "smtp://user:pass@smtp:587?starttls=1",
            "STRIPE_API_KEY": "sk_live_abc",
            "STRIPE_WEBHOOK_SECRET": "whsec_abc",
            "STRIPE_API_BASE": "http://127.0.0.1:12111/",
        }
    )
    assert settings.database_url == "postgresql+psycopg://dunning@db/dunning"
    assert settings.stripe_api_base == "http://127.0.0.1:12111"
    assert settings.stripe_api_key is not None
    assert settings.stripe_api_key.reveal() == "sk_live_abc"


def test_the_stripe_timeout_is_a_number_of_seconds() -> None:
    assert load_settings({}).stripe_timeout_s == 80
    assert load_settings({"STRIPE_TIMEOUT_SECONDS": "2.5"}).stripe_timeout_s == 2.5


def test_the_stripe_budget_defaults_to_stripes_live_limits() -> None:
    settings = load_settings({})
    assert (settings.stripe_read_rps, settings.stripe_write_rps) == (100, 100)
    test_mode = load_settings({"DUNNING_STRIPE_READ_RPS": "25", "DUNNING_STRIPE_WRITE_RPS": "2.5"})
    assert (test_mode.stripe_read_rps, test_mode.stripe_write_rps) == (25, 2.5)


def test_secrets_never_show_themselves() -> None:
    secret = Secret("sk_live_topsecret")
    assert "topsecret" not in repr(secret)
    assert "topsecret" not in f"{secret}"
    settings = load_settings({"STRIPE_API_KEY": "sk_live_topsecret"})
    assert "topsecret" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DUNNING_DATABASE_URL", "mysql://x@y/z"),
        ("DUNNING_DATABASE_URL", "not a url"),
        ("DUNNING_BROKER_URL", "kafka://broker"),
        ("DUNNING_SMTP_URL", "http://smtp"),
        ("DUNNING_PUBLIC_URL", "ftp://example.com"),
        ("STRIPE_API_KEY", "pk_live_publishable"),
        ("STRIPE_WEBHOOK_SECRET", "secret"),
        ("STRIPE_API_BASE", "localhost:12111"),
        ("STRIPE_TIMEOUT_SECONDS", "0"),
        ("STRIPE_TIMEOUT_SECONDS", "ten"),
        ("STRIPE_TIMEOUT_SECONDS", "601"),
        ("DUNNING_STRIPE_READ_RPS", "0"),
        ("DUNNING_STRIPE_READ_RPS", "nan"),
        ("DUNNING_STRIPE_WRITE_RPS", "-5"),
        ("DUNNING_STRIPE_WRITE_RPS", "lots"),
        ("DUNNING_CONFIG", "   "),
        ("DUNNING_LOG_FORMAT", "xml"),
        ("DUNNING_METRICS_PORT", "ninety"),
        ("DUNNING_METRICS_PORT", "70000"),
        ("DUNNING_METRICS_PORT", ":9100"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingError) as err:
        load_settings({name: value})
    assert str(err.value).startswith(f"{name}: ")
    assert "\n" not in str(err.value)
    if "sk_" in value or "whsec" in value:
        assert value not in str(err.value)


def test_cli_reports_a_bad_setting_in_one_line_with_status_2(tmp_path: Path) -> None:
    result = dunning(clean_env(DUNNING_BROKER_URL="kafka://nope"), tmp_path, "cases", "list")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DUNNING_BROKER_URL" in lines[0]


def test_the_data_directory_is_a_setting() -> None:
    assert load_settings({}).data_dir == Path(".dunning")
    settings = load_settings({"DUNNING_DATA_DIR": "/var/lib/dunning"})
    assert settings.data_dir == Path("/var/lib/dunning")
    assert settings.outbox_dir == Path("/var/lib/dunning/outbox")
    assert settings.database_url == "sqlite:////var/lib/dunning/dunning.db"


def test_outside_a_checkout_the_bundled_policy_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/dunning.toml here
    path = load_settings({}).config_path
    assert path.is_file()
    assert path.name == "dunning.toml"
    assert path.is_absolute()


def test_policy_commands_work_from_any_directory(tmp_path: Path) -> None:
    env = clean_env()
    checked = dunning(env, tmp_path, "config", "check")
    assert checked.returncode == 0, checked.stderr
    shown = dunning(env, tmp_path, "policy", "preview", "--decline-code", "insufficient_funds")
    assert shown.returncode == 0, shown.stderr
    said = shown.stdout.splitlines()[0]
    assert said.startswith("policy: /") and "dunning.toml" in said  # which file it read
    assert list(tmp_path.iterdir()) == []  # and nothing written here


def test_commands_write_only_into_the_data_directory(tmp_path: Path) -> None:
    """The default database, the embedded broker's folders (control/ included) and the outbox
    all live under .dunning/ in the working directory, or DUNNING_DATA_DIR."""
    env = clean_env()
    for command in (("db", "upgrade"), ("status",), ("cases", "list")):
        done = dunning(env, tmp_path, *command)
        assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [".dunning"]
    assert (tmp_path / ".dunning" / "dunning.db").is_file()

    elsewhere = tmp_path / "data"
    done = dunning({**env, "DUNNING_DATA_DIR": str(elsewhere)}, tmp_path, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "dunning.db").is_file()


def test_log_format_and_worker_metrics_address() -> None:
    assert (load_settings({}).log_format, load_settings({}).metrics_address) == ("text", None)
    settings = load_settings({"DUNNING_LOG_FORMAT": "JSON", "DUNNING_METRICS_PORT": "9100"})
    assert (settings.log_format, settings.metrics_address) == ("json", ("127.0.0.1", 9100))
    anywhere = load_settings({"DUNNING_METRICS_PORT": "0.0.0.0:9100"}).metrics_address
    assert anywhere == ("0.0.0.0", 9100)  # noqa: S104 - what a container would set


def test_a_bad_log_format_stops_every_command_with_status_2(tmp_path: Path) -> None:
    """Checked before anything logs, even by commands that read no other setting."""
    result = dunning(clean_env(DUNNING_LOG_FORMAT="yaml"), tmp_path, "config", "check")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: DUNNING_LOG_FORMAT: expected text or json, got 'yaml'"
    ]
