"""The policy file: the shipped one is valid; a broken one names file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO
from worker.config import ConfigError, load_policy

SHIPPED = REPO / "config" / "dunning.toml"


def test_shipped_config_is_valid() -> None:
    policy = load_policy(SHIPPED)
    assert policy.retries.mode == "own"
    assert policy.retries.max_retries <= 8
    assert len(policy.version) == 12


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text()
    assert old in text
    path = tmp_path / "dunning.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("window_days = 14", "window_days = 0", "retries.window_days", "greater than or equal"),
        ("max_retries = 8", "max_retries = 12", "retries.max_retries", "less than or equal"),
        ('mode = "own"', 'mode = "both"', "retries.mode", "'own' or 'observe'"),
        ('action = "cancel_subscription"', 'action = "delete"', "final_action.action", "cancel"),
        ("reminder_days = [3, 7]", "reminder_dayz = [3, 7]", "emails.reminder_dayz", "unknown key"),
        (
            'default_timezone = "UTC"',
            'default_timezone = "Mars/Olympus"',
            "emails.default_timezone",
            "unknown IANA timezone",
        ),
    ],
)
def test_a_broken_config_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    (problem,) = err.value.problems
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if new in text)
    assert problem.startswith(f"{path}:{line}: {key}: ")
    assert message in problem


def test_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "window_days = 14", "window_days = = 14")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert err.value.problems[0].startswith(f"{path}:")
    assert "TOML syntax" in err.value.problems[0]


def test_config_check_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "worker", "config", "check", str(SHIPPED)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "retries.mode = own" in ok.stdout
    bad = _broken(tmp_path, "window_days = 14", "window_days = 0")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {bad}:")


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ('"invalid_pin",', "", "classes", "no class for invalid_pin"),
        (
            "soon = [1, 4, 24, 72, 168, 288]",
            "soon = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]",
            "retries.offsets_hours.soon",
            "Mastercard allows 10 declines per card per day",
        ),
        (
            "min_gap_hours = 1",
            "min_gap_hours = 5",
            "retries.offsets_hours.soon",
            "closer than retries.min_gap_hours = 5",
        ),
    ],
)
def test_semantic_problems_name_the_line(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    (problem,) = [p for p in err.value.problems if f": {key}: " in p]
    assert message in problem
    line = int(problem.split(":")[1])
    text = path.read_text().splitlines()[line - 1]
    assert key.rsplit(".", maxsplit=1)[-1] in text or text.startswith("[")


def test_the_first_matching_segment_wins() -> None:
    from worker.config import Policy, SegmentFacts

    policy = Policy.model_validate(
        {
            "segments": [
                {"name": "big euro", "currency": "eur", "amount_min": 10000, "window_days": 21},
                {
                    "name": "any euro",
                    "currency": "eur",
                    "window_days": 7,
                    "final_action": "leave_past_due",
                },
            ]
        }
    )
    big = policy.for_segment(SegmentFacts(currency="EUR", amount=25000))
    small = policy.for_segment(SegmentFacts(currency="eur", amount=900))
    dollars = policy.for_segment(SegmentFacts(currency="usd", amount=25000))
    assert (big.retries.window_days, big.final_action.action) == (21, "cancel_subscription")
    assert (small.retries.window_days, small.final_action.action) == (7, "leave_past_due")
    assert dollars is policy


def test_a_segment_schedule_must_fit_its_window(tmp_path: Path) -> None:
    path = _broken(tmp_path, "window_days = 21\n", "window_days = 7\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert "annual plans" in err.value.problems[0]
    assert "7-day window" in err.value.problems[0]
