"""What every ``dunning`` command shares: one-line errors with the exit status DESIGN §3 gives
(0 ok, 2 bad usage or input, 1 failure), and settings, policy and runtime built once."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from worker import redact
from worker.settings import SettingError, Settings, load_settings

if TYPE_CHECKING:  # imported when a command needs them: `dunning --help` stays fast
    from worker.config import Policy
    from worker.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])


class Fail(click.ClickException):
    """A runtime failure: one line, exit status 1."""

    exit_code = 1


class BadInput(click.ClickException):
    """Bad usage or invalid input: one line, exit status 2."""

    exit_code = 2


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except SettingError as exc:
        raise BadInput(str(exc)) from None
    redact.add_secrets(settings.secret_values())  # never in a log line, whatever logs it
    return settings


def policy_or_exit(settings: Settings, path: Path | None = None) -> Policy:
    from worker.config import ConfigError, load_policy

    try:
        return load_policy(path or settings.config_path)
    except ConfigError as exc:
        raise BadInput("\n".join(exc.problems)) from None


def runtime_or_exit(settings: Settings) -> Runtime:
    from worker.runtime import Runtime

    return Runtime(settings, policy=policy_or_exit(settings))


def one_line_errors(fn: F) -> F:
    """Turn known runtime failures into one line on stderr, exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            if click.get_current_context().obj.get("verbose"):
                raise
            raise Fail(f"database: {str(exc.orig).strip().splitlines()[0]}") from None

    return wrapper  # type: ignore[return-value]
