"""The README's commands work in order and alone (issue #12): `make venv` installs again
whenever what pyproject.toml asks for is not what the interpreter has. CI itself runs the
README's first command and then its second (.ci/run); these tests pin the check it relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _installed(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "installed")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_this_checkout_has_everything_it_asks_for() -> None:
    done = _installed(ROOT)
    assert done.returncode == 0, done.stderr


def _checkout_asking_for(tmp_path: Path, edit: tuple[str, str]) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "installed", tmp_path / "scripts" / "installed")
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    old, new = edit
    assert old in text
    (tmp_path / "pyproject.toml").write_text(text.replace(old, new, 1), encoding="utf-8")
    return tmp_path


def test_a_pull_that_adds_a_dependency_installs_again(tmp_path: Path) -> None:
    root = _checkout_asking_for(
        tmp_path, ("dependencies = [", 'dependencies = [\n  "no-such-dist-xyz",')
    )
    done = _installed(root)
    assert done.returncode == 1
    assert "no-such-dist-xyz (not installed)" in done.stderr


def test_a_pull_that_raises_a_minimum_installs_again(tmp_path: Path) -> None:
    root = _checkout_asking_for(tmp_path, ("dependencies = [", 'dependencies = [\n  "click>=999",'))
    done = _installed(root)
    assert done.returncode == 1
    assert "click" in done.stderr and "wants >=999" in done.stderr


def test_the_package_must_be_installed_from_this_checkout(tmp_path: Path) -> None:
    # A copy of the project elsewhere: our editable install points at ROOT, not at it.
    root = _checkout_asking_for(tmp_path, ("", ""))
    done = _installed(root)
    assert done.returncode == 1
    assert f"not installed editable from {root}" in done.stderr


def test_ci_runs_the_readme_commands_in_order() -> None:
    first = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme-command"), "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    second = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme-command"), "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pip install -q -e ." in first and "dunning demo" in first
    assert second.strip() == "make check"
    assert "scripts/readme-command" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
